"""One uniform record per teacher answer ("item"), from `generate` caches or from a task's own teacher outputs.

An item: ``id``, ``status`` (ok, parse_error, failed, filtered; ``missing`` for an example without teacher output),
``reason`` (the error: no_answer, unknown_label, http_429, ...), ``raw_output``, ``rationale``, ``label`` (the
teacher's), ``gold``, ``fields`` (the example, when known), ``outputs`` and ``votes`` (self-consistency, n > 1),
``label_logprobs`` and ``label_logprobs_source`` (the teacher's label distribution, where the cache has it).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from ..rationales import glob_caches
from ..teacher.generator import read_cache


def cache_paths(pattern: str) -> list[Path]:
    """The files a ``--cache`` value names: a path or a glob; an error when it names none."""
    paths = [Path(p) for p in glob_caches(pattern)] if glob.has_magic(pattern) else [Path(pattern)]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise ValueError(f"--cache {pattern!r}: no such cache file" + (f": {', '.join(missing)}" if missing else ""))
    return paths


def items_from_caches(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(items: the last record per key, as `generate` uses them; every record line, for tokens and cost; counts)."""
    lines: list[dict[str, Any]] = []
    partial = 0
    for path in paths:
        records, partial_bytes = read_cache(path)
        lines += records
        partial += bool(partial_bytes)
    latest = {record["key"]: record for record in lines}  # a later record for a key replaces an earlier one
    items = [{
        "id": str(record["id"]), "status": record.get("status"), "reason": record.get("error"),
        "raw_output": record.get("raw_output"), "rationale": record.get("rationale"), "label": record.get("label"),
        "gold": record.get("gold"), "fields": None, "outputs": record.get("outputs"), "votes": record.get("votes"),
        "label_logprobs": record.get("label_logprobs"), "label_logprobs_source": record.get("label_logprobs_source"),
    } for record in latest.values()]
    return items, lines, {"files": len(paths), "record_lines": len(lines), "keys": len(latest),
                          "partial_final_lines": partial}


def items_from_task(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items from `stepdistill.data` records (the task's own teacher outputs, e.g. the released PaLM ones)."""
    items = []
    for record in records:
        error = record.get("teacher_error")
        status = "ok" if error is None else "missing" if error == "missing" else "parse_error"
        items.append({"id": str(record["id"]), "status": status, "reason": error,
                      "raw_output": record.get("teacher_output"), "rationale": record.get("rationale"),
                      "label": record.get("teacher_label"), "raw_label": record.get("teacher_raw_label"),
                      "gold": record.get("label"), "fields": record.get("fields"),
                      "outputs": None, "votes": None})
    return items
