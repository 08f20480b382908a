"""`stepdistill demo`: the whole method offline on a CPU, over several seeds.

A seeded generator writes counting problems ("pear, drum, hammer, harp: which kind is there most of?") whose answer
(``instrument``) needs an intermediate step the label does not show: the kind of each thing, counted by kind. As a
stand-in for an LLM teacher, teacher outputs in the paper's few-shot format spell that step out ("1 fruit, 1 tool,
2 instruments. So the answer is instrument."). Those outputs are replayed from a file through the normal data path,
exactly like the released PaLM outputs for e-SNLI/ANLI. A tiny T5 is trained from scratch on a few hundred problems
with standard fine-tuning and with distilling step-by-step, once per seed; the demo reports mean ± 95% t-interval
and checks the rationales the students write.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

from .tasks import Task, TeacherParse, register_task

# the order in which a rationale counts the kinds (one fixed order: the teacher's rationale is a function of the bag)
KINDS = {
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry"),
    "tool": ("hammer", "saw", "drill", "wrench", "shovel", "rake", "chisel", "spade"),
    "animal": ("cat", "dog", "horse", "goat", "mouse", "tiger", "zebra", "camel"),
    "vehicle": ("car", "bus", "bike", "train", "truck", "boat", "van", "tram"),
    "instrument": ("drum", "flute", "harp", "piano", "violin", "guitar", "trumpet", "cello"),
    "garment": ("shirt", "hat", "sock", "coat", "scarf", "glove", "boot", "dress"),
}
KIND_OF = {thing: kind for kind, things in KINDS.items() for thing in things}
THINGS = tuple(KIND_OF)
BAG_SIZE = 4  # two things of the most common kind, one each of two other kinds
QUESTION = "which kind is there most of?"


def _counted(n: int, kind: str) -> str:
    return f"{n} {kind}" + ("" if n == 1 else "s")


def kind_counts(things: list[str]) -> dict[str, int]:
    """{kind: how many of ``things`` are of it}, the kinds present in the rationale's fixed order."""
    return {kind: n for kind in KINDS if (n := sum(KIND_OF[t] == kind for t in things))}


def make_problem(rng: random.Random) -> dict[str, Any]:
    """One problem: four things, which kind there is most of.

    The label (a kind) does not show the intermediate step, the kind of each thing; the rationale spells it out as
    counts: "pear, drum, hammer, harp" -> "1 fruit, 1 tool, 2 instruments", answer "instrument"."""
    most, *others = rng.sample(tuple(KINDS), BAG_SIZE - 1)
    things = rng.sample(KINDS[most], 2) + [rng.choice(KINDS[kind]) for kind in others]
    rng.shuffle(things)
    rationale = ", ".join(_counted(n, kind) for kind, n in kind_counts(things).items())
    return {"question": f"{', '.join(things)}: {QUESTION}", "rationale": rationale, "answer": most}


_COUNT = re.compile(r"^(?P<n>\d) (?P<kind>[a-z]+)$")
_PLURALS = {**{kind: kind for kind in KINDS}, **{kind + "s": kind for kind in KINDS}}


def check_rationale(text: str | None, question: str) -> str:
    """How a generated rationale holds up against its problem: "malformed" (not a list of "<n> <kind>" counts, or
    a kind twice), "wrong_count" (well-formed, but not how many things of each kind the bag holds) or "correct"
    (every kind in the bag counted right, none added; the order of the counts is not checked)."""
    parts = [_COUNT.match(part.strip()) for part in (text or "").split(",")]
    if not all(parts) or any(m["kind"] not in _PLURALS for m in parts):
        return "malformed"
    written = [(_PLURALS[m["kind"]], int(m["n"])) for m in parts]
    if len({kind for kind, _ in written}) != len(written):
        return "malformed"
    things = [t.strip() for t in question.split(":")[0].split(",")]
    if any(t not in KIND_OF for t in things):
        raise ValueError(f"not a demo problem: {question!r}")
    return "correct" if dict(written) == kind_counts(things) else "wrong_count"


