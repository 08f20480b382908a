"""`stepdistill export`: a trained run as a standalone model folder (safetensors weights, tokenizer, the student's
meta file), LoRA merged into the weights, optionally marked for int8 dynamic quantisation at load time; or, with
``--format onnx``, ONNX graphs for onnxruntime (:mod:`.onnx_export`), optionally int8 in the files themselves.

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

from ..options import DataOptions
from ..student.config import META_FILE
from ..student.onnx_student import is_onnx_meta
from ..student.predict import TrainedStudent, load_trained_student, predict

QUANTIZE_CHOICES = ("int8",)
MODEL_FILES = ("config.json", "adapter_config.json")  # a plain student, LoRA adapters
FORMATS = ("safetensors", "onnx")
RESULT_KEYS = ("method", "label_source", "steps", "valid_accuracy", "test_accuracy", "model", "count")


def run_name(path: str | Path) -> str:
    """The name a served model answers to: the run folder's name (its parent when given ``<run>/model``)."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "model" and (path.parent / "results.json").exists() else path.name


def find_model_folder(path: str | Path) -> Path:
    """The folder holding the saved student: ``path`` itself (an export, a model/ folder) or ``path/model`` (a run).

    A saved student is the meta file beside a transformers config or LoRA adapters (whose base
    ``load_trained_student`` finds through the meta file's ``lora.base_model``), or a meta file of an ONNX export."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder")
    for candidate in (path, path / "model"):
        if (candidate / META_FILE).is_file() and (any((candidate / name).is_file() for name in MODEL_FILES)
                                                   or is_onnx_meta(_read_meta(candidate))):
            return candidate
    raise ValueError(f"{path}: not a run folder or exported student (no {META_FILE} beside config.json or "
                     f"adapter_config.json (LoRA) in it or in its model/ folder)")


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder / META_FILE}: not readable as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / META_FILE}: must hold a JSON object")
    return meta


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
    ``quantize``) asks for it. An ONNX export loads as it was exported (its int8, if any, is in its files)."""
    student = load_trained_student(find_model_folder(path), task)
    if is_onnx_meta(student.meta):
        if quantize is not None and quantize != student.meta.get("quantize"):
            raise ValueError(f"{path}: an ONNX export is quantised when it is exported (export --format onnx "
                             f"--quantize int8), not at load time; --quantize applies to PyTorch students")
        return student
    model, _ = merge_lora(student.model)
    wanted = quantize or student.meta.get("quantize")
    if wanted is not None:
        if wanted not in QUANTIZE_CHOICES:
            raise ValueError(f"{path}: quantize must be one of {QUANTIZE_CHOICES}, got {wanted!r}")
        model = quantize_int8(model)
    student.model = model.eval()
    student.meta = {**student.meta, "quantize": wanted}  # what was loaded, whichever asked for it
    return student


def agreement(task: Any, reference: list[dict[str, Any]], rows: list[dict[str, Any]], gold: list[Any] | None = None,
              inputs: list[Any] | None = None) -> dict[str, Any]:
    """How closely ``rows`` (the export's predictions) follow ``reference`` (the PyTorch fp32 student's) on the same
    inputs: the share with the same label, the largest score difference, and both accuracies when gold is given."""
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(reference, rows))
    diffs = [abs(a["scores"][label] - b["scores"][label]) for a, b in zip(reference, rows)
             if a.get("scores") and b.get("scores") for label in a["scores"]]
    out = {"examples": len(rows), "same_label": same, "agreement": same / len(rows) if rows else None,
           "max_score_difference": max(diffs) if diffs else None}
    if gold is not None:
        fields = [item if isinstance(item, dict) else None for item in inputs or [None] * len(rows)]
        for name, predicted in (("accuracy_reference", reference), ("accuracy_export", rows)):
            out[name] = sum(bool(task.is_correct(row["prediction"], label, item))
                            for row, label, item in zip(predicted, gold, fields)) / len(rows)
    return out


