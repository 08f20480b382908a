"""Files of a run folder: atomic JSON / JSON Lines writes, the log reader, peak memory and the student's metadata
(``model/stepdistill.json``: everything ``predict`` needs to rebuild the task and the student)."""

from __future__ import annotations

import json
import os
import resource
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..tasks import task_reference
from .config import META_FILE, TrainConfig


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)  # never leave a half-written file


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import jsonlines

    tmp = path.with_suffix(path.suffix + ".tmp")
    with jsonlines.open(tmp, "w") as writer:
        writer.write_all(rows)
    tmp.replace(path)


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The Trainer log history of a finished run (losses per logging step, eval accuracies)."""
    import jsonlines

    with jsonlines.open(Path(run_dir) / "train_log.jsonl") as reader:
        return list(reader)


def peak_memory_mb() -> dict[str, float]:
    import torch

    peak = {"cpu_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def student_meta(task, config: TrainConfig, family: str, separator: str, lora: dict[str, Any] | None,
                 rank_normalization: str) -> dict[str, Any]:
    """The metadata saved next to the student."""
    return {
        "task": task.name, "task_reference": task_reference(task),
        "family": family, "prompt_separator": separator, "lora": lora, "rank_normalization": rank_normalization,
        "label_prefix": config.label_prefix, "rationale_prefix": config.rationale_prefix,
        "max_input_length": config.max_input_length, "max_target_length": config.max_target_length,
        "label_max_new_tokens": config.label_max_new_tokens, "method": config.method,
        "shared_encoder": config.shared_encoder,
    }


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    write_json(model_dir / META_FILE, meta)


def config_record(config: TrainConfig, processes: int, per_device: int, accumulation: int) -> dict[str, Any]:
    return {**asdict(config), "world_size": processes, "per_device_batch_size": per_device,
            "gradient_accumulation_steps": accumulation}
