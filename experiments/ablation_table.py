"""The paper's multi-task against single-task comparison, extended (issue 25.5), on the demo's counting problems.

Every row trains the demo's tiny T5 (``stepdistill demo``'s data, model and schedule) once per seed and is scored
on the same test problems; the table gives mean test accuracy ± 95% Student-t interval over seeds and the paired
difference against standard fine-tuning. Rows:

  - standard fine-tuning; step-by-step; single-task; single-task-label-first;
  - rationale-input, read with the teacher's test rationales and with the step-by-step student's own (same seed);
  - step-by-step predicting from its own rationale first (``rationale_first_eval``);
  - with a NOISY SAMPLING teacher (``--samples K`` outputs per problem, each miscounting one kind with probability
    ``--noise``): step-by-step on the voted rationale, on every sample, on the vote-agreeing samples.

    python experiments/ablation_table.py --seeds 0 1 2 --workers 2 --out reports/ablations
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from stepdistill.demo import DEMO_MODEL, KINDS, KindsDemo, _pm, _train_one, demo_records, teacher_output


def noisy_samples(record: dict, k: int, noise: float, rng: random.Random) -> list[str]:
    """K teacher outputs for a demo problem: each miscounts one kind (one thing moved to another kind present, or
    to a new kind) with probability ``noise``; the answer follows the written counts, as a careless teacher's would."""
    truth = {kind: int(n) for n, kind in (part.split(" ", 1) for part in record["rationale"].split(", "))}
    truth = {kind.rstrip("s") if kind.rstrip("s") in KINDS else kind: n for kind, n in truth.items()}
    outputs = []
    for _ in range(k):
        counts = dict(truth)
        if rng.random() < noise:
            source = rng.choice([kind for kind, n in counts.items() if n > 0])
            target = rng.choice([kind for kind in KINDS if kind != source])
            counts[source] -= 1
            counts[target] = counts.get(target, 0) + 1
        written = {kind: n for kind, n in counts.items() if n > 0}
        most = max(written.values())
        answer = next(kind for kind in KINDS if written.get(kind) == most)  # ties: the first kind in KINDS order
        rationale = ", ".join(f"{n} {kind}" + ("" if n == 1 else "s") for kind, n in
                              sorted(written.items(), key=lambda item: list(KINDS).index(item[0])))
        outputs.append(teacher_output({"rationale": rationale, "answer": answer}))
    return outputs


def sampled_train(train: list[dict], k: int, noise: float, seed: int = 0) -> list[dict]:
    """Copies of the train records as a self-consistency cache would give them: K outputs, the voted label and the
    first rationale that agrees with it (what `generate --n K` writes, joined by attach_rationales)."""
    from collections import Counter

    task, rng, out = KindsDemo(), random.Random(seed), []
    for record in train:
        outputs = noisy_samples(record, k, noise, rng)
        parsed = [task.parse_teacher(text) for text in outputs]
        votes = Counter(p.label for p in parsed)
        winner = max(votes, key=lambda label: (votes[label], -[p.label for p in parsed].index(label)))
        chosen = next(p.rationale for p in parsed if p.label == winner)
        out.append({**record, "teacher_output": outputs[0], "rationale": chosen, "teacher_label": winner,
                    "teacher_error": None, "teacher_outputs": outputs, "teacher_finish_reasons": ["stop"] * k})
    return out


