"""A local model folder as (model, tokenizer): a transformers checkpoint folder (``save_pretrained``), a
``stepdistill train`` run folder (its ``model/``) or a ``stepdistill export`` folder. LoRA students come back with
their adapters merged; an ONNX export is refused (it has no trainable weights or hidden states to read).

Used by ``--model shrink:PATH:...`` (:mod:`.shrink`) and ``--kd-teacher PATH`` (:mod:`.online_kd`): a "local
teacher" is only such a folder, so the student package never imports :mod:`stepdistill.teacher`."""

from __future__ import annotations

import json
from pathlib import Path

from .config import META_FILE


def checkpoint_folder(path: str | Path, option: str) -> Path:
    """The folder that holds the weights: ``path`` itself or a run folder's ``model/``; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"option {option}: {path}: no such folder (a checkpoint folder, a run folder of "
                         "`stepdistill train` or an export)")
    for candidate in (path, path / "model"):
        weights = (candidate / "adapter_config.json").is_file() or (
            (candidate / "config.json").is_file() and "model_type" in _json(candidate / "config.json"))
        if weights:
            return candidate
    raise ValueError(f"option {option}: {path}: no model in it (no transformers config.json or LoRA "
                     "adapter_config.json in it or in its model/ folder)")


def load_local_model(path: str | Path, option: str):
    """(model, tokenizer) of a local checkpoint, run folder or export, on the CPU, LoRA adapters merged."""
    from .models import load_student
    from .onnx_student import is_onnx_meta
    from .predict import load_trained_student, merged_model

    folder = checkpoint_folder(path, option)
    meta = _json(folder / META_FILE) if (folder / META_FILE).is_file() else {}
    if is_onnx_meta(meta):
        raise ValueError(f"option {option}: {path}: an ONNX export has no PyTorch weights; give the run folder "
                         "it was exported from")
    if meta.get("lora"):
        return merged_model(load_trained_student(folder, task=meta.get("task_reference") or meta.get("task"),
                                                 device="cpu"))
    return load_student(folder)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