def make_dataset(sizes: dict[str, int], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Splits of distinct problems ({split: [{"id", "question", "answer", "rationale"}]}) from one seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, size in sizes.items():
        rows = []
        while len(rows) < size:
            problem = make_problem(rng)
            if problem["question"] in seen:
                continue
            seen.add(problem["question"])
            rows.append({"id": len(seen) - 1, **problem})
        splits[split] = rows
    return splits


def teacher_output(problem: dict[str, Any]) -> str:
    """What a chain-of-thought teacher writes for a problem, in the paper's "So the answer is" format."""
    return f"{problem['rationale']}. So the answer is {problem['answer']}."


@register_task
class KindsDemo(Task):
    """The demo's synthetic counting problems. The label is one of the kinds, ranked like an NLI label."""

    name = "kinds-demo"
    labels = tuple(KINDS)
    input_fields = ("question",)
    label_field = "answer"
    full_split_sizes: dict[str, int] = {}

    def format_input(self, example):
        return example["question"].strip()

    def parse_teacher(self, output, example=None):
        head, sep, tail = output.partition("So the answer is")
        if not sep:
            return TeacherParse(head.strip() or None, None, "no_answer")
        return self._checked(head.strip().rstrip("."), tail.strip().rstrip("."), example)


def write_demo_data(data_dir: str | Path, teacher_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> None:
    """Examples (``data_dir/kinds-demo/{split}.jsonl``, the local data layout) and the recorded teacher outputs
    (``teacher_dir/kinds-demo/palm_{split}.jsonl``, the replay teacher's layout)."""
    import jsonlines

    examples, recordings = Path(data_dir) / KindsDemo.name, Path(teacher_dir) / KindsDemo.name
    examples.mkdir(parents=True, exist_ok=True)
    recordings.mkdir(parents=True, exist_ok=True)
    for split, rows in make_dataset(sizes, seed).items():
        with jsonlines.open(examples / f"{split}.jsonl", "w") as writer:
            writer.write_all({"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in rows)
        with jsonlines.open(recordings / f"palm_{split}.jsonl", "w") as writer:
            writer.write_all({"id": r["id"], "output": teacher_output(r)} for r in rows)


def demo_records(out_dir: str | Path, sizes: dict[str, int], seed: int = 0,
                 rationale_splits: tuple[str, ...] = ("train",)) -> dict[str, list[dict[str, Any]]]:
    """Write the demo data, load it with the data layer and attach the replay teacher's rationales to the
    ``rationale_splits`` (valid and test too for a student that reads rationales, such as rationale-input)."""
    from .data import load_task_data
    from .teacher import RationaleGenerator, ReplayTeacher, attach_rationales, load_rationales

    out_dir = Path(out_dir)
    write_demo_data(out_dir / "data", out_dir / "teacher", sizes, seed)
    splits = dict(load_task_data(KindsDemo.name, data_dir=out_dir / "data", source="local").splits)
    for split in rationale_splits:
        cache = out_dir / f"rationales_{split}.jsonl"
        cache.unlink(missing_ok=True)
        teacher = ReplayTeacher(out_dir / "teacher", KindsDemo.name, split)
        RationaleGenerator(KindsDemo.name, teacher, cache, progress=False).run(splits[split])
        splits[split] = attach_rationales(splits[split], load_rationales(cache))
    return splits


def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One demo run, in a worker process: the Trainer's own output goes to the run's log file, progress lines to
    the terminal."""
    import contextlib
    import sys

    import torch
    from transformers.utils import logging as hf_logging

    from .student.progress import ProgressCallback
    from .student.trainer import read_log, run_training

    torch.set_num_threads(job["threads"])
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressCallback(every_seconds=job["progress_seconds"], stream=sys.stderr,
                                prefix=f"  [{job['method']} seed {job['config'].seed}] ", bar=job["bar"])
    with open(run_dir / "train_output.log", "w") as log, contextlib.redirect_stdout(log):
        result = run_training(KindsDemo.name, job["train"], job["valid"], job["test"], job["config"], run_dir,
                              extra={"data_seed": job["data_seed"], "fraction": 1.0}, callbacks=[progress])
    logged = [row for row in read_log(run_dir) if "loss" in row]
    result["final_losses"] = {key: logged[-1][key] for key in ("loss", "label_loss", "rationale_loss")
                              if logged and key in logged[-1]}
    return result


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t interval (None for a single value)."""
    from scipy import stats

    if len(values) < 2:
        return sum(values) / len(values), None
    return statistics.fmean(values), float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values))


def _pm(values: list[float]) -> str:
    mean, half = mean_interval([100 * v for v in values])
    return f"{mean:.1f} ± {half:.1f}" if half is not None else f"{mean:.1f}"


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, runs) in enumerate(results.items()):
        color = f"C{i}"
        for j, r in enumerate(runs):
            steps, accs = zip(*r["valid_curve"]) if r["valid_curve"] else ((), ())
            curve.plot(steps, [100 * a for a in accs], marker="o", color=color, alpha=0.6,
                       label=name if j == 0 else None)
        tests = [100 * r["test_accuracy"] for r in runs]
        mean, half = mean_interval(tests)
        bars.bar(i, mean, yerr=half or 0, capsize=8, color=color, alpha=0.7)
        bars.scatter([i] * len(tests), tests, color="black", zorder=3, s=12)
        bars.text(i, mean + (half or 0) + 2, f"{mean:.1f}" + (f" ± {half:.1f}" if half else ""), ha="center")
    curve.set(xlabel="training step", ylabel="valid accuracy (%)", title="Validation accuracy, one line per seed")
    curve.legend()
    bars.set_xticks(range(len(results)), list(results))
    bars.set(ylabel="test accuracy (%)", ylim=(0, 105),
             title="Test accuracy: mean, 95% t-interval, seeds as dots")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


METHODS = {"standard fine-tuning": "standard", "distilling step-by-step": "step-by-step"}
# smaller than the tiny student's default T5 (d_model 128, 3+3 layers): 600 steps of 32 fit in about a minute per
# run on one core, and with 300 steps of 16 the default model learned nothing but the most frequent answer
DEMO_MODEL = dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4)