ROWS = {  # row -> (trainer method, extra TrainConfig fields, train data: "teacher" | "sampled")
    "standard fine-tuning": ("standard", {}, "teacher"),
    "step-by-step": ("step-by-step", {"generate_rationales": True, "rationale_first_eval": True}, "teacher"),
    "single-task": ("single-task", {}, "teacher"),
    "single-task-label-first": ("single-task-label-first", {}, "teacher"),
    "rationale-input": ("rationale-input", {}, "teacher"),  # + the student's rationales, after step-by-step
    "sampling teacher: step-by-step, voted rationale": ("step-by-step", {}, "sampled"),
    "sampling teacher: every sample": ("step-by-step", {"rationale_samples": "all"}, "sampled"),
    "sampling teacher: vote-agreeing samples": ("step-by-step", {"rationale_samples": "vote-agree"}, "sampled"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="reports/ablations")
    parser.add_argument("--samples", type=int, default=5, help="outputs per problem of the sampling teacher")
    parser.add_argument("--noise", type=float, default=0.4, help="chance that a sample miscounts one kind")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="rows to run (names in ROWS)")
    args = parser.parse_args()
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        sys.exit(f"error: --rows {unknown}: unknown; choose from {list(ROWS)}")
    from stepdistill.student.config import TrainConfig

    out = Path(args.out)
    # rationale-input reads the teacher's valid and test rationales too
    splits = demo_records(out, {"train": 300, "valid": 200, "test": 400}, 0, ("train", "valid", "test"))
    data = {"teacher": splits["train"], "sampled": sampled_train(splits["train"], args.samples, args.noise)}
    agree = sum(r["teacher_label"] == r["label"] for r in data["sampled"]) / len(data["sampled"])
    print(f"sampling teacher: {args.samples} samples, noise {args.noise}: voted label = gold on {100 * agree:.1f}%")

    def job(row: str, seed: int, **more) -> dict:
        method, extra, source = ROWS[row]
        config = TrainConfig(model="tiny", tiny_overrides=DEMO_MODEL, method=method, alpha=0.3,
                             max_steps=args.max_steps, batch_size=32, learning_rate=3e-3, lr_scheduler_type="linear",
                             warmup_steps=args.max_steps // 20, eval_steps=args.max_steps // 4, seed=seed,
                             max_input_length=64, max_target_length=48, eval_batch_size=200,
                             logging_steps=max(1, args.max_steps // 16), **{**extra, **more})
        slug = row.replace(" ", "-").replace(",", "").replace(":", "")
        return {"name": row, "method": method, "config": config, "train": data[source], "valid": splits["valid"],
                "test": splits["test"], "run_dir": str(out / slug / f"seed-{seed}"), "data_seed": 0, "threads": 1,
                "progress_seconds": 600, "bar": False}

    results: dict[str, list[dict]] = {row: [] for row in args.rows}
    first = [job(row, seed) for seed in args.seeds for row in args.rows if row != "rationale-input"]
    run_jobs(first, results, args.workers)
    if "rationale-input" in args.rows:
        own = {seed: Path(j["run_dir"]) / "predictions_test.jsonl" for seed in args.seeds for j in first
               if j["name"] == "step-by-step" and j["config"].seed == seed}
        # a student rationale that is empty is read bare (the input alone), and counted in results.json
        run_jobs([job("rationale-input", seed, **({"student_rationales": str(own[seed]), "missing_rationale": "bare"}
                                                  if seed in own else {})) for seed in args.seeds],
                 results, args.workers)
    table = markdown(results, args)
    (out / "ablations.md").write_text(table + "\n")
    (out / "ablations.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + table)


def run_jobs(jobs: list[dict], results: dict, workers: int) -> None:
    from stepdistill.experiments.executors import init_pool_worker  # workers die with this script

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_pool_worker, initargs=(1,)) as pool:
        futures = {pool.submit(_train_one, j): j for j in jobs}
        for future in as_completed(futures):
            j, r = futures[future], future.result()
            results[j["name"]].append(r)
            print(f"{j['name']}, seed {r['seed']}: test {100 * r['test_accuracy']:.1f}% "
                  f"({r['wall_seconds']:.0f} s)", flush=True)


def markdown(results: dict[str, list[dict]], args) -> str:
    by_seed = lambda runs, key="test_accuracy": {r["seed"]: r[key] for r in runs if r.get(key) is not None}  # noqa: E731
    base = by_seed(results.get("standard fine-tuning", []))
    lines = [f"kinds-demo, 300 train / 200 valid / 400 test problems, tiny T5 (d_model 64, 2+2 layers), "
             f"{args.max_steps} steps of 32, seeds {', '.join(map(str, args.seeds))}; mean ± 95% interval",
             "", "| row | test % | minus standard, paired (points) | higher in |", "| --- | ---: | ---: | ---: |"]
    derived = {"rationale-input": [("rationale-input, the student's own rationales",
                                    "test_accuracy_student_rationales")],
               "step-by-step": [("step-by-step, predicting from its own rationale first",
                                 "test_accuracy_rationale_first")]}
    for row, runs in results.items():
        for name, key in [(row, "test_accuracy")] + derived.get(row, []):
            scores = by_seed(runs, key)
            if not scores:
                continue
            gains = [scores[s] - base[s] for s in scores if s in base]
            diff = _pm(gains) if gains and row != "standard fine-tuning" else "-"
            higher = f"{sum(g > 0 for g in gains)} of {len(gains)}" if diff != "-" else "-"
            lines.append(f"| {name} | {_pm(list(scores.values()))} | {diff} | {higher} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
