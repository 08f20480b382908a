"""Picklable fake trainers for the parallel-sweep tests (spawned workers import them by module name)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def fake_train(task, train, valid, test, config, run_dir, extra=None):
    """Writes a results.json whose accuracy is a function of the run, plus the worker's pid; fails on request."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model").mkdir()
    marker = Path(os.environ["FAKE_TRAIN_DIR"])
    (marker / f"{os.getpid()}-{extra['run_key'].replace('/', '_')}").touch()
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0.2")))
    if extra["run_key"] == os.environ.get("FAKE_TRAIN_FAIL"):
        raise RuntimeError(f"boom in {extra['run_key']}")
    accuracy = len(train) / 1000 + config.seed / 100
    (run_dir / "results.json").write_text(json.dumps({
        "method": config.method, "label_source": config.label_source, "seed": config.seed,
        "test_accuracy": accuracy, "valid_accuracy": accuracy, "worker_pid": os.getpid(), **(extra or {})}))


def fake_train_from_file(task, train, valid, test, config, run_dir, extra=None):
    """``fake_train`` configured by ``<sweep folder>/../fake_train.json`` ({"markers", "sleep", "slow": {key: sleep}, "fail"}), not by the
    environment: Ray workers keep the environment their cluster started with. Each marker file holds the run's start
    and end times (did two runs overlap?)."""
    settings = json.loads((Path(run_dir).parents[4] / "fake_train.json").read_text())
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = Path(settings["markers"]) / f"{os.getpid()}-{extra['run_key'].replace('/', '_')}"
    started = time.time()
    marker.write_text(f"{started}\n")
    time.sleep(settings.get("slow", {}).get(extra["run_key"], settings.get("sleep", 0.2)))
    marker.write_text(f"{started}\n{time.time()}\n")
    if extra["run_key"] == settings.get("fail"):
        raise ValueError(f"boom in {extra['run_key']}")
    accuracy = len(train) / 1000 + config.seed / 100
    (run_dir / "results.json").write_text(json.dumps({
        "method": config.method, "label_source": config.label_source, "seed": config.seed,
        "test_accuracy": accuracy, "valid_accuracy": accuracy, "worker_pid": os.getpid(), **(extra or {})}))


def alive(pid: int) -> bool:
    """Whether a process is running (a zombie is dead, only not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"
