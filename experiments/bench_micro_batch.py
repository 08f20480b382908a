"""Benchmark: which micro-batch size (``per_device_batch_size``) trains a global batch fastest and in least memory.

Each micro-batch size trains the same student from the same initial weights on the same batches (step-by-step,
e-SNLI by default) for a few steps, each in its own subprocess so that its peak RSS is its own; the sizes run in
interleaved rounds so that a change of load hits all of them alike. Every size gives the same update (tested in
tests/student/test_loss.py); only time and memory differ. Printed: CPU seconds per step (every thread of the
process; steadier than wall time on a shared machine), wall seconds per step and peak RSS, with ratios against
one micro-batch (the whole batch at once).

    python experiments/bench_micro_batch.py --data-dir ../shared/data --threads 2 --sizes 64 32 16 8
    python experiments/bench_micro_batch.py --task kinds-demo --steps 4 --rounds 1   # no shared data needed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PREFIXES = ("[label] ", "[rationale] ")


def load_train(args) -> list[dict]:
    from stepdistill.student.trainer import usable_rationale

    if args.task == "kinds-demo":
        from stepdistill.demo import demo_records

        return demo_records(Path(args.work_dir) / "demo-data", {"train": args.train}, seed=0)["train"]
    from stepdistill.data import DataError, load_task_data, subsample

    try:
        data = load_task_data(args.task, data_dir=args.data_dir, splits=("train",))
    except (DataError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    train = [record for record in data.splits["train"] if usable_rationale(record)]
    if len(train) < args.train:
        raise SystemExit(f"error: --train {args.train}: only {len(train)} training examples with rationales")
    return subsample(train, count=args.train, seed=0)


def worker(args) -> None:
    """One size: train ``--steps`` steps and print the timings as one JSON line."""
    import torch

    from stepdistill.student.trainer import TrainConfig, run_training

    torch.set_num_threads(args.threads)
    train = load_train(args)
    config = TrainConfig(model=str(Path(args.work_dir) / "init"), method="step-by-step", max_steps=args.steps,
                         batch_size=args.batch_size, per_device_batch_size=args.micro, learning_rate=1e-3,
                         eval_steps=args.steps, max_input_length=128, max_target_length=64, seed=0,
                         logging_steps=1)
    run_dir = Path(args.work_dir) / f"run-{args.micro}-{os.getpid()}"
    results = run_training(args.task, train, train[:8], [], config, run_dir)
    print(json.dumps({"micro": args.micro, "cpu_s": results["train_cpu_seconds"], "wall_s": results["train_seconds"],
                      "rss_mb": results["cpu_peak_rss_mb"], "loss": results["train_loss"]}))


def build_init(args) -> None:
    from stepdistill.student.models import build_tiny_student, student_texts

    init = Path(args.work_dir) / "init"
    if not (init / "config.json").exists():
        shape = dict(d_model=args.d_model, d_kv=args.d_model // 4, d_ff=4 * args.d_model, num_layers=args.layers,
                     num_decoder_layers=args.layers)
        build_tiny_student(student_texts(load_train(args), *PREFIXES), init, seed=0, **shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="esnli")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32, 16, 8])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work-dir", default="bench-micro-batch")
    parser.add_argument("--micro", type=int, help=argparse.SUPPRESS)  # set for the worker processes
    args = parser.parse_args()
    if args.micro is not None:
        return worker(args)
    bad = [size for size in args.sizes if size < 1 or args.batch_size % size]
    if bad:
        raise SystemExit(f"error: --sizes {bad}: each must divide --batch-size {args.batch_size}")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    build_init(args)
    runs: dict[int, list[dict]] = {size: [] for size in args.sizes}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for round_index in range(args.rounds):
        for size in args.sizes if round_index % 2 == 0 else reversed(args.sizes):
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--micro", str(size)], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"error: micro-batch {size} failed:\n{done.stderr[-2000:]}")
            runs[size].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1}, micro-batch {size}: {runs[size][-1]}", file=sys.stderr, flush=True)
    whole = args.batch_size
    reference = runs.get(whole)
    print(f"{args.task}, T5 d_model {args.d_model} {args.layers}+{args.layers} layers, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, {args.threads} threads")
    print(f"{'micro-batch':>11}  {'CPU s/step':>10}  {'vs whole':>8}  {'wall s/step':>11}  {'peak RSS MB':>11}  "
          f"{'vs whole':>8}  {'train loss':>10}")
    for size, rows in runs.items():
        cpu = statistics.mean(row["cpu_s"] for row in rows) / args.steps
        wall = statistics.mean(row["wall_s"] for row in rows) / args.steps
        rss = statistics.mean(row["rss_mb"] for row in rows)
        ratio = lambda key: (statistics.mean(r[key] for r in reference) / statistics.mean(r[key] for r in rows)  # noqa: E731
                             if reference else float("nan"))
        memory = rss / statistics.mean(r["rss_mb"] for r in reference) if reference else float("nan")
        print(f"{size:>11}  {cpu:>10.3f}  {ratio('cpu_s'):>7.2f}x  {wall:>11.3f}  {rss:>11,.0f}  {memory:>7.2f}x  "
              f"{rows[0]['loss']:>10.5f}")


if __name__ == "__main__":
    main()
