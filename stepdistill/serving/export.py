"""`stepdistill export`: a trained run as a standalone model folder (safetensors weights, tokenizer, the student's
meta file), LoRA merged into the weights, optionally marked for int8 dynamic quantisation at load time.

Why int8 is a load-time flag: dynamically quantised Linear modules hold packed int8 tensors that safetensors cannot
store in a standard way (only a pickle could), so the folder keeps the fp32 weights and ``"quantize": "int8"`` in
its meta file; :func:`load_for_serving` (used by ``serve`` and the benchmark) quantises after loading, in well under
a second for a small student. ``load_trained_student(OUT)`` itself gives the fp32 model.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

from ..student.config import META_FILE
from ..student.predict import TrainedStudent, load_trained_student

QUANTIZE_CHOICES = ("int8",)
MODEL_FILES = ("config.json", "adapter_config.json")  # a plain student, LoRA adapters


def run_name(path: str | Path) -> str:
    """The name a served model answers to: the run folder's name (its parent when given ``<run>/model``)."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "model" and (path.parent / "results.json").exists() else path.name


def find_model_folder(path: str | Path) -> Path:
    """The folder holding the saved student: ``path`` itself (an export, a model/ folder) or ``path/model`` (a run).

    A saved student is the meta file beside a transformers config or LoRA adapters (whose base
    ``load_trained_student`` finds through the meta file's ``lora.base_model``)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder")
    for candidate in (path, path / "model"):
        if (candidate / META_FILE).is_file() and any((candidate / name).is_file() for name in MODEL_FILES):
            return candidate
    raise ValueError(f"{path}: not a run folder or exported student (no {META_FILE} beside config.json or "
                     f"adapter_config.json (LoRA) in it or in its model/ folder)")


def merge_lora(model: Any) -> tuple[Any, bool]:
    """(plain model, whether LoRA adapters were merged): a peft ``PeftModel`` gets ``merge_and_unload()``."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a plain model needs nothing from it
        return model, False
    if isinstance(model, PeftModel):
        return model.merge_and_unload(), True
    return model, False


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised per batch), CPU only.

    ``torch.ao.quantization.quantize_dynamic`` still ships in torch 2.13 but warns that it moves to torchao; torchao's
    replacement targets GPUs and is not a dependency, so the eager API is used with its warning silenced.
    """
    import torch

    if model.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU only; the model is on {model.device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_for_serving(path: str | Path, task: Any = None, quantize: str | None = None) -> TrainedStudent:
    """``load_trained_student`` plus the export's load-time options: LoRA merged, int8 when the meta file (or
    ``quantize``) asks for it."""
    student = load_trained_student(find_model_folder(path), task)
    model, _ = merge_lora(student.model)
    wanted = quantize or student.meta.get("quantize")
    if wanted is not None:
        if wanted not in QUANTIZE_CHOICES:
            raise ValueError(f"{path}: quantize must be one of {QUANTIZE_CHOICES}, got {wanted!r}")
        model = quantize_int8(model)
    student.model = model.eval()
    student.meta = {**student.meta, "quantize": wanted}  # what was loaded, whichever asked for it
    return student


def export_student(run_dir: str | Path, out: str | Path, quantize: str | None = None, task: Any = None,
                   overwrite: bool = False) -> Path:
    """Write ``out``: safetensors weights (LoRA merged), tokenizer, and the meta file with ``export`` details."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    source = find_model_folder(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: already exists and is not empty (pass --overwrite true to replace it)")
        if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
            raise ValueError(f"{out}: would overwrite the run being exported")
        shutil.rmtree(out)
    student = load_trained_student(source, task)
    model, merged = merge_lora(student.model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))  # safetensors: the transformers 5 default
    student.tokenizer.save_pretrained(str(out))
    meta = dict(student.meta)
    meta.pop("lora", None)  # merged: the folder is a plain model now
    meta["quantize"] = quantize
    meta["export"] = {"source": str(source.resolve()), "lora_merged": merged,
                      "run_name": run_name(run_dir)}
    results = source.parent / "results.json"
    if results.is_file():  # what the run measured, for whoever deploys the folder
        meta["export"]["results"] = {key: value for key, value in json.loads(results.read_text()).items()
                                     if key in ("method", "label_source", "steps", "valid_accuracy", "test_accuracy",
                                                "model", "count")}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if not any(out.glob("*.safetensors")):
        raise RuntimeError(f"{out}: save_pretrained wrote no safetensors file")
    return out


def export_command(run_dir: str, out: str, quantize: Literal["int8"] | None = None, task: str | None = None,
                   overwrite: bool = False) -> None:
    """Export a trained student as a standalone model folder that `predict` and `serve` load.

    The folder holds safetensors weights (LoRA adapters merged), the tokenizer and stepdistill.json (task, prefixes,
    lengths). `--quantize int8` keeps the fp32 weights and marks the folder so that `serve` applies dynamic int8
    quantisation to every Linear layer at load time (CPU). The folders may come first without their options:
    `stepdistill export RUN_DIR OUT`.

    Args:
        run_dir: A run folder from `stepdistill train` (or its model/ subfolder, or another export).
        out: The folder to write (must be new or empty).
        quantize: int8: quantise at load time for CPU serving.
        task: Override the task saved with the model (name, spec.json or file.py:Class).
        overwrite: Replace a non-empty out folder.
    """
    try:
        path = export_student(run_dir, out, quantize=quantize, task=task, overwrite=overwrite)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"exported {run_dir} to {path} ({size / 1e6:.1f} MB{', int8 at load time' if quantize else ''})")
