"""`stepdistill demo`: the whole method offline in a few minutes on a laptop CPU.

A seeded generator writes multi-step arithmetic word problems ("Anne has 14 apples. She gives Peter 2 and Thomas 1.
How many apples does she have left?") with gold answers and, as a stand-in for an LLM teacher, teacher outputs in the
paper's few-shot format ("14 - 2 - 1 = 11. So the answer is 11."). Those outputs are replayed from a file through
the normal data path, exactly like the released PaLM outputs for e-SNLI/ANLI. A tiny T5 is then trained twice on the
same subset, with standard fine-tuning and with distilling step-by-step, and both are evaluated.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from .arith import values_equal
from .tasks import Task, TeacherParse, register_task

NAMES = ("Anne", "Peter", "Thomas", "Maria", "Lena", "Omar", "Kofi", "Yuki", "Sofia", "Ivan", "Priya", "Mateo")
ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "coins", "shells", "cards")
PRONOUN = {"Anne": "she", "Maria": "she", "Lena": "she", "Yuki": "she", "Sofia": "she", "Priya": "she"}


MIN_START, MAX_START, MAX_STEP = 6, 12, 3  # small numbers: a tiny model can learn the arithmetic in minutes


def _pronoun(name: str) -> str:
    return PRONOUN.get(name, "he")


def make_problem(rng: random.Random) -> dict[str, Any]:
    """One word problem: question, the equation a teacher would write, and the answer."""
    owner, first, second = rng.sample(NAMES, 3)
    item = rng.choice(ITEMS)
    he = _pronoun(owner)
    him = "her" if he == "she" else "him"
    kind = rng.choice(("give", "get", "buy-give", "give-find"))
    start, b, c = rng.randint(MIN_START, MAX_START), rng.randint(1, MAX_STEP), rng.randint(1, MAX_STEP)
    if kind == "give":
        question = (f"{owner} has {start} {item} and gives {first} {b} and {second} {c}. "
                    f"How many {item} does {he} have left?")
        equation = f"{start} - {b} - {c}"
    elif kind == "get":
        question = (f"{owner} has {start} {item}. {first} gives {owner} {b} more and {second} gives {him} {c}. "
                    f"How many {item} does {owner} have now?")
        equation = f"{start} + {b} + {c}"
    elif kind == "buy-give":
        question = (f"{owner} has {start} {item}, buys {b} more and then gives {c} to {first}. "
                    f"How many {item} does {he} have?")
        equation = f"{start} + {b} - {c}"
    else:
        question = (f"{owner} has {start} {item}. {he.capitalize()} gives {b} to {first} and finds {c} more. "
                    f"How many {item} does {he} have now?")
        equation = f"{start} - {b} + {c}"
    terms = equation.split()
    value = int(terms[0])
    for op, number in zip(terms[1::2], terms[2::2]):
        value = value + int(number) if op == "+" else value - int(number)
    return {"question": question, "rationale": f"{equation} = {value}", "answer": str(value)}


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
class ArithDemo(Task):
    """The demo's synthetic arithmetic word problems. The label is a number, generated and compared by value."""

    name = "arith-demo"
    input_fields = ("question",)
    label_field = "answer"
    free_form = True
    full_split_sizes: dict[str, int] = {}

    def format_input(self, example):
        return example["question"].strip()

    def canonical_label(self, text, example=None):
        text = text.strip()
        return text if text.lstrip("-").isdigit() else None

    def is_correct(self, prediction, gold, example=None):
        return values_equal(prediction, gold)

    def parse_teacher(self, output, example=None):
        head, sep, tail = output.partition("So the answer is")
        if not sep:
            return TeacherParse(head.strip() or None, None, "no_answer")
        return self._checked(head.strip().rstrip("."), tail.strip().rstrip("."), example)


