"""Rationale caches (the JSON Lines files `stepdistill generate` writes), read and joined to data-layer records.

This is the one reader of cache files: the teacher's generator appends to caches and imports it, and the training
commands join caches to examples through it, so the student never needs the teacher package.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterable

from .data import DataError


class CacheError(DataError):
    """A cache file that cannot be read; the message names the file and line."""


def read_cache(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """All complete records in ``path`` and the byte length of a partial final line (0 if none).

    A final line without its newline is an interrupted write and is not returned; any other bad line is an error.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    partial = len(data) - end
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CacheError(f"{path}: line {lineno}: not a JSON record ({exc}); only a final partial line is "
                             "tolerated, so this file was edited or written by something else") from None
        if not isinstance(record, dict) or "key" not in record or "id" not in record:
            raise CacheError(f"{path}: line {lineno}: not a rationale record (needs fields 'id' and 'key')")
        records.append(record)
    return records, partial


def index_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """key -> record; a later record for a key replaces an earlier one (a retried failure)."""
    return {record["key"]: record for record in records}


def load_rationales(path: str | Path) -> dict[str, dict[str, Any]]:
    """Example id -> its record (the last one written), for training on generated rationales."""
    return {str(record["id"]): record for record in index_by_key(read_cache(path)[0]).values()}


# the Batch API teacher's state log sits next to its cache (CACHE.batches.jsonl); a glob over caches skips it
BATCH_LOG_SUFFIX = ".batches.jsonl"


def glob_caches(pattern: str | Path) -> list[str]:
    """The cache files a glob matches, sorted, without the Batch API state logs beside them."""
    return [path for path in sorted(glob.glob(str(pattern))) if not path.endswith(BATCH_LOG_SUFFIX)]


def cache_paths(patterns: str | Iterable[str]) -> list[Path]:
    """The files named by ``patterns`` (paths or globs); a pattern that matches nothing is an error."""
    patterns = [patterns] if isinstance(patterns, (str, Path)) else list(patterns)
    paths: list[Path] = []
    for pattern in patterns:
        matched = glob_caches(pattern) or ([str(pattern)] if Path(pattern).is_file() else [])
        if not matched:
            raise DataError(f"{pattern}: no rationale cache matches (option --rationales)")
        paths += [Path(path) for path in matched if Path(path) not in paths]
    return paths


def load_rationale_caches(patterns: str | Iterable[str]) -> dict[str, dict[str, Any]]:
    """Example id -> record over several caches or shards; a usable record wins over a failed one, else the later."""
    joined: dict[str, dict[str, Any]] = {}
    for path in cache_paths(patterns):
        for example_id, record in load_rationales(path).items():
            previous = joined.get(example_id)
            if previous is None or not (previous.get("status") == "ok" and record.get("status") != "ok"):
                joined[example_id] = record
    return joined


def is_synthetic(record: dict[str, Any]) -> bool:
    """A record of `generate --synthesize` (a new example written by the teacher), not a rationale for a real one."""
    return isinstance(record.get("synthetic"), dict)


def _first_record(path: Path) -> dict[str, Any] | None:
    """The first complete record of a cache (None: empty), without reading the rest."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n") and line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return None  # the full read names the file and line
                return record if isinstance(record, dict) else None
    return None


def synthetic_caches(patterns: str | Iterable[str], option: str = "--rationales") -> bool:
    """Whether the caches hold synthetic examples (True) or rationales for real examples (False); both is an error.
    A cache is one kind throughout (one `generate` wrote it): its first record says which, so the caches are not
    read twice (a synthetic cache with another record in it is refused line by line in :func:`synthetic_records`)."""
    kinds = {path: is_synthetic(_first_record(path) or {}) for path in cache_paths(patterns)}
    if len(set(kinds.values())) > 1:
        synthetic = ", ".join(str(path) for path, kind in kinds.items() if kind)
        raise DataError(f"option {option}: {synthetic} hold synthetic examples and the others rationales for real "
                        "examples; give the synthetic ones with --synthetic PATH --synthetic-ratio R")
    return any(kinds.values())


def synthetic_records(task, patterns: str | Iterable[str], option: str = "--rationales") -> list[dict[str, Any]]:
    """The accepted synthetic examples of `generate --synthesize` caches as data-layer train records (the teacher's
    label is the label), in cache order."""
    out: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in cache_paths(patterns):
        records = read_cache(path)[0]
        for lineno, record in enumerate(records, start=1):
            if not is_synthetic(record):
                raise DataError(f"{path}: line {lineno}: not a synthetic example (option {option} takes the --out of "
                                "`generate --synthesize`)")
            if record["synthetic"].get("task") != task.name:
                raise DataError(f"{path}: line {lineno}: a synthetic example of task {record['synthetic'].get('task')!r}, "
                                f"not {task.name!r} (option {option})")
        for record in index_by_key(records).values():
            if record.get("status") != "ok":
                continue
            example_id, fields = str(record["id"]), record.get("fields")
            if not isinstance(fields, dict) or not record.get("rationale") or record.get("label") is None:
                raise DataError(f"{path}: synthetic example {example_id}: status ok without fields, rationale and label")
            if example_id in seen:
                raise DataError(f"{path}: synthetic example id {example_id} is also in {seen[example_id]}: caches of "
                                f"different runs need different --synthesis-seed values (option {option})")
            seen[example_id] = path
            out.append({"id": example_id, "input": task.format_input(fields), "label": record["label"],
                        "choices": task.choices(fields), "teacher_output": record.get("raw_output"),
                        "rationale": record["rationale"], "teacher_label": record["label"],
                        "teacher_raw_label": record["label"], "teacher_error": None, "fields": fields,
                        "synthetic": True})
    return out


def attach_rationales(examples: list[dict[str, Any]], cache: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of data-layer records with teacher_output/rationale/teacher_label/teacher_error from ``cache``, and
    ``label_logprobs`` (candidate -> log-probability) where a usable record carries it.

    An example the cache lacks is marked ``missing`` (kept, never blanked into a fake rationale).
    """
    out = []
    for example in examples:
        record = cache.get(str(example["id"]))
        if record is None:
            update = dict(teacher_output=None, rationale=None, teacher_label=None, teacher_error="missing")
        else:
            usable = record["status"] == "ok"
            update = dict(teacher_output=record.get("raw_output"), rationale=record.get("rationale") if usable else None,
                          teacher_label=record.get("label"), teacher_error=None if usable else record.get("error"))
            if usable and record.get("label_logprobs") is not None:  # the teacher's distribution (docs: kd_format)
                update["label_logprobs"] = record["label_logprobs"]
        update["teacher_raw_label"] = update["teacher_label"]  # the cache keeps no raw text; not the data layer's
        if record is not None and record.get("token_topk") and update["teacher_error"] is None:
            update["teacher_token_topk"] = record["token_topk"]  # generate --token-logprobs K: offline token KD
        if record is not None and record.get("outputs") and update["teacher_error"] is None:
            # self-consistency samples (generate --n K), for training on every sampled rationale
            update["teacher_outputs"] = list(record["outputs"])
            update["teacher_finish_reasons"] = record.get("finish_reasons")
        # a distribution from an earlier join never outlives its record
        out.append({**{k: v for k, v in example.items() if k != "label_logprobs"}, **update})
    return out
