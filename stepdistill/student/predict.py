"""Inference with a trained student: labels (ranked over the task's candidates, or generated) and optional rationales."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tasks import Task, get_task
from .trainer import META_FILE


@dataclass
class TrainedStudent:
    model: Any
    tokenizer: Any
    task: Task
    meta: dict[str, Any]


def load_trained_student(path: str | Path, task: str | Task | None = None) -> TrainedStudent:
    """A student saved by training (``<run_dir>/model``, or the run folder itself)."""
    from .models import load_student

    path = Path(path)
    # a run folder holds a config.json of its own (the training config): look for the saved student's meta file
    if not (path / META_FILE).exists() and (path / "model" / "config.json").exists():
        path = path / "model"
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if task is None:
        if "task" not in meta:
            raise ValueError(f"{path}: no {META_FILE} naming the task; pass the task explicitly")
        if meta["task"] == "arith-demo":
            from .. import demo  # noqa: F401  (registers the demo task)
        task = meta["task"]
    model, tokenizer = load_student(path)
    return TrainedStudent(model, tokenizer, get_task(task), meta)


def predict(student: TrainedStudent | str | Path, inputs: list[str | dict[str, Any]], rationales: bool = False,
            batch_size: int = 64) -> list[dict[str, Any]]:
    """Predict a label (and a rationale with ``rationales``) for each input.

    An input is either raw example fields (a dict with the task's input fields, e.g. ``premise``/``hypothesis``,
    formatted by the task) or the already formatted input text. Classification tasks rank their label set (or the
    example's ``choices``); free-form tasks generate.
    """
    if not isinstance(student, TrainedStudent):
        student = load_trained_student(student)
    task, meta = student.task, student.meta
    records = []
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            missing = [name for name in task.input_fields if name not in item]
            if missing:
                raise ValueError(f"input {i}: missing field(s) {', '.join(missing)} for task {task.name}")
            records.append({"id": item.get(task.id_field, i), "input": task.format_input(item),
                            "choices": None if task.free_form else task.choices(item), "fields": item})
        else:
            records.append({"id": i, "input": str(item), "choices": None if task.free_form else task.choices({})})
    from .evaluate import predict_records

    rows = predict_records(
        student.model, student.tokenizer, task, records,
        label_prefix=meta.get("label_prefix", "[label] "), rationale_prefix=meta.get("rationale_prefix", "[rationale] "),
        batch_size=batch_size, max_input_length=meta.get("max_input_length", 512),
        max_target_length=meta.get("max_target_length", 256),
        label_max_new_tokens=meta.get("label_max_new_tokens", 32), rationales=rationales)
    for record, row in zip(records, rows):
        row["input"] = record["input"]
    return rows
