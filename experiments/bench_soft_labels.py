"""Soft labels against hard teacher labels on the kinds-demo task, over seeds (docs/training.md, "Soft labels").

A teacher (a tiny T5 trained by standard fine-tuning on gold labels of `--teacher-train` problems the students never
see) scores the six candidate kinds of every student training problem, as ranking does; its log-softmax over them is
`label_logprobs` and its top candidate the teacher label (what a `student:` teacher writes into a cache). Students
(tiny T5 from scratch, `--train` problems, the demo's settings) then train on teacher labels only (`standard`), with
soft labels (`distill`, soft weight 0.5, T = 1, 2, 4), and step-by-step with and without them (the demo's replayed
rationales, alpha 0.3). Prints mean test accuracy ± 95% t-interval per method and writes summary.json.

    python experiments/bench_soft_labels.py --out bench-soft --seeds 0 1 2

Measured so far (docs/training.md, "Soft labels"): the default teacher is weak (35% test accuracy at 500 steps,
no better at 750, on a loaded 2-core CPU); `--teacher-dir` reuses a trained one (a run folder or a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

METHODS = {  # name -> TrainConfig fields
    "standard (teacher labels)": dict(method="standard"),
    "distill T=1": dict(method="distill", temperature=1.0),
    "distill T=2": dict(method="distill", temperature=2.0),
    "distill T=4": dict(method="distill", temperature=4.0),
    "step-by-step (teacher labels)": dict(method="step-by-step"),
    "step-by-step + soft T=2": dict(method="step-by-step", soft_weight=0.5, temperature=2.0),
}


def teacher_distribution(run_dir: Path, records: list[dict]) -> list[dict]:
    """Copies of ``records`` with the teacher's label_logprobs (log-softmax of its candidate scores) and label."""
    import torch

    from stepdistill.student.evaluate import rank_scores
    from stepdistill.student.predict import load_trained_student

    student = load_trained_student(run_dir, "kinds-demo", device="cpu")
    choices = [list(r["choices"]) for r in records]
    with torch.no_grad():
        scores = rank_scores(student.model, student.tokenizer, ["[label] " + r["input"] for r in records], choices,
                             batch_size=64)
    out = []
    for record, candidates, row in zip(records, choices, scores):
        logprobs = torch.log_softmax(torch.tensor(row, dtype=torch.float64), -1).tolist()
        best = max(range(len(row)), key=row.__getitem__)
        out.append({**record, "label_logprobs": dict(zip(candidates, logprobs)), "teacher_label": candidates[best]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-soft")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--teacher-train", type=int, default=2000)
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-dir", help="an already trained teacher (a run folder or one of its checkpoints)")
    parser.add_argument("--eval-steps", type=int, default=150)
    parser.add_argument("--teacher-method", default="standard", help="standard (gold labels) or step-by-step")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from stepdistill.demo import KindsDemo, demo_records, mean_interval
    from stepdistill.student.trainer import TrainConfig, run_training

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    out = Path(args.out)
    splits = demo_records(out / "data", {"train": args.train + args.teacher_train, "valid": 200, "test": 400})
    train, teacher_train = splits["train"][:args.train], splits["train"][args.train:]
    valid, test = splits["valid"], splits["test"]
    started = time.perf_counter()
    if args.teacher_dir:
        teacher_dir = Path(args.teacher_dir)
        scored = teacher_distribution(teacher_dir, test)
        teacher = {"test_accuracy": sum(r["teacher_label"] == r["label"] for r in scored) / len(scored)}
    else:
        teacher_dir = out / "teacher"
        teacher = run_training(KindsDemo.name, teacher_train, valid, test,
                               TrainConfig(model="tiny", method=args.teacher_method, max_steps=args.teacher_steps,
                                           batch_size=32, learning_rate=3e-3, eval_steps=250, alpha=0.3, seed=0),
                               teacher_dir)
    print(f"teacher {teacher_dir}: test accuracy {100 * teacher['test_accuracy']:.1f} ({len(teacher_train)} "
          f"problems, {args.teacher_method})", flush=True)
    train = teacher_distribution(teacher_dir, train)
    agree = sum(r["teacher_label"] == r["label"] for r in train) / len(train)
    entropy = sum(-sum(math.exp(v) * v for v in r["label_logprobs"].values()) for r in train) / len(train)
    print(f"teacher on the students' {len(train)} problems: label = gold {100 * agree:.1f}%, mean entropy "
          f"{entropy:.3f} nats", flush=True)

    results: dict[str, list[dict]] = {}
    for name in args.methods:
        for seed in args.seeds:
            config = TrainConfig(model="tiny", label_source="teacher", max_steps=args.steps, batch_size=32,
                                 learning_rate=3e-3, eval_steps=args.eval_steps, alpha=0.3, seed=seed,
                                 **METHODS[name])
            run = run_training(KindsDemo.name, train, valid, test, config,
                               out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") / f"seed{seed}")
            results.setdefault(name, []).append(run)
            step_s = (run["train_seconds"] - run["eval_seconds_during_training"]) / run["steps"]
            run["seconds_per_step"] = round(step_s, 4)
            print(f"  {name} seed {seed}: test {100 * run['test_accuracy']:.1f} ({step_s:.3f} s/step without "
                  f"evaluation, {run['train_cpu_seconds']:.0f} CPU s)", flush=True)
    lines = ["| method | test accuracy (%) | per seed |", "| --- | ---: | --- |",
             f"| teacher ({args.teacher_method}, {len(teacher_train)} gold problems) | {100 * teacher['test_accuracy']:.1f} | - |"]
    for name, runs in results.items():
        accuracies = [100 * r["test_accuracy"] for r in runs]
        mean, half = mean_interval(accuracies)
        lines.append(f"| {name} | {mean:.1f}" + (f" ± {half:.1f}" if half is not None else "") +
                     f" | {', '.join(f'{a:.1f}' for a in accuracies)} |")
    print("\n".join(lines))
    summary = {"teacher_test_accuracy": teacher["test_accuracy"], "teacher_agrees_with_gold": agree,
               "teacher_mean_entropy": entropy, "seeds": args.seeds, "train": args.train, "steps": args.steps,
               "threads": args.threads, "wall_seconds": round(time.perf_counter() - started, 1),
               "test_accuracy": {name: [r["test_accuracy"] for r in runs] for name, runs in results.items()},
               "seconds_per_step": {name: [r["seconds_per_step"] for r in runs] for name, runs in results.items()},
               "table": lines}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
