"""Running a sweep: one student per (method, fraction, seed), each in its own folder, resumable and lockable.

A sweep trains one student per (method, fraction, seed) through :func:`stepdistill.student.trainer.run_training`
and keeps every run in its own folder ``runs/<method>/fraction-<f>/seed-<s>``. A run is trained in
``<folder>.partial`` and renamed to its final name only after its ``results.json`` is complete, so a folder
without the suffix is always a finished run: a resumed sweep skips it and restarts a ``.partial`` one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..locks import exclusive_lock
from ..tasks import Task, get_task
from .presets import METHODS, Preset

RESULTS_FILE = "results.json"
SWEEP_LOG = "sweep.log"


@dataclass(frozen=True)
class RunSpec:
    method: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/fraction-{self.fraction:g}/seed-{self.seed}"


def plan_runs(preset: Preset, task: Task) -> list[RunSpec]:
    """Seeds outermost, so an interrupted sweep already holds complete curves for its first seeds."""
    unknown = [m for m in preset.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return [RunSpec(method, fraction, seed)
            for seed in preset.seeds for fraction in preset.fractions_for(task) for method in preset.methods]


def fraction_base(task: Task, full_train_size: int | None = None) -> int | None:
    """The train size that fractions refer to: ``full_train_size`` when given (``TaskData.train_full_size``: the
    public split less a carved valid split), else the task's complete public train split (None: unknown)."""
    return full_train_size if full_train_size is not None else task.full_split_sizes.get("train")


def check_fractions(preset: Preset, task: Task, n_train: int, full_train_size: int | None = None) -> dict[float, int]:
    """Examples per fraction; fails before any training when a fraction needs more examples than exist."""
    full = fraction_base(task, full_train_size) or n_train
    counts = {f: round(f * full) for f in preset.fractions_for(task)}
    too_big = {f: n for f, n in counts.items() if n > n_train or n < 1}
    if too_big:
        wanted = ", ".join(f"{f:.4g} ({f * 100:.4g}% of {full:,} = {n:,})" for f, n in too_big.items())
        raise ValueError(f"task '{task.name}': fraction(s) {wanted} need more training examples than the "
                         f"{n_train:,} that exist locally (largest possible fraction: {n_train / full:.4g})")
    return counts


