"""Inference with a trained student: labels (ranked over the task's candidates, or generated) and optional rationales,
for seq2seq and causal students, with or without LoRA adapters, on the GPU when there is one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tasks import Task, get_task
from .config import META_FILE


@dataclass
class TrainedStudent:
    model: Any
    tokenizer: Any
    task: Task
    meta: dict[str, Any]
    path: Path | None = None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _student_folder(path: Path) -> Path:
    """``<run_dir>/model`` when given the run folder (it holds a config.json of its own, the training config)."""
    if not (path / META_FILE).exists() and (path / "model" / META_FILE).exists():
        return path / "model"
    if not (path / META_FILE).exists() and (path / "model" / "config.json").exists():
        return path / "model"
    return path


def load_trained_student(path: str | Path, task: str | Task | None = None, device: str | None = None
                         ) -> TrainedStudent:
    """A student saved by training (``<run_dir>/model``, or the run folder itself), on ``device`` (default: the
    GPU when there is one). LoRA students load their base model and then the saved adapters; an ONNX export
    (``stepdistill export --format onnx``) loads as onnxruntime sessions (CPU)."""
    from transformers import AutoTokenizer

    from .lora import load_adapters
    from .models import load_student, prepare_causal_tokenizer
    from .onnx_student import is_onnx_meta, load_onnx_model
    from .quiet import no_progress_bars

    path = _student_folder(Path(path))
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if task is None:
        if "task" not in meta:
            raise ValueError(f"{path}: no {META_FILE} naming the task; pass the task explicitly")
        task = meta.get("task_reference") or meta["task"]  # the reference rebuilds spec and file.py:Class tasks
    lora = meta.get("lora")
    if is_onnx_meta(meta):  # onnxruntime sessions on the CPU, whatever ``device`` says
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if meta.get("family") == "causal":
            prepare_causal_tokenizer(tokenizer)
        return TrainedStudent(load_onnx_model(path, meta), tokenizer, get_task(task), meta, path)
    if lora:
        base = lora["base_model"]
        base_path = path / base
        model, _ = load_student(base_path if not Path(base).is_absolute() and base_path.exists() else base)
        with no_progress_bars():
            model = load_adapters(model, path)
        tokenizer = AutoTokenizer.from_pretrained(str(path))  # the run's own copy (a causal pad token may be set)
        if meta.get("family") == "causal":
            prepare_causal_tokenizer(tokenizer)
    else:
        model, tokenizer = load_student(path)
    model.to(device or default_device())
    model.eval()
    return TrainedStudent(model, tokenizer, get_task(task), meta, path)


def merged_model(student: TrainedStudent | str | Path) -> tuple[Any, Any]:
    """(a plain transformers model, tokenizer) for export: LoRA adapters merged into the base weights
    (``merge_and_unload``); a fully fine-tuned student is returned as it is."""
    from .lora import is_lora_model

    if not isinstance(student, TrainedStudent):
        student = load_trained_student(student, device="cpu")
    model = student.model.merge_and_unload() if is_lora_model(student.model) else student.model
    return model, student.tokenizer


def predict(student: TrainedStudent | str | Path, inputs: list[str | dict[str, Any]], rationales: bool = False,
            batch_size: int = 64, bf16: bool = False, rationale_first: bool = False) -> list[dict[str, Any]]:
    """Predict a label (and a rationale with ``rationales``) for each input.

    An input is either raw example fields (a dict with the task's input fields, e.g. ``premise``/``hypothesis``,
    formatted by the task) or the already formatted input text. Classification tasks rank their label set (or the
    example's ``choices``); free-form tasks generate. ``bf16``: bf16 autocast (GPU, or CPUs with bf16 support).
    ``rationale_first`` (step-by-step students): generate the rationale first and predict the label from the input
    with it appended.
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
                            "choices": None if task.free_form else task.choices(item), "fields": item,
                            "rationale": item.get("rationale")})  # read by rationale-input students
        else:
            records.append({"id": i, "input": str(item), "choices": None if task.free_form else task.choices({})})
    from .evaluate import predict_records, rank_normalization_for

    rows = predict_records(
        student.model, student.tokenizer, task, records,
        label_prefix=meta.get("label_prefix", "[label] "), rationale_prefix=meta.get("rationale_prefix", "[rationale] "),
        batch_size=batch_size, max_input_length=meta.get("max_input_length", 512),
        max_target_length=meta.get("max_target_length", 256),
        label_max_new_tokens=meta.get("label_max_new_tokens", 32), rationales=rationales, bf16=bf16,
        rank_normalization=rank_normalization_for(task, meta.get("rank_normalization")), family=student_family(student),
        method=meta.get("method", "standard"), rationale_first=rationale_first)
    for record, row in zip(records, rows):
        row["input"] = record["input"]
    return rows


def student_family(student: TrainedStudent):
    """The family object that scores and generates for this student: from its meta file's separator and shared
    encoder setting; an ONNX export's own (:mod:`.onnx_student`) for its sessions."""
    from .families import PROMPT_SEPARATOR, family_of
    from .onnx_student import OnnxStudentModel

    meta = student.meta
    separator = meta.get("prompt_separator") or PROMPT_SEPARATOR
    prefixes = (meta["label_prefix"], meta["rationale_prefix"]) if meta.get("shared_encoder") else ()
    if isinstance(student.model, OnnxStudentModel):
        return student.model.family(separator, prefixes)
    return family_of(student.model, separator, decoder_prefixes=prefixes)
