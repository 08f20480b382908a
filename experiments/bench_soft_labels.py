"""Soft labels against hard teacher labels on the kinds-demo task, over seeds (docs/training.md, "Soft labels").

A teacher (the demo's tiny T5 with `--teacher-layers` encoder and decoder layers instead of 2, trained by
`--teacher-method` on gold labels of `--teacher-train` problems the students never see) scores the six candidate
kinds of every student training problem, as ranking does; its log-softmax over them is `label_logprobs` and its top
candidate the teacher label (what a `student:` teacher writes into a cache). Students (the demo's model and
schedule, from scratch, `--train` problems) then train on teacher labels only (`standard`), with soft labels
(`distill`, soft weight 0.5, T = 1, 2, 4), step-by-step with and without them (the demo's replayed rationales,
alpha 0.3), and step-by-step with soft labels from a student cut from the teacher (every other layer:
`shrink:TEACHER:layers=0,2,...`). Prints mean test accuracy ± 95% t-interval per method and writes summary.json.

    python experiments/bench_soft_labels.py --out bench-soft --seeds 0 1 2

Measured (docs/training.md, "Soft labels"); `--teacher-dir` reuses a trained teacher (a run folder or a
checkpoint), `--methods` runs some of the students.
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
    "step-by-step + soft T=4": dict(method="step-by-step", soft_weight=0.5, temperature=4.0),
    # the student initialised from every other layer of the teacher (its width; as many layers as the others)
    "step-by-step (teacher labels), cut from the teacher": dict(method="step-by-step",
                                                                model="shrink:TEACHER:layers=EVERY_OTHER"),
    "step-by-step + soft T=2, cut from the teacher": dict(method="step-by-step", soft_weight=0.5, temperature=2.0,
                                                          model="shrink:TEACHER:layers=EVERY_OTHER"),
}


def student_fields() -> dict:
    """The demo's student and schedule (stepdistill demo); the teacher is a deeper copy of that model."""
    from stepdistill.demo import DEMO_MODEL

    return dict(model="tiny", tiny_overrides=DEMO_MODEL, lr_scheduler_type="linear", max_input_length=64,
                max_target_length=48, eval_batch_size=200, learning_rate=3e-3, batch_size=32, alpha=0.3)


def saved_layers(path: Path) -> int:
    """Encoder layers of a run folder's model or of a checkpoint folder."""
    config = path / "model" / "config.json"
    return json.loads((config if config.exists() else path / "config.json").read_text())["num_layers"]


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
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="none: train (or score) the teacher only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-dir", help="an already trained teacher (a run folder or one of its checkpoints)")
    parser.add_argument("--eval-steps", type=int, default=150)
    parser.add_argument("--teacher-method", default="step-by-step", help="standard (gold labels) or step-by-step")
    parser.add_argument("--teacher-layers", type=int, default=4,
                        help="encoder and decoder layers of the teacher (the student: the demo's 2, same width)")
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
        student = student_fields()
        layers = dict(num_layers=args.teacher_layers, num_decoder_layers=args.teacher_layers)
        teacher = run_training(KindsDemo.name, teacher_train, valid, test,
                               TrainConfig(**{**student, "tiny_overrides": {**student["tiny_overrides"], **layers}},
                                           method=args.teacher_method, max_steps=args.teacher_steps,
                                           warmup_steps=args.teacher_steps // 20, eval_steps=250, seed=0),
                               teacher_dir)
    print(f"teacher {teacher_dir}: test accuracy {100 * teacher['test_accuracy']:.1f} ({len(teacher_train)} "
          f"problems, {args.teacher_method})", flush=True)
    teacher_layers = saved_layers(teacher_dir)
    train = teacher_distribution(teacher_dir, train)
    agree = sum(r["teacher_label"] == r["label"] for r in train) / len(train)
    entropy = sum(-sum(math.exp(v) * v for v in r["label_logprobs"].values()) for r in train) / len(train)
    print(f"teacher on the students' {len(train)} problems: label = gold {100 * agree:.1f}%, mean entropy "
          f"{entropy:.3f} nats", flush=True)

    results: dict[str, list[dict]] = {}
    for name in args.methods:
        for seed in args.seeds:
            fields = dict(METHODS[name])
            if fields.get("model", "").startswith("shrink:"):
                every_other = ",".join(str(i) for i in range(0, teacher_layers, 2))
                fields["model"] = fields["model"].replace("TEACHER", str(teacher_dir)).replace("EVERY_OTHER",
                                                                                               every_other)
            config = TrainConfig(**{**student_fields(), **fields}, label_source="teacher", max_steps=args.steps,
                                 warmup_steps=args.steps // 20, eval_steps=args.eval_steps, seed=seed)
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
