"""Step time and peak memory of a causal-LM student: standard vs step-by-step, full fine-tuning vs LoRA.

Each configuration trains a few steps of ``run_training`` in its own process (peak RSS is per process) on e-SNLI
records with the paper's PaLM rationales; the first step (warm-up) is not timed. Prints one row per configuration
and the ratios against full fine-tuning / standard.

    python experiments/bench_student_lora.py --model /path/to/SmolLM2-135M --threads 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = [("standard", None), ("step-by-step", None), ("standard", 8), ("step-by-step", 8)]


def one(args) -> None:
    import torch
    from transformers import TrainerCallback

    from stepdistill.data import load_task_data, subsample
    from stepdistill.student.runfiles import peak_memory_mb
    from stepdistill.student.trainer import TrainConfig, run_training

    torch.set_num_threads(args.threads)
    data = load_task_data("esnli", data_dir=args.data_dir, splits=["train", "valid"])
    train = subsample(data.splits["train"], count=args.batch_size * args.steps, seed=0)
    valid = data.splits["valid"][:8]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimes()
    config = TrainConfig(model=args.model, method=args.method, max_steps=args.steps, batch_size=args.batch_size,
                         learning_rate=1e-4, eval_steps=args.steps, eval_batch_size=8, max_input_length=256,
                         max_target_length=128, lora_r=args.lora_r, length_chunks=1)
    with tempfile.TemporaryDirectory() as run_dir:
        run_training("esnli", train, valid, [], config, run_dir, callbacks=[timer])
    timed = timer.times[1:] or timer.times
    print(json.dumps({"method": args.method, "lora_r": args.lora_r, "step_seconds": sum(timed) / len(timed),
                      "steps_timed": len(timed), **peak_memory_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="causal-LM student (folder, hub or short name)")
    parser.add_argument("--data-dir", default=os.environ.get("STEPDISTILL_DATA_DIR", "../shared/data"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method")
    parser.add_argument("--lora-r", type=int)
    args = parser.parse_args()
    if args.method:
        return one(args)
    rows = []
    for method, lora_r in CONFIGS:
        cmd = [sys.executable, __file__, "--model", args.model, "--data-dir", args.data_dir, "--steps",
               str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--method", method] + (["--lora-r", str(lora_r)] if lora_r else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                       "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode:
            sys.exit(f"error: {method} lora_r={lora_r} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = {row["method"]: row for row in rows if not row["lora_r"]}
    print(f"\n{'method':<14}{'LoRA r':>7}{'s/step':>9}{'vs full':>9}{'RSS MB':>9}{'vs full':>9}")
    for row in rows:
        full = base[row["method"]]
        print(f"{row['method']:<14}{row['lora_r'] or '-':>7}{row['step_seconds']:>9.2f}"
              f"{row['step_seconds'] / full['step_seconds']:>8.2f}x{row['cpu_peak_rss_mb']:>9.0f}"
              f"{row['cpu_peak_rss_mb'] / full['cpu_peak_rss_mb']:>8.2f}x")
    for lora in (None, 8):
        pair = {row["method"]: row for row in rows if row["lora_r"] == lora}
        print(f"step-by-step / standard ({'LoRA' if lora else 'full'}): "
              f"{pair['step-by-step']['step_seconds'] / pair['standard']['step_seconds']:.2f}x time, "
              f"{pair['step-by-step']['cpu_peak_rss_mb'] / pair['standard']['cpu_peak_rss_mb']:.2f}x RSS")


if __name__ == "__main__":
    main()
