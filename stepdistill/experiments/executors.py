"""Where a sweep's runs train when it trains several at once: a process pool on this machine (the default) or Ray
tasks on a Ray cluster (``RAY_ADDRESS`` or ``ray_address``; without either, a local cluster this sweep starts).

Both give the same semantics (:func:`drive`): at most ``workers`` runs in flight, each prepared (``start``) and
finished (``finish``: renamed from ``.partial``, logged) by the sweep's own process as soon as it ends; after a
failure the runs in flight still finish, nothing new starts, and the first error is raised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

EXECUTORS = ("process", "ray")


def option_name(name: str) -> str:
    return "option --" + name.replace("_", "-")


def check_executor(executor: str, gpus_per_run: float = 0.0, label: Callable[[str], str] = option_name) -> None:
    """A bad executor or GPU count is one error naming ``label(field)`` (a command-line option by default)."""
    if executor not in EXECUTORS:
        raise ValueError(f"{label('executor')}: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float)) or gpus_per_run < 0:
        raise ValueError(f"{label('gpus_per_run')}: expected a number >= 0, got {gpus_per_run!r}")
    if gpus_per_run and executor != "ray":
        raise ValueError(f"{label('gpus_per_run')}: only the ray executor reserves GPUs per run")


def drive(pending: list, start: Callable, finish: Callable, fail: Callable, workers: int,
          submit: Callable[[tuple, dict], Any], wait_first: Callable[[list], list], outcome: Callable[[Any], None]
          ) -> None:
    """Run ``pending`` (index, RunSpec) pairs through an executor given as ``submit`` (start a run, return its
    handle), ``wait_first`` (the handles that ended, waiting for at least one) and ``outcome`` (raise its error)."""
    queue = list(pending)
    in_flight: dict = {}
    error: BaseException | None = None
    while queue or in_flight:
        while queue and error is None and len(in_flight) < workers:
            index, spec = queue.pop(0)
            args, extra, started = start(index, spec)
            in_flight[submit(args, extra)] = (spec, args[-1], extra, started)
        if not in_flight:
            break
        for handle in wait_first(list(in_flight)):
            spec, partial, extra, started = in_flight.pop(handle)
            try:
                outcome(handle)
            except BaseException as exc:  # noqa: BLE001  (raised below, after the others finish)
                fail(spec, exc)
                error = error or exc
                continue
            finish(spec, partial, extra, started)
    if error is not None:
        raise error


# -- a process pool on this machine ------------------------------------------------------------------------------

def init_pool_worker(threads: int) -> None:
    import sys

    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # die with the sweep: an orphan would go on writing into a .partial folder that a resumed sweep restarts
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_in_processes(pending: list, start: Callable, finish: Callable, fail: Callable, train_fn: Callable,
                     workers: int, threads: int) -> None:
    """Each run in a spawned process of a pool of ``workers``, with ``threads`` torch threads."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_pool_worker, initargs=(threads,)) as pool:
        drive(pending, start, finish, fail, workers,
              submit=lambda args, extra: pool.submit(train_fn, *args, extra=extra),
              wait_first=lambda handles: wait(handles, return_when=FIRST_COMPLETED)[0],
              outcome=lambda future: future.result())


# -- Ray tasks ---------------------------------------------------------------------------------------------------

def _train_on_ray(train_fn: Callable, threads: int, extra: dict, *args) -> str:
    """One run inside a Ray worker (``args``: the train_fn's; Ray resolves the object refs among them); returns the
    node's host name, for the shared-storage check."""
    import socket

    import torch

    torch.set_num_threads(threads)
    train_fn(*args, extra=extra)
    return socket.gethostname()


def ray_init(address: str | None, num_cpus: int) -> bool:
    """Connect to the cluster at ``address`` (else ``RAY_ADDRESS``), else start a local one with ``num_cpus``;
    nothing when this process is connected already. True when this call connected (so the caller disconnects)."""
    import logging

    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'stepdistill[ray]'") from None
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    if address:
        ray.init(address=address, **options)
    else:  # "local": a new cluster of our own, never one that happens to run on this machine
        # bound to loopback: a local cluster's processes talk to each other only, never over the machine's network
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
    return True


def run_on_ray(pending: list, start: Callable, finish: Callable, fail: Callable, train_fn: Callable, workers: int,
               threads: int, address: str | None = None, gpus_per_run: float = 0.0) -> None:
    """Each run a Ray task holding ``threads`` CPUs (and ``gpus_per_run`` GPUs), at most ``workers`` in flight. The
    sweep folder must be on storage every node shares: the tasks write the runs' folders, this process renames
    them."""
    connected = ray_init(address, num_cpus=workers * threads)
    import ray

    # no retries: a retried run would start again in a half-written folder; a rerun of the sweep restarts it cleanly
    remote = ray.remote(num_cpus=threads, num_gpus=gpus_per_run, max_retries=0)(_train_on_ray)
    stored: dict[int, Any] = {}  # valid and test records, the same for every run: in the object store once
    running: dict = {}  # object ref -> the run's .partial folder

    def submit(args: tuple, extra: dict):
        task, records, valid, test, config, partial = args
        for split in (valid, test):
            if id(split) not in stored:
                stored[id(split)] = ray.put(split)
        ref = remote.remote(train_fn, threads, extra, task, records, stored[id(valid)], stored[id(test)], config,
                            partial)
        running[ref] = Path(partial)
        return ref

    def wait_first(refs: list) -> list:
        return ray.wait(refs, num_returns=1)[0]

    def outcome(ref) -> None:
        partial = running.pop(ref)
        try:
            host = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the run's own error (a ValueError stays one error line)
            raise (exc.cause or exc) from exc
        if not (partial / "results.json").exists():
            raise FileNotFoundError(f"{partial}/results.json: the run finished on Ray node {host} but its folder is "
                                    f"not here: the sweep folder must be on storage that every node shares")

    try:
        drive(pending, start, finish, fail, workers, submit, wait_first, outcome)
    finally:
        for ref in running:  # left only by an interrupted sweep (Ctrl-C): stop what still runs on the cluster
            ray.cancel(ref, force=True)
        if connected:
            ray.shutdown()
