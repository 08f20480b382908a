"""Benchmark: one small sweep trained by the process pool and by Ray (a local cluster), in turns: wall time, and
whether both trained the same students (every run's losses, accuracies and test predictions, bit for bit).

    python experiments/bench_sweep_executors.py --data-dir ../shared/data --rounds 2

The sweep is the smoke preset on e-SNLI (tiny T5, 2 methods x 2 fractions x 2 seeds = 8 runs of 4 steps), 2 runs at
a time, each in a fresh output folder. Ray's wall time includes starting its local cluster (printed apart).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

COMPARED = ("train_loss", "valid_accuracy", "test_accuracy", "valid_curve", "steps")


def run_fingerprint(out: Path) -> dict[str, tuple]:
    """Per run: the compared results fields and the test predictions file's text."""
    rows = {}
    for path in sorted((out / "runs").glob("*/*/*/results.json")):
        result = json.loads(path.read_text())
        rows[result["run_key"]] = (tuple(json.dumps(result[f]) for f in COMPARED),
                                   (path.parent / "predictions_test.jsonl").read_text())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--task", default="esnli")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from stepdistill.data import DataError
    from stepdistill.experiments import get_preset, run_sweep
    from stepdistill.options import DataOptions, load_data

    try:
        data = load_data(DataOptions(task=args.task, data_dir=args.data_dir))
    except (DataError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    preset = get_preset(args.preset)
    root = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    walls: dict[str, list[float]] = {"process": [], "ray": []}
    fingerprints = {}
    try:
        for round_ in range(args.rounds):
            for executor in ("process", "ray"):
                out = root / f"{executor}-{round_}"
                started = time.perf_counter()
                run_sweep(data.task, data.splits, preset, out, echo=lambda _: None, workers=args.workers,
                          full_train_size=data.train_full_size, executor=executor)
                walls[executor].append(time.perf_counter() - started)
                fingerprints[(executor, round_)] = run_fingerprint(out)
                print(f"round {round_ + 1} {executor:7s} {walls[executor][-1]:7.1f} s  "
                      f"({len(fingerprints[(executor, round_)])} runs)", flush=True)
        import ray

        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
        ray_start = time.perf_counter() - started
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    reference = fingerprints[("process", 0)]
    same = all(fingerprint == reference for fingerprint in fingerprints.values())
    print(json.dumps({"runs": len(reference), "process_wall_s": [round(w, 1) for w in walls["process"]],
                      "ray_wall_s": [round(w, 1) for w in walls["ray"]], "ray_cluster_start_s": round(ray_start, 1),
                      "ray_over_process": round(sum(walls["ray"]) / sum(walls["process"]), 2),
                      "same_results_bit_for_bit": same}))


if __name__ == "__main__":
    main()