def demo(output_dir: str = "stepdistill-demo", seeds: list[int] | None = None, train_size: int = 300,
         valid_size: int = 200, test_size: int = 400, max_steps: int = 600, batch_size: int = 32,
         learning_rate: float = 3e-3, eval_steps: int = 150, alpha: float = 0.3, data_seed: int = 0,
         bf16: bool = False, workers: int = 2, threads: int = 1, progress_seconds: float = 30.0) -> dict:
    """Train a tiny T5 on counting problems by standard fine-tuning and by step-by-step, over several seeds.

    Prints a table (mean ± 95% t-interval), checks the rationales the students write and saves a plot. Offline, CPU.

    Args:
        output_dir: Folder for the data, every run (results.json, predictions, model), demo.png, demo_summary.json.
        seeds: Training seeds (model init, data order); every method runs once per seed. Default [0, 1, 2, 3, 4]:
            with 3 the paired interval included 0.
        train_size: Training problems (every run uses all of them; few, as in the paper's low-data regime).
        valid_size: Validation problems (checkpoint selection).
        test_size: Test problems (scored once, on the selected checkpoint).
        max_steps: Optimizer steps per run.
        batch_size: Global batch size.
        learning_rate: AdamW learning rate (the tiny model starts from random weights).
        eval_steps: Validation accuracy every this many steps.
        alpha: Weight of the label loss in step-by-step (1 - alpha for the rationale loss; the paper's 0.5
            gave a smaller gain here).
        data_seed: Seed of the problem generator.
        bf16: bf16 autocast (CPUs with AVX-512 bf16 / AMX, or a GPU).
        workers: Runs trained at once, each in its own process (2 for 2 cores).
        threads: torch CPU threads per run.
        progress_seconds: A progress line per run at least this often.
    """
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from transformers.utils import logging as hf_logging

    from .student.trainer import TrainConfig

    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be at least 1, got {workers} and {threads}")
    seeds = [0, 1, 2, 3, 4] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and not empty, got {seeds}")
    hf_logging.disable_progress_bar()  # the per-file save/load bars drown the demo's own output
    hf_logging.set_verbosity_error()
    out = Path(output_dir)
    started = time.perf_counter()
    splits = demo_records(out, {"train": train_size, "valid": valid_size, "test": test_size}, data_seed)
    train, valid, test = (splits[s] for s in ("train", "valid", "test"))
    print(f"demo data: {len(train)} train / {len(valid)} valid / {len(test)} test problems (data seed {data_seed}); "
          f"teacher outputs usable: {sum(r['teacher_error'] is None for r in train)}/{len(train)}")
    print(f"example input:     {train[0]['input']}\n"
          f"teacher rationale: {train[0]['rationale']}\nlabel:             {train[0]['label']}")
    jobs = []
    for seed in seeds:
        for name, method in METHODS.items():
            config = TrainConfig(model="tiny", tiny_overrides=DEMO_MODEL, method=method, label_source="gold",
                                 alpha=alpha, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                                 lr_scheduler_type="linear", warmup_steps=max_steps // 20, eval_steps=eval_steps,
                                 seed=seed, bf16=bf16, max_input_length=64, max_target_length=48,
                                 eval_batch_size=200, logging_steps=max(1, eval_steps // 4),
                                 generate_rationales=method == "step-by-step")  # checked and shown below
            jobs.append({"name": name, "method": method, "config": config, "train": train, "valid": valid,
                         "test": test, "run_dir": str(out / method / f"seed-{seed}"), "data_seed": data_seed,
                         "threads": threads, "progress_seconds": progress_seconds, "bar": None if workers == 1 else False})
    print(f"\ntraining {len(jobs)} runs ({len(METHODS)} methods x {len(seeds)} seeds, {max_steps} steps of "
          f"{batch_size}), {workers} at a time; Trainer logs in {out}/<method>/seed-<s>/train_output.log", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in METHODS}
    # spawned processes, one thread each: both cores busy without OpenMP threads waiting on each other
    from .experiments.executors import init_pool_worker  # workers die with the demo (a killed demo leaves none)

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_pool_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_train_one, job): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job, r = futures[future], future.result()
            results[job["name"]].append(r)
            losses = ", ".join(f"{k} {v:.3f}" for k, v in r["final_losses"].items())
            print(f"[{done}/{len(jobs)}] {job['name']}, seed {r['seed']}: valid {100 * r['valid_accuracy']:.1f}%, "
                  f"test {100 * r['test_accuracy']:.1f}%, final {losses} ({r['wall_seconds']:.0f} s)", flush=True)
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    _plot(results, out / "demo.png")
    print("\n" + _table(results, seeds))
    rationale_report = _rationales(out, seeds, test)
    elapsed = time.perf_counter() - started
    print(f"\n{len(test)} test problems per run; accuracy = the kind ranked first is the gold one; interval = 95% "
          f"Student-t over {len(seeds)} seeds. Plot: {out / 'demo.png'}. Total {elapsed:.0f} s.")
    summary = {"results": results, "rationales": rationale_report, "seconds": round(elapsed, 1),
               "plot": str(out / "demo.png")}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    sys.stdout.flush()
    return summary


