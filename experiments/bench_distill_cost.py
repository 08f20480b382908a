"""What distillation adds to a training step, side by side in one run (experiments/README.md, docs/training.md).

On the kinds-demo task (the demo's replayed rationales, six candidate kinds per problem) a tiny T5 student trains
for ``--steps`` steps of ``--batch-size`` under each configuration; the configurations run one at a time, each in
its own process (so its peak RSS is its own), in an interleaved order repeated ``--repeats`` times:

- ``standard`` and ``distill`` (soft labels, weight 0.5, T = 2) on the teacher's labels;
- ``step-by-step``, with soft labels, with offline top-k token KD (``--token-kd-source cache``, top-``--k``), and
  with online token KD from the teacher (``--kd-teacher``).

The teacher is a wider T5 with the student's tokenizer (``--teacher-width``; random weights: its values do not
matter for cost). Its label distribution (``label_logprobs``) and teacher-forced top-k per rationale token
(``token_topk``) are computed once and stored on the records as a cache would hold them. Prints, per
configuration, the median seconds per step without evaluation and CPU seconds per step over the repeats, the
ratio against its base method, the online teacher's forward seconds per step, peak RSS, and the cache's size per
1,000 examples with and without ``token_topk``. Writes summary.json.

    python experiments/bench_distill_cost.py --out bench-cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name -> (TrainConfig fields, the base it is compared with)
    "standard": (dict(method="standard"), None),
    "distill (soft labels)": (dict(method="distill", temperature=2.0), "standard"),
    "step-by-step": (dict(method="step-by-step"), None),
    "step-by-step + soft labels": (dict(method="step-by-step", soft_weight=0.5, temperature=2.0), "step-by-step"),
    "step-by-step + offline token KD": (dict(method="step-by-step", token_kd_source="cache", token_kd_weight=0.5),
                                        "step-by-step"),
    "step-by-step + online token KD": (dict(method="step-by-step", kd_teacher="TEACHER", token_kd_weight=0.5),
                                       "step-by-step"),
}


def teacher_fields(teacher_dir: Path, records: list[dict], k: int) -> list[dict]:
    """``records`` with the teacher's label_logprobs over the candidates, its top label, and token_topk of its
    output (teacher-forced, as ``generate --token-logprobs K`` stores a local teacher's)."""
    import torch

    from stepdistill.student.evaluate import rank_scores
    from stepdistill.student.models import load_student
    from stepdistill.teacher.token_topk import from_tokens

    model, tokenizer = load_student(teacher_dir)
    model.eval()
    with torch.no_grad():
        scores = rank_scores(model, tokenizer, ["[label] " + r["input"] for r in records],
                             [list(r["choices"]) for r in records], batch_size=64)
    out = []
    for record, row in zip(records, scores):
        logprobs = torch.log_softmax(torch.tensor(row, dtype=torch.float64), -1).tolist()
        best = max(range(len(row)), key=row.__getitem__)
        record = {**record, "label_logprobs": dict(zip(record["choices"], logprobs)),
                  "teacher_label": record["choices"][best]}
        if record.get("rationale"):
            enc = tokenizer(["[rationale] " + record["input"]], return_tensors="pt")
            ids = tokenizer([record["teacher_output"]], return_tensors="pt").input_ids[:, :-1]  # no </s>
            with torch.no_grad():
                step_logprobs = torch.log_softmax(model(**enc, labels=ids).logits[0].float(), -1)
            top = step_logprobs.topk(k)
            chosen = ids[0].tolist()
            tokens = [(tokenizer.convert_ids_to_tokens(t), float(step_logprobs[p, t]),
                       list(zip(tokenizer.convert_ids_to_tokens(top.indices[p].tolist()), top.values[p].tolist())))
                      for p, t in enumerate(chosen)]
            record["teacher_token_topk"] = from_tokens(str(teacher_dir), tokens, k, 256)
        out.append(record)
    return out


def cache_bytes(records: list[dict]) -> tuple[float, float]:
    """Bytes per 1,000 examples of a cache holding these records' teacher fields, without and with token_topk (one
    compact UTF-8 JSON line each, as the cache's jsonlines writer writes them)."""

    def size(line: dict) -> int:
        return len(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()) + 1

    plain = with_topk = 0
    for record in records:
        line = {"id": record["id"], "status": "ok", "raw_output": record["teacher_output"],
                "rationale": record["rationale"], "label": record["teacher_label"],
                "label_logprobs": record["label_logprobs"]}
        plain += size(line)
        with_topk += size({**line, "token_topk": record.get("teacher_token_topk")})
    return 1000 * plain / len(records), 1000 * with_topk / len(records)


def run_one(args) -> None:
    """One configuration in this process: train and print results.json's figures as one JSON line."""
    import torch
    from transformers.utils import logging as hf_logging

    from stepdistill.demo import KindsDemo
    from stepdistill.student.trainer import TrainConfig, run_training

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    out = Path(args.out)
    data = json.loads((out / "records.json").read_text())
    fields = dict(CONFIGS[args.one][0])
    if fields.get("kd_teacher"):
        fields["kd_teacher"] = str(out / "teacher")
    config = TrainConfig(model=str(out / "student-init"), label_source="teacher", max_steps=args.steps,
                         batch_size=args.batch_size, learning_rate=3e-3, eval_steps=args.steps, alpha=0.3, seed=0,
                         save_total_limit=1, **fields)
    run_dir = out / "runs" / f"{args.one.replace(' ', '_').replace('(', '').replace(')', '')}-r{args.repeat}"
    results = run_training(KindsDemo.name, data["train"], data["valid"], [], config, run_dir)
    print(json.dumps({key: results.get(key) for key in (
        "steps", "train_seconds", "train_cpu_seconds", "eval_seconds_during_training", "cpu_peak_rss_mb",
        "kd_teacher_forward_seconds", "kd_teacher_forwards", "per_device_batch_size", "length_chunks")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-cost")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=20, help="top-k of the stored token distributions")
    parser.add_argument("--teacher-width", type=int, default=256, help="d_model of the teacher (the student: 128)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one configuration
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args)

    from stepdistill.demo import demo_records
    from stepdistill.student.models import build_tiny_student, student_texts

    out = Path(args.out)
    splits = demo_records(out / "data", {"train": args.train, "valid": 32, "test": 1})
    texts = student_texts(splits["train"], "[label] ", "[rationale] ")
    build_tiny_student(texts, out / "student-init", seed=0)
    width = args.teacher_width
    build_tiny_student(texts, out / "teacher", seed=1, d_model=width, d_ff=4 * width, d_kv=width // 4)
    train = teacher_fields(out / "teacher", splits["train"], args.k)
    (out / "records.json").write_text(json.dumps({"train": train, "valid": splits["valid"]}))
    plain_kb, topk_kb = (b / 1024 for b in cache_bytes(train))
    topk_tokens = sum(len(r["teacher_token_topk"]["chosen"]) for r in train if r.get("teacher_token_topk"))

    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    for repeat in range(args.repeats):
        order = args.configs if repeat % 2 == 0 else args.configs[::-1]  # interleaved: drift hits every config
        for name in order:
            done = subprocess.run([sys.executable, __file__, "--out", str(out), "--one", name, "--repeat",
                                   str(repeat), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                   "--threads", str(args.threads)], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"error: configuration {name!r} failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            run["step_seconds"] = (run["train_seconds"] - run["eval_seconds_during_training"]) / run["steps"]
            run["step_cpu_seconds"] = run["train_cpu_seconds"] / run["steps"]
            runs[name].append(run)
            print(f"  repeat {repeat} {name}: {run['step_seconds']:.3f} s/step, {run['cpu_peak_rss_mb']:.0f} MB",
                  flush=True)

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    lines = ["| configuration | s/step (median) | vs base | CPU s/step | vs base | teacher forward s/step | "
             "peak RSS MB |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in args.configs:
        base = CONFIGS[name][1]
        ratio = (f"{median(name, 'step_seconds') / median(base, 'step_seconds'):.2f}x" if base in runs else "-")
        cpu_ratio = (f"{median(name, 'step_cpu_seconds') / median(base, 'step_cpu_seconds'):.2f}x"
                     if base in runs else "-")
        teacher = (f"{statistics.median(r['kd_teacher_forward_seconds'] / r['steps'] for r in runs[name]):.3f}"
                   if runs[name][0].get("kd_teacher_forward_seconds") is not None else "-")
        lines.append(f"| {name} | {median(name, 'step_seconds'):.3f} | {ratio} | {median(name, 'step_cpu_seconds'):.3f}"
                     f" | {cpu_ratio} | {teacher} | {max(r['cpu_peak_rss_mb'] for r in runs[name]):.0f} |")
    lines.append("")
    lines.append(f"cache per 1,000 examples: {plain_kb:.0f} KB without token_topk, {topk_kb:.0f} KB with top-{args.k} "
                 f"({topk_tokens / len(train):.1f} teacher tokens per example, "
                 f"{1024 * (topk_kb - plain_kb) * len(train) / 1000 / topk_tokens:.0f} bytes per token)")
    print("\n".join(lines))
    summary = {"steps": args.steps, "batch_size": args.batch_size, "train": args.train, "threads": args.threads,
               "k": args.k, "teacher_width": width, "repeats": args.repeats, "runs": runs, "table": lines,
               "cache_kb_per_1000": {"plain": round(plain_kb, 1), "with_token_topk": round(topk_kb, 1)},
               "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
