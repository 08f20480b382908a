"""`stepdistill train` and `stepdistill predict`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

from ..options import DataOptions, SubsetOptions
from .config import META_FILE, TrainConfig


def train(output_dir: str, data: DataOptions, subset: SubsetOptions, student: TrainConfig,
          rationales: str | list[str] | None = None, valid_size: int | Literal["all"] = 1000,
          test_size: int | Literal["all"] = "all") -> dict:
    """Train a student on a train split, select on valid, score test once (flat names work: --max-steps, --task).

    Every --group.option also answers to its flat name: --max-steps for --student.max_steps, --task for --data.task.
    `--config FILE.yaml`: a flat file of TrainConfig fields (alpha: 0.3, e.g. a `tune` study's best_config.yaml);
    options on the command line override it.

    Launch with `accelerate launch -m stepdistill.cli train ...` or
    `torchrun` for several devices: the global batch stays --batch-size.

    Args:
        output_dir: Run folder: results.json, config.json, predictions_*.jsonl, model/.
        data: Where the examples and teacher outputs come from.
        subset: Which training examples (nested subsets for data-efficiency curves).
        student: Student training settings (stepdistill.student.config.TrainConfig).
        rationales: `stepdistill generate` caches (paths or globs, e.g. 'shards/*.jsonl') whose teacher outputs
            replace the data's own for the train split, joined by id (examples they lack count as missing); caches of `generate --synthesize` replace the train split
            (data-free).
        valid_size: Validation during training on a fixed subset of this many valid examples (seed 0), or all.
        test_size: Score test once, at the end, on the whole split (all) or on a fixed subset (seed 0) for a quick
            check.
    """
    from ..data import DataError
    from ..options import load_data, train_subset
    from .progress import ProgressCallback
    from .trainer import run_training

    loaded = load_data(data, rationales=rationales)
    for split in ("train", "valid"):
        if split not in loaded.splits:
            raise DataError(f"task {loaded.task.name}: no '{split}' split (source {data.source}"
                            + (f", {data.data_dir}" if data.data_dir else "") + ")")
    train_records = train_subset(loaded, subset)
    valid = _fixed_subset(loaded.splits["valid"], valid_size, "--valid-size")
    test = _fixed_subset(loaded.splits.get("test", []), test_size, "--test-size")
    extra = {"fraction": subset.fraction, "data_seed": subset.data_seed, "rationales": rationales,
             "source": data.source, "valid_size": len(valid), "valid_full_size": len(loaded.splits["valid"]),
             "test_size": len(test), "test_full_size": len(loaded.splits.get("test", [])),
             "valid_carved": loaded.valid_carved,
             "synthetic": subset.synthetic, "synthetic_ratio": subset.synthetic_ratio if subset.synthetic else None,
             "synthetic_examples": sum(bool(record.get("synthetic")) for record in train_records)}
    results = run_training(loaded.task, train_records, valid, test, student, output_dir, extra=extra,
                           callbacks=[ProgressCallback()])
    import torch.distributed as dist

    if dist.is_initialized():  # leave the process group cleanly (a rank exiting mid-teardown aborts its peers)
        dist.barrier()
        dist.destroy_process_group()
    if results.get("processes", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps({k: results.get(k) for k in ("task", "method", "label_source", "count", "steps",
                                                      "valid_accuracy", "valid_size", "test_accuracy", "test_size",
                                                      "wall_seconds")}, indent=2))
    return results


def _fixed_subset(records: list[dict], size: int | str, option: str) -> list[dict]:
    """``size`` records picked by a fixed seed (0), the same for every run; all of them for "all"."""
    from ..data import subsample

    if size == "all" or (isinstance(size, int) and size >= len(records)):
        return records
    if size < 1:
        raise ValueError(f"option {option}: must be a positive number or all, got {size}")
    return subsample(records, count=size, seed=0)


def predict(model_dir: str, data: DataOptions, input: str | None = None, input_file: str | None = None,
            split: str | None = None, output_file: str | None = None, rationales: bool = False,
            batch_size: int = 64, bf16: bool = False, rationale_first: bool = False) -> None:
    """Predict labels (and rationales) with a trained student (flat names work: --task, --fields).

    Inputs: one --input, an --input-file (JSON Lines or .csv, columns renamed with --fields), or a whole --split
    of a task's data from any source (the options of `stepdistill data`; rows then carry their gold label). The task
    is the one saved with the model unless --task names another. The folder may come first without its option:
    `stepdistill predict RUN_DIR --input ...`.

    Args:
        model_dir: A run folder from `stepdistill train` (or its model/ subfolder).
        input: One input: formatted text, or a JSON object with the task's fields.
        input_file: JSON Lines (objects with the task's fields, or {"input": text}) or CSV; "-" reads JSON Lines
            from stdin.
        data: Where --split comes from; --fields also renames --input-file columns; --task overrides the saved task.
        split: Predict every example of this split (train, valid, test) of the data options.
        output_file: Write predictions as JSON Lines here (default: print them).
        rationales: Also generate a rationale for each input.
        batch_size: Inputs per batch.
        bf16: bf16 autocast (on the GPU, which predict uses when there is one).
        rationale_first: Step-by-step students: generate each rationale first, then predict the label from the
            input with that rationale appended (compare with plain [label] prediction).
    """
    import jsonlines

    from ..options import load_data
    from ..tasks import get_task
    from .predict import load_trained_student, predict as run_predict

    if sum(x is not None for x in (input, input_file, split)) != 1:
        raise ValueError("give exactly one of --input, --input-file or --split")
    metas = [Path(model_dir) / sub / META_FILE for sub in (".", "model") if (Path(model_dir) / sub / META_FILE).is_file()]
    if not metas:
        raise FileNotFoundError(f"{model_dir}: not a run folder of `stepdistill train` (no {META_FILE} in it or in "
                                "its model/; option --model-dir)")
    meta = json.loads(metas[0].read_text())
    task = data.task or meta.get("task_reference") or meta.get("task")  # a reference rebuilds a spec/file task
    get_task(task)  # an unknown --task fails here, before the model loads
    gold: list = []
    items: list = []
    if split is not None:
        loaded = load_data(replace(data, task=task), splits=[split])  # task: a name, path or saved reference
        items = [record["fields"] for record in loaded.splits[split]]
        gold = [record["label"] for record in loaded.splits[split]]
    elif input is not None:
        text = input.strip()
        try:
            items.append(json.loads(text) if text.startswith("{") else input)
        except json.JSONDecodeError as exc:
            raise ValueError(f"option --input: malformed JSON: {exc.msg}") from None
    else:
        items = _read_inputs(input_file, data.fields or {})
    student = load_trained_student(model_dir, task)
    rows = run_predict(student, items, rationales=rationales, batch_size=batch_size, bf16=bf16,
                       rationale_first=rationale_first)
    for row, label in zip(rows, gold):
        row["gold"] = label
    if output_file:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        with jsonlines.open(output_file, "w") as writer:
            writer.write_all(rows)
        print(f"wrote {len(rows)} predictions to {output_file}")
    else:
        for row in rows:
            print(json.dumps(row))


def _read_inputs(input_file: str, fields: dict[str, str]) -> list:
    """Rows of an input file, columns renamed task field <- file column as in the data options' --fields."""
    import csv

    from ..data import DataError, read_jsonl

    rename = {column: ours for ours, column in fields.items()}
    if input_file == "-":
        rows = []
        for lineno, line in enumerate(sys.stdin, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"<stdin>: line {lineno}: malformed JSON: {exc.msg}") from None
    elif not Path(input_file).is_file():
        raise DataError(f"{input_file}: file not found (option --input-file)")
    elif input_file.endswith((".csv", ".csv.gz")):
        with open(input_file, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [obj for _, obj in read_jsonl(Path(input_file))]
    items = []
    for row in rows:
        if isinstance(row, dict) and set(row) == {"input"}:
            items.append(row["input"])
        else:
            items.append({rename.get(key, key): value for key, value in row.items()} if isinstance(row, dict) else row)
    return items
