"""Benchmark: does ``torch.compile`` pay for a student's training step here? Eager against compiled, in one run.

The student and data are `bench_trainer.py`'s (the same tiny T5 built from a config, e-SNLI training examples with
rationales). Both sides start from the same weights and train two-pass step-by-step micro-batches (label pass and
rationale pass, forward, backward, AdamW) on the same batches of uneven lengths; the compiled side uses
``torch.compile(model, dynamic=True)`` so that a new padded width does not recompile. Printed: the first steps'
time (compilation included), the steady seconds per step, their ratio, and the largest loss difference between
the sides (the compiled model must compute the same losses; dropout is off on both sides for that).

    python experiments/bench_compile.py --data-dir ../shared/data   # d_model 256, 4+4 layers, batches of 16
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_trainer  # noqa: E402  (its data loading and student init, so both benches train the same student)


def make_batches(tokenizer, train, count, batch_size, args):
    def encode(texts, length):
        return tokenizer(texts, truncation=True, max_length=length, padding=True, return_tensors="pt")

    def targets(texts):
        ids = encode(texts, args.max_target_length).input_ids
        ids[ids == tokenizer.pad_token_id] = -100
        return ids

    rng, batches = random.Random(0), []
    for _ in range(count):
        rows = rng.sample(train, batch_size)
        batches.append([(encode([prefix + r["input"] for r in rows], args.max_input_length),
                         targets([r[field] for r in rows]))
                        for prefix, field in zip(bench_trainer.PREFIXES, ("label", "rationale"))])
    return batches


def run_side(init, batches, warmup, compiled):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    # no dropout: compiled code draws its own random masks, and the losses of both sides must be comparable
    model = AutoModelForSeq2SeqLM.from_pretrained(init, dropout_rate=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    forward = torch.compile(model, dynamic=True) if compiled else model
    losses = []

    def step(batch):
        optimizer.zero_grad()
        loss = sum(0.5 * forward(**inputs, labels=labels).loss for inputs, labels in batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    start = time.perf_counter()
    for batch in batches[:warmup]:
        step(batch)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    return first, (time.perf_counter() - start) / (len(batches) - warmup), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work-dir", default="bench-compile")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="first steps, compilation included, timed apart")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--max-target-length", type=int, default=64)
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    data_args = types.SimpleNamespace(task="esnli", data_dir=args.data_dir, work_dir=args.work_dir, train=2000,
                                      valid=1, test=1, d_model=args.d_model, layers=args.layers)
    train, _, _ = bench_trainer.load_records(data_args)
    init = bench_trainer.build_init(data_args, train)
    batches = make_batches(AutoTokenizer.from_pretrained(init), train, args.warmup + args.steps, args.batch_size,
                           args)
    widths = sorted({inputs.input_ids.shape[1] for batch in batches for inputs, _ in batch})
    print(f"{args.warmup} + {args.steps} steps of {args.batch_size}, input widths {widths[0]}-{widths[-1]} "
          f"({len(widths)} distinct), {args.threads} threads", flush=True)
    eager = run_side(init, batches, args.warmup, compiled=False)
    compiled = run_side(init, batches, args.warmup, compiled=True)
    print("| side | first steps s | steady s/step | speed-up |\n| --- | ---: | ---: | ---: |")
    for name, (first, steady, _) in (("eager", eager), ("torch.compile(dynamic=True)", compiled)):
        print(f"| {name} | {first:.1f} | {steady:.3f} | {eager[1] / steady:.2f}x |")
    print(f"largest loss difference: {max(abs(a - b) for a, b in zip(eager[2], compiled[2])):.2e}")


if __name__ == "__main__":
    main()