def export_student(run_dir: str | Path, out: str | Path, quantize: str | None = None, task: Any = None,
                   overwrite: bool = False, format: str = "safetensors",
                   check_inputs: list[Any] | None = None, check_gold: list[Any] | None = None) -> Path:
    """Write ``out``: the weights (LoRA merged) as safetensors or as ONNX graphs, the tokenizer, and the meta file
    with ``export`` details. An fp32 ONNX export as ``run_dir`` with ``format="onnx", quantize="int8"`` gets int8
    copies of its graphs (no second export). ``check_inputs`` (``predict`` inputs; ``check_gold``: their labels):
    predict them with the source (the fp32 PyTorch student, or the fp32 ONNX export) and with the export as
    ``serve`` loads it, and record the agreement in the meta file's ``export.check``."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    source = find_model_folder(run_dir)
    source_meta = _read_meta(source)
    from_onnx = is_onnx_meta(source_meta)
    if from_onnx and (format, quantize, source_meta.get("quantize")) != ("onnx", "int8", None):
        raise ValueError(f"{run_dir}: already an ONNX export; export the run folder it came from (an fp32 ONNX "
                         f"export can only be quantised: --format onnx --quantize int8)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: already exists and is not empty (pass --overwrite true to replace it)")
        if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
            raise ValueError(f"{out}: would overwrite the run being exported")
        shutil.rmtree(out)
    student = load_trained_student(source, task, device="cpu")
    merged = bool(source_meta.get("export", {}).get("lora_merged"))
    if not from_onnx:
        model, merged = merge_lora(student.model)
        student.model = model.eval()
        if format == "onnx":
            from .onnx_export import check_exportable

            check_exportable(model)  # before any work: an unsupported model type is one error line
    reference = predict(student, check_inputs) if check_inputs else None  # before export switches attention
    meta = dict(student.meta)
    meta.pop("lora", None)  # merged: the folder is a plain model now
    meta["quantize"] = quantize
    out.mkdir(parents=True, exist_ok=True)
    try:
        if from_onnx:
            from .onnx_export import quantize_graphs

            quantize_graphs(source, out, meta["onnx"]["graphs"])
            meta["onnx"] = {**meta["onnx"], "quantize": quantize}
        elif format == "onnx":
            from .onnx_export import export_graphs

            meta["onnx"] = export_graphs(model, out, quantize)
            meta["format"] = "onnx"
        else:
            model.save_pretrained(str(out))  # safetensors: the transformers 5 default
            if not any(out.glob("*.safetensors")):
                raise RuntimeError(f"{out}: save_pretrained wrote no safetensors file")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written export that looks like a finished one
        raise
    student.tokenizer.save_pretrained(str(out))
    meta["export"] = {"source": str(source.resolve()), "lora_merged": merged, "run_name": run_name(run_dir),
                      "format": format}
    results = source.parent / "results.json"
    if results.is_file():  # what the run measured, for whoever deploys the folder
        meta["export"]["results"] = {key: value for key, value in json.loads(results.read_text()).items()
                                     if key in RESULT_KEYS}
    elif "results" in source_meta.get("export", {}):
        meta["export"]["results"] = source_meta["export"]["results"]
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if reference is not None:
        rows = predict(load_for_serving(out, task), check_inputs)
        meta["export"]["check"] = {"reference": "fp32 ONNX export" if from_onnx else "PyTorch student",
                                   **agreement(student.task, reference, rows, check_gold, check_inputs)}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _check_examples(data: DataOptions, task: str, split: str, count: int) -> tuple[list[Any], list[Any]]:
    """(inputs, gold labels) of a fixed subset (seed 0) of ``count`` examples of ``split``."""
    from dataclasses import replace

    from ..data import subsample
    from ..options import load_data

    if count < 1:
        raise ValueError(f"option --check-examples: must be at least 1, got {count}")
    records = load_data(replace(data, task=task), splits=[split]).splits[split]
    if count < len(records):
        records = subsample(records, count=count, seed=0)
    return [record["fields"] for record in records], [record["label"] for record in records]


def export_command(run_dir: str, out: str, data: DataOptions, format: Literal["safetensors", "onnx"] = "safetensors",
                   quantize: Literal["int8"] | None = None, check_split: str | None = None,
                   check_examples: int = 256, overwrite: bool = False) -> None:
    """Export a trained student as a standalone model folder that `predict` and `serve` load.

    safetensors (default): weights (LoRA adapters merged), the tokenizer and stepdistill.json (task, prefixes,
    lengths); `--quantize int8` keeps the fp32 weights and marks the folder so that `serve` applies dynamic int8
    quantisation to every Linear layer at load time (CPU). onnx: the graphs label ranking and generation need
    (seq2seq: encoder.onnx, decoder.onnx; causal: model.onnx) for onnxruntime, LoRA merged; `--quantize int8`
    quantises them with onnxruntime's dynamic quantiser and stores the int8 files. `--check-split test` (with the
    data options, as for `predict --split`) predicts a fixed subset of that split with the PyTorch student and with
    the export, and prints and records how often their labels agree. The folders may come first without their
    options: `stepdistill export RUN_DIR OUT`.

    Args:
        run_dir: A run folder from `stepdistill train` (or its model/ subfolder, or a safetensors export).
        out: The folder to write (must be new or empty).
        data: Where --check-split comes from; --task overrides the task saved with the model.
        format: safetensors (PyTorch) or onnx (onnxruntime).
        quantize: int8: for safetensors, quantise at load time for CPU serving; for onnx, int8 weights in the files.
        check_split: Compare the export's labels with the PyTorch student's on this split (train, valid, test).
        check_examples: How many examples of --check-split (a fixed subset, seed 0).
        overwrite: Replace a non-empty out folder.
    """
    from ..tasks import get_task

    task = data.task
    check_inputs = check_gold = None
    try:
        if check_split is not None:
            saved = _read_meta(find_model_folder(run_dir))
            task_name = task or saved.get("task_reference") or saved.get("task")
            get_task(task_name)  # an unknown task fails before the data loads
            check_inputs, check_gold = _check_examples(data, task_name, check_split, check_examples)
        path = export_student(run_dir, out, quantize=quantize, task=task, overwrite=overwrite, format=format,
                              check_inputs=check_inputs, check_gold=check_gold)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    kind = "onnx" + (" int8" if quantize else "") if format == "onnx" else \
        "safetensors" + (", int8 at load time" if quantize else "")
    line = f"exported {run_dir} to {path} ({kind}, {size / 1e6:.1f} MB)"
    check = json.loads((path / META_FILE).read_text())["export"].get("check")
    if check:
        line += (f"; the same label as the {check['reference']} on {check['same_label']}/{check['examples']} "
                 f"{check_split} examples ({100 * check['agreement']:.1f}%)")
        if check["max_score_difference"] is not None:
            line += f", scores within {check['max_score_difference']:.2g}"
        if "accuracy_export" in check:
            line += f", accuracy {check['accuracy_reference']:.3f} reference, {check['accuracy_export']:.3f} export"
    print(line)