def write_demo_data(data_dir: str | Path, teacher_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> None:
    """Examples (``data_dir/arith-demo/{split}.jsonl``, the local data layout) and the recorded teacher outputs
    (``teacher_dir/arith-demo/palm_{split}.jsonl``, the replay teacher's layout)."""
    import jsonlines

    examples, recordings = Path(data_dir) / ArithDemo.name, Path(teacher_dir) / ArithDemo.name
    examples.mkdir(parents=True, exist_ok=True)
    recordings.mkdir(parents=True, exist_ok=True)
    for split, rows in make_dataset(sizes, seed).items():
        with jsonlines.open(examples / f"{split}.jsonl", "w") as writer:
            writer.write_all({"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in rows)
        with jsonlines.open(recordings / f"palm_{split}.jsonl", "w") as writer:
            writer.write_all({"id": r["id"], "output": teacher_output(r)} for r in rows)


def demo_records(out_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Write the demo data, load it with the data layer and attach train rationales from the replay teacher."""
    from .data import load_task_data
    from .teacher import RationaleGenerator, ReplayTeacher, attach_rationales, load_rationales

    out_dir = Path(out_dir)
    write_demo_data(out_dir / "data", out_dir / "teacher", sizes, seed)
    splits = dict(load_task_data(ArithDemo.name, data_dir=out_dir / "data", source="local").splits)
    cache = out_dir / "rationales_train.jsonl"
    cache.unlink(missing_ok=True)
    teacher = ReplayTeacher(out_dir / "teacher", ArithDemo.name, "train")
    RationaleGenerator(ArithDemo.name, teacher, cache, progress=False).run(splits["train"])
    splits["train"] = attach_rationales(splits["train"], load_rationales(cache))
    return splits


def _train_one(job: tuple, log_to_file: bool = True) -> dict[str, Any]:
    """One demo run (in a worker process when the demo trains both methods at once)."""
    import contextlib

    import torch
    from transformers.utils import logging as hf_logging

    from .student.trainer import run_training

    name, config, train, valid, test, run_dir, data_seed, threads = job
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if log_to_file:
            log = stack.enter_context(open(Path(run_dir) / "train_output.log", "w"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        return run_training(ArithDemo.name, train, valid, test, config, run_dir,
                            extra={"data_seed": data_seed, "fraction": 1.0})


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import jsonlines

    with jsonlines.open(path) as reader:
        return list(reader)


def _plot(histories: dict[str, list[tuple[int, float]]], results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, bars) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in histories.items():
        curve.plot([s for s, _ in points], [100 * a for _, a in points], marker="o", label=name)
    curve.set(xlabel="training step", ylabel="valid accuracy (%)", title="Validation accuracy during training")
    curve.legend()
    names = list(results)
    bars.bar(names, [100 * (results[n]["test_accuracy"] or 0) for n in names], color=["tab:blue", "tab:orange"])
    for i, n in enumerate(names):
        bars.text(i, 100 * (results[n]["test_accuracy"] or 0) + 1, f"{100 * results[n]['test_accuracy']:.1f}",
                  ha="center")
    bars.set(ylabel="test accuracy (%)", title="Test accuracy (best checkpoint on valid)", ylim=(0, 105))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def demo(output_dir: str = "stepdistill-demo", train_size: int = 2000, valid_size: int = 200, test_size: int = 300,
         max_steps: int = 600, batch_size: int = 32, learning_rate: float = 2e-3, eval_steps: int = 200,
         alpha: float = 0.5, seed: int = 0, data_seed: int = 0, bf16: bool = False, threads: int | None = None,
         parallel: bool = True) -> dict:
    """Train a tiny T5 on synthetic arithmetic word problems, with standard fine-tuning and with distilling
    step-by-step on the same examples, evaluate both, print a table and save a plot. Offline, CPU, a few minutes.

    Args:
        output_dir: Folder for the data, both runs (results.json, predictions, model) and demo.png.
        train_size: Training problems (both methods use all of them).
        valid_size: Validation problems (checkpoint selection).
        test_size: Test problems (scored once, on the selected checkpoint).
        max_steps: Optimizer steps per method.
        batch_size: Global batch size.
        learning_rate: AdamW learning rate (the tiny model starts from random weights).
        eval_steps: Validation accuracy every this many steps.
        alpha: Weight of the label loss in step-by-step (1 - alpha for the rationale loss).
        seed: Training seed (model init, data order).
        data_seed: Seed of the problem generator.
        bf16: bf16 autocast (CPUs with AVX-512 bf16 / AMX, or a GPU).
        threads: torch CPU threads per run (default 1; with parallel false, raise it to use more cores).
        parallel: On CPU, train both methods at the same time in two processes (one thread each).
    """
    import torch
    from transformers.utils import logging as hf_logging

    from .student.trainer import TrainConfig, read_log

    hf_logging.disable_progress_bar()  # the per-file save/load bars drown the demo's own output
    hf_logging.set_verbosity_error()
    out = Path(output_dir)
    started = time.perf_counter()
    splits = demo_records(out, {"train": train_size, "valid": valid_size, "test": test_size}, data_seed)
    train, valid, test = (splits[s] for s in ("train", "valid", "test"))
    print(f"demo data: {len(train)} train / {len(valid)} valid / {len(test)} test problems "
          f"(data seed {data_seed}); teacher outputs usable: "
          f"{sum(r['teacher_error'] is None for r in train)}/{len(train)}")
    print(f"example: {train[0]['input']!r} -> rationale {train[0]['rationale']!r}, label {train[0]['label']!r}")
    results, histories = {}, {}
    runs = {"standard fine-tuning": "standard", "distilling step-by-step": "step-by-step"}
    configs = {name: TrainConfig(model="tiny", method=method, label_source="gold", alpha=alpha, max_steps=max_steps,
                                 batch_size=batch_size, learning_rate=learning_rate, lr_scheduler_type="linear",
                                 warmup_steps=max_steps // 20, eval_steps=eval_steps, seed=seed, bf16=bf16,
                                 max_input_length=96, max_target_length=32, label_max_new_tokens=6,
                                 eval_batch_size=128, logging_steps=max(1, eval_steps // 2),
                                 generate_rationales=method == "step-by-step",  # shown below, for inspection
                                 group_by_length=True)  # problems of near-equal length: grouping only trims padding
               for name, method in runs.items()}
    jobs = [(name, configs[name], train, valid, test, str(out / method), data_seed, threads or 1)
            for name, method in runs.items()]
    parallel = parallel and not torch.cuda.is_available()
    if parallel:
        # one process per method, one thread each: both cores busy without OpenMP threads waiting on each other
        # (two threads per process slow down many times over as soon as anything else runs on the machine)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        print(f"training both methods at once ({max_steps} steps, batch {batch_size}); "
              f"logs: {out}/standard/train_output.log, {out}/step-by-step/train_output.log", flush=True)
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            for name, result in zip(runs, pool.map(_train_one, jobs)):
                results[name] = result
    else:
        for job in jobs:
            print(f"training {job[0]} ({max_steps} steps, batch {batch_size}) ...", flush=True)
            results[job[0]] = _train_one(job, log_to_file=False)
    for name, method in runs.items():
        histories[name] = [(row["step"], row["eval_accuracy"]) for row in read_log(out / method)
                           if "eval_accuracy" in row]
    _plot(histories, results, out / "demo.png")
    elapsed = time.perf_counter() - started
    header = f"{'method':<26}{'valid acc':>10}{'test acc':>10}{'best step':>10}{'train s':>9}{'ex/s':>8}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(f"{name:<26}{100 * r['valid_accuracy']:>9.1f}%{100 * r['test_accuracy']:>9.1f}%"
                     f"{r['best_step'] or '-':>10}{r['train_seconds']:>9.1f}{r['train_examples_per_second']:>8.1f}")
    print("\n" + "\n".join(lines))
    predictions = {name: _read_jsonl(out / method / "predictions_test.jsonl") for name, method in runs.items()}
    print("\nfirst test problems (gold | standard | step-by-step, with its generated rationale):")
    for i, record in enumerate(test[:3]):
        sbs = predictions["distilling step-by-step"][i]
        print(f"  {record['input']}\n    gold {record['label']} | standard {predictions['standard fine-tuning'][i]['prediction']}"
              f" | step-by-step {sbs['prediction']} (rationale: {sbs.get('rationale')!r})")
    print(f"\n{len(test)} test problems; accuracy = exact value of the generated answer. "
          f"Plot: {out / 'demo.png'}; runs: {out}/standard, {out}/step-by-step. Total {elapsed:.0f} s.")
    summary = {"results": results, "seconds": round(elapsed, 1), "plot": str(out / "demo.png")}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