def _log(out_dir: Path, *fields: Any) -> None:
    # append + fsync: the log must survive a SIGKILL of the sweep (the resume test reads it)
    with open(out_dir / SWEEP_LOG, "a") as handle:
        handle.write("\t".join(str(f) for f in fields) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


LOCK_FILE = "sweep.lock"


def _lock_sweep(out_dir: Path):
    """An exclusive lock on the sweep folder: a second sweep there would restart the first one's runs.

    The lock file is removed when the sweep ends, also by an exception (issue 15); after a SIGKILL it stays but is
    unlocked, so the next sweep takes it over."""
    return exclusive_lock(out_dir / LOCK_FILE, f"{out_dir}: another sweep is running in this folder")


def run_dir_for(out_dir: Path, spec: RunSpec) -> Path:
    return Path(out_dir) / "runs" / spec.key


def run_sweep(task: str | Task, splits: dict[str, list[dict]], preset: Preset, out_dir: str | os.PathLike,
              train_fn: Callable[..., dict] | None = None, echo: Callable[[str], None] = print,
              workers: int = 1, full_train_size: int | None = None, executor: str = "process",
              ray_address: str | None = None, gpus_per_run: float = 0.0,
              add_synthetic: Callable[[list[dict], int], list[dict]] | None = None) -> list[dict]:
    """Train every planned run that has no finished folder yet; returns the results of all finished runs.

    ``splits`` holds the ``train``/``valid``/``test`` records (``stepdistill.data`` record dicts).
    ``full_train_size`` is the size fractions refer to (pass ``TaskData.train_full_size`` when valid was carved
    from train); default the task's public train size.
    ``train_fn`` defaults to :func:`stepdistill.student.trainer.run_training` with a progress callback.
    ``workers`` > 1 trains that many runs at once, each in its own process with ``preset.torch_threads`` threads
    (1 when unset). ``executor`` "ray" trains every run as a Ray task of that many CPUs (and ``gpus_per_run``
    GPUs) on the cluster at ``ray_address`` or ``RAY_ADDRESS``, else on a local cluster of ``workers`` x threads
    CPUs (:mod:`.executors`).
    ``add_synthetic(records, seed)``: synthetic examples added to each run's real subset (``curve --synthetic``).
    """
    from ..data import subsample
    from .executors import check_executor, run_in_processes, run_on_ray

    if train_fn is None:
        train_fn = train_with_progress
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_executor(executor, gpus_per_run)
    task = get_task(task)
    preset = preset.for_task(task)
    threads = preset.torch_threads or (1 if workers > 1 or executor == "ray" else None)
    if threads and workers == 1 and executor == "process":
        import torch

        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _lock_sweep(out_dir):  # held for the whole sweep; the OS drops it if the process is killed
        train, valid, test = eval_splits(splits, preset)
        counts = check_fractions(preset, task, len(train), full_train_size)
        full_train = fraction_base(task, full_train_size)
        plan = plan_runs(preset, task)
        done = sum(1 for spec in plan if (run_dir_for(out_dir, spec) / RESULTS_FILE).exists())
        echo(f"sweep {task.name}/{preset.name}: {len(plan)} runs, {done} already finished, output {out_dir}"
             + (f", {workers} at a time" if workers > 1 else "") + (" on Ray" if executor == "ray" else ""))

        def start(index: int, spec: RunSpec) -> tuple:
            """Prepare the run's .partial folder and arguments; log its start."""
            final = run_dir_for(out_dir, spec)
            partial = final.with_name(final.name + ".partial")
            if partial.exists():  # left by a crashed sweep: start that run again from scratch
                shutil.rmtree(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            trainer_method, label_source = METHODS[spec.method]
            records = subsample(train, fraction=spec.fraction, seed=spec.seed, full_size=full_train)
            assert len(records) == counts[spec.fraction]
            config = make_train_config(preset, trainer_method, label_source, spec.seed)
            extra = {"sweep_method": spec.method, "fraction": spec.fraction, "count": len(records),
                     "data_seed": spec.seed, "preset": preset.name, "run_key": spec.key,
                     "full_train_size": full_train, "valid_size": len(valid), "test_size": len(test)}
            if add_synthetic is not None:  # the real subset stays the run's `count`; the added ones are counted apart
                added = add_synthetic(records, spec.seed)
                records = records + added
                extra["synthetic_examples"] = len(added)
            echo(f"[{index}/{len(plan)}] {spec.key}: {len(records):,} examples")
            _log(out_dir, "start", spec.key, os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S"))
            return (task, records, valid, test, config, partial), extra, time.perf_counter()

        def finish(spec: RunSpec, partial: Path, extra: dict, started: float) -> None:
            results = json.loads((partial / RESULTS_FILE).read_text())
            results["sweep_wall_s"] = round(time.perf_counter() - started, 3)
            results.update(extra)
            if not preset.keep_models:  # a sweep of base-size models would otherwise fill the disk
                for name in ("model", "checkpoints", "student-init"):
                    shutil.rmtree(partial / name, ignore_errors=True)
            _write_json_atomic(partial / RESULTS_FILE, results)
            os.replace(partial, run_dir_for(out_dir, spec))  # atomic: the run counts as finished only from here on
            _log(out_dir, "done", spec.key, os.getpid(), results["sweep_wall_s"])
            echo(f"    {spec.key}: test accuracy {results.get('test_accuracy')}, "
                 f"valid {results.get('valid_accuracy')}, {results['sweep_wall_s']:.1f} s")

        def fail(spec: RunSpec, exc: BaseException) -> None:
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
            _log(out_dir, "failed", spec.key, os.getpid(), error)
            echo(f"    {spec.key}: failed: {error}")

        pending = [(index, spec) for index, spec in enumerate(plan, start=1)
                   if not (run_dir_for(out_dir, spec) / RESULTS_FILE).exists()]
        if executor == "ray":
            run_on_ray(pending, start, finish, fail, train_fn, workers, threads, ray_address, gpus_per_run)
        elif workers > 1:
            run_in_processes(pending, start, finish, fail, train_fn, workers, threads)
        else:
            for index, spec in pending:
                args, extra, started = start(index, spec)
                try:
                    train_fn(*args, extra=extra)
                except Exception as exc:
                    fail(spec, exc)
                    raise
                finish(spec, args[-1], extra, started)
    return load_results(out_dir)


def train_with_progress(*args, extra=None) -> dict:
    """``run_training`` printing a progress line every 30 s, named after the run (several runs share a terminal)."""
    from ..student.progress import ProgressCallback
    from ..student.trainer import run_training

    name = Path(args[5]).name.removesuffix(".partial")
    return run_training(*args, extra=extra, callbacks=[ProgressCallback(prefix=f"    {name}: ", bar=False)])


def eval_splits(splits: dict[str, list[dict]], preset: Preset) -> tuple[list[dict], list[dict], list[dict]]:
    """Train records and the (optionally subsampled, fixed across runs) valid and test records."""
    from ..data import subsample

    missing = [s for s in ("train", "valid", "test") if not splits.get(s)]
    if missing:
        raise ValueError(f"a sweep needs train, valid and test splits; missing or empty: {', '.join(missing)}")
    valid, test = splits["valid"], splits["test"]
    if preset.valid_size and preset.valid_size < len(valid):
        valid = subsample(valid, count=preset.valid_size, seed=0)
    if preset.test_size and preset.test_size < len(test):
        test = subsample(test, count=preset.test_size, seed=0)
    return splits["train"], valid, test


def make_train_config(preset: Preset, method: str, label_source: str, seed: int):
    from ..student.trainer import TrainConfig

    return TrainConfig(
        model=preset.model, method=method, label_source=label_source, alpha=preset.alpha,
        max_steps=preset.max_steps, batch_size=preset.batch_size, learning_rate=preset.learning_rate,
        eval_steps=preset.eval_steps, seed=seed, bf16=preset.bf16, max_input_length=preset.max_input_length,
        max_target_length=preset.max_target_length, **preset.trainer_options,
    )


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The results of every finished run under ``out_dir/runs`` (``.partial`` folders are ignored)."""
    results = []
    for path in sorted((Path(out_dir) / "runs").glob(f"*/*/*/{RESULTS_FILE}")):
        if path.parent.name.endswith(".partial"):
            continue
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    return results