def _table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    header = (f"{'method':<26}{'test acc %':>16}{'valid acc %':>16}{'final label loss':>18}"
              f"{'final rationale loss':>22}{'train s':>9}")
    lines = [header, "-" * len(header)]
    for name, runs in results.items():
        label_losses = [r["final_losses"].get("label_loss", r["final_losses"].get("loss")) for r in runs]
        rationale_losses = [r["final_losses"]["rationale_loss"] for r in runs if "rationale_loss" in r["final_losses"]]
        lines.append(f"{name:<26}{_pm([r['test_accuracy'] for r in runs]):>16}"
                     f"{_pm([r['valid_accuracy'] for r in runs]):>16}"
                     f"{statistics.fmean(label_losses):>18.3f}"
                     f"{(f'{statistics.fmean(rationale_losses):.3f}' if rationale_losses else '-'):>22}"
                     f"{statistics.fmean(r['train_seconds'] for r in runs):>9.0f}")
    per_seed = "  ".join(f"seed {s}: " + " vs ".join(f"{100 * runs[i]['test_accuracy']:.1f}" for runs in results.values())
                         for i, s in enumerate(seeds))
    standard, sbs = (results[name] for name in METHODS)
    gains = [b["test_accuracy"] - a["test_accuracy"] for a, b in zip(standard, sbs)]
    lines += ["", f"test accuracy per seed (standard vs step-by-step): {per_seed}",
              f"step-by-step minus standard (paired by seed): {_pm(gains)} points; "
              f"higher in {sum(g > 0 for g in gains)} of {len(gains)} seeds"]
    return "\n".join(lines)


def _rationales(out: Path, seeds: list[int], test: list[dict]) -> dict[str, int]:
    """Check every rationale the step-by-step students generated for test against its problem, and print a few only
    if they are true: the others are counted, never shown as if they were rationales."""
    from collections import Counter

    counts: Counter = Counter({"correct": 0, "wrong_count": 0, "malformed": 0})
    shown = []
    for seed in seeds:
        rows = _read_jsonl(out / "step-by-step" / f"seed-{seed}" / "predictions_test.jsonl")
        for record, row in zip(test, rows):
            verdict = check_rationale(row.get("rationale"), record["fields"]["question"])
            counts[verdict] += 1
            if verdict == "correct" and len(shown) < 3:
                shown.append((record, row))
    total = sum(counts.values())
    well_formed = total - counts["malformed"]
    print(f"\nrationales the step-by-step students wrote for test ({total} over {len(seeds)} seeds): "
          f"{well_formed} well-formed: {counts['correct']} correct (every kind counted right), "
          f"{counts['wrong_count']} with a wrong count; {counts['malformed']} malformed")
    if not shown:
        print("the students cannot write rationales yet (none correct); train longer (--max-steps) to see some")
    for record, row in shown:
        print(f"  {record['input']}\n    rationale: {row['rationale']} (correct); "
              f"answer {row['prediction']} (gold {record['label']})")
    return {"total": total, "well_formed": well_formed, **counts}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import jsonlines

    with jsonlines.open(path) as reader:
        return list(reader)


ArithDemo = KindsDemo  # the name that run folders written before the rename (task "arith-demo") refer to
