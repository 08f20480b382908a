"""Data sources for a task, joined with teacher outputs, and nested subsampling for data-efficiency curves.

Sources:
- ``local``: a folder in the layout of ``../shared/data``: ``{split}.jsonl[.gz]`` examples and
  ``palm_{split}.jsonl[.gz]`` teacher outputs (``{"id", "output"}``), joined by ``id``.
- ``official``: the distilling-step-by-step ``datasets/{task}`` layout: ``{task}_{split}.json`` (JSON Lines) and
  ``llm/{split}_CoT_{i}.json`` chunks (JSON arrays), concatenated in index order and joined by position.
- ``hub``: ``datasets.load_dataset`` (e.g. ``esnli``, ``anli``), with teacher outputs from ``teacher_dir``
  (either of the layouts above).
- ``jsonl`` / ``csv``: a user's files, one per split, with configurable field names.

Every record is a plain dict: ``id``, ``input``, ``label``, ``choices``, ``teacher_output``, ``rationale``,
``teacher_label``, ``teacher_error`` (None when the teacher output parsed) and ``fields`` (the raw example).
Examples without a usable teacher output are kept, marked and counted by reason; nothing is blanked.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jsonlines

from .options import DataOptions, SubsetOptions  # the data command's options (options.py imports data lazily)
from .tasks import Task, get_task

SPLITS = ("train", "valid", "test")
HUB_SPLITS = {  # our split name -> the hub dataset's split name
    "esnli": ("esnli", {"train": "train", "valid": "validation", "test": "test"}),
    "anli1": ("anli", {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}),
}
DATA_DIR_ENV = "STEPDISTILL_DATA_DIR"


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass
class SplitReport:
    examples: int = 0
    labels: Counter = field(default_factory=Counter)
    teacher_ok: int = 0
    teacher_failures: Counter = field(default_factory=Counter)  # reason -> count ("missing", "no_answer", ...)
    teacher_agree: int = 0  # teacher label == gold label
    teacher_without_example: int = 0  # outputs for examples of the full split that are not available locally

    @property
    def agreement(self) -> float:
        return self.teacher_agree / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "labels": dict(self.labels.most_common()),
            "teacher_ok": self.teacher_ok,
            "teacher_failures": dict(self.teacher_failures.most_common()),
            "teacher_label_agreement": round(self.agreement, 6),
            "teacher_without_example": self.teacher_without_example,
        }


@dataclass
class TaskData:
    task: Task
    splits: dict[str, list[dict[str, Any]]]
    report: dict[str, SplitReport]
    source: str


# -- reading files ---------------------------------------------------------------------------------------------

def _open_text(path: Path):
    if path.suffix == ".gz":
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raise DataError(f"{path}: not a gzip file (the name ends in .gz but the content is not gzip)")
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line; errors name the file and line."""
    with _open_text(path) as handle:
        reader = jsonlines.Reader(handle)
        try:
            for lineno, obj in enumerate(reader, start=1):
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except jsonlines.InvalidLineError as exc:
            raise DataError(f"{path}: line {exc.lineno}: malformed JSON: {exc}") from None
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: unreadable: {exc}") from None


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".jsonl.gz", ".jsonl", ".json.gz", ".json"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else $STEPDISTILL_DATA_DIR, else ../shared/data next to the working directory."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or Path.cwd().parent / "shared" / "data"
    return Path(chosen).expanduser()


# -- raw examples and teacher outputs per source ---------------------------------------------------------------

@dataclass
class _Raw:
    examples: list[tuple[str, dict[str, Any]]]  # (where: "file: line N", example)
    teacher: dict[str, tuple[str, str]] | None  # id -> (where, output); None when the source has none
    teacher_file: str = ""
    path: str = ""  # where the examples came from, for messages


def _task_folder(root: Path, task: Task, stem: str) -> Path:
    """Accept either the data root (holding a folder per task) or the task's folder itself."""
    if (root / task.name).is_dir() and _find(root / task.name, stem):
        return root / task.name
    return root


def _teacher_by_id(path: Path, id_field: str = "id", output_field: str = "output") -> dict[str, tuple[str, str]]:
    outputs: dict[str, tuple[str, str]] = {}
    for lineno, obj in read_jsonl(path):
        for name in (id_field, output_field):
            if name not in obj:
                raise DataError(f"{path}: line {lineno}: missing field '{name}'")
        if not isinstance(obj[output_field], str):
            raise DataError(f"{path}: line {lineno}: field '{output_field}' must be a string")
        key = str(obj[id_field])
        if key in outputs:
            raise DataError(f"{path}: line {lineno}: field '{id_field}': duplicate teacher output id {key} (first at {outputs[key][0]})")
        outputs[key] = (f"{path}: line {lineno}", obj[output_field])
    return outputs


def _teacher_by_position(folder: Path, split: str) -> tuple[dict[str, tuple[str, str]], str] | None:
    """Official ``{split}_CoT_{i}.json`` chunks, concatenated in index order; output i is example i."""
    chunks = sorted(folder.glob(f"{split}_CoT_*.json"), key=lambda p: int(re.findall(r"_(\d+)\.json$", p.name)[0]))
    if not chunks:
        return None
    outputs: dict[str, tuple[str, str]] = {}
    for expected_index, chunk in enumerate(chunks):
        if not chunk.name.endswith(f"_CoT_{expected_index}.json"):
            raise DataError(f"{chunk}: chunk files must be numbered 0, 1, 2, ... without gaps; expected index {expected_index}")
        try:
            items = json.loads(chunk.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{chunk}: line {exc.lineno}: malformed JSON: {exc.msg}") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise DataError(f"{chunk}: expected a JSON array of strings (teacher outputs)")
        for offset, text in enumerate(items):
            outputs[str(len(outputs))] = (f"{chunk}: item {offset}", text)
    return outputs, str(chunks[0].parent / f"{split}_CoT_*.json")


def _teacher_from_dir(folder: Path, split: str) -> tuple[dict[str, tuple[str, str]] | None, str]:
    palm = _find(folder, f"palm_{split}")
    if palm:
        return _teacher_by_id(palm), str(palm)
    for candidate in (folder / "llm", folder):
        positional = _teacher_by_position(candidate, split)
        if positional:
            return positional
    return None, ""


def _raw_local(task: Task, root: Path, split: str, **_: Any) -> _Raw | None:
    folder = _task_folder(root, task, split)
    path = _find(folder, split)
    if path is None:
        return None
    examples = [(f"{path}: line {lineno}", obj) for lineno, obj in read_jsonl(path)]
    teacher, teacher_file = _teacher_from_dir(folder, split)
    return _Raw(examples, teacher, teacher_file, str(path))


def _raw_official(task: Task, root: Path, split: str, **_: Any) -> _Raw | None:
    folder = root / task.name if (root / task.name).is_dir() else root
    path = folder / f"{task.name}_{split}.json"
    if not path.exists():
        return None
    examples = []
    for lineno, obj in read_jsonl(path):
        obj.setdefault("id", lineno - 1)  # the official files carry no id: position in the split
        examples.append((f"{path}: line {lineno}", obj))
    positional = _teacher_by_position(folder / "llm", split)
    teacher, teacher_file = positional if positional else (None, "")
    return _Raw(examples, teacher, teacher_file, str(path))


def _raw_hub(task: Task, root: Path | None, split: str, hub_name: str | None = None,
             teacher_dir: str | None = None, **_: Any) -> _Raw | None:
    import datasets  # heavy import, only for this source

    default_name, split_map = HUB_SPLITS.get(task.name, (task.name, {s: s for s in SPLITS}))
    name = hub_name or default_name
    dataset_dict = datasets.load_dataset(name)
    hub_split = split_map.get(split, split)
    if hub_split not in dataset_dict:
        return None
    dataset = dataset_dict[hub_split]
    label_names = None
    feature = dataset.features.get(task.label_field)
    if isinstance(feature, datasets.ClassLabel):
        label_names = feature.names
    examples = []
    for position, row in enumerate(dataset):
        row = dict(row)
        row.setdefault("id", position)
        if label_names is not None and isinstance(row.get(task.label_field), int) and row[task.label_field] >= 0:
            row[task.label_field] = label_names[row[task.label_field]]
        examples.append((f"{name}[{hub_split}]: row {position}", row))
    teacher, teacher_file = _teacher_from_dir(Path(teacher_dir), split) if teacher_dir else (None, "")
    return _Raw(examples, teacher, teacher_file, f"{name}[{hub_split}]")


def _raw_user(task: Task, root: Path | None, split: str, files: dict[str, str] | None = None,
              teacher_files: dict[str, str] | None = None, fields: dict[str, str] | None = None,
              teacher_field: str | None = None, **_: Any) -> _Raw | None:
    if not files or split not in files:
        return None
    path = Path(files[split])
    if not path.exists():
        raise DataError(f"{path}: file not found (split '{split}')")
    rename = {column: ours for ours, column in (fields or {}).items()}  # file column -> task field
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        with _open_text(path) as handle:
            rows = [(f"{path}: line {i + 2}", row) for i, row in enumerate(csv.DictReader(handle))]
    else:
        rows = [(f"{path}: line {lineno}", obj) for lineno, obj in read_jsonl(path)]
    examples, teacher = [], {} if teacher_field else None
    for position, (where, row) in enumerate(rows):
        row = {rename.get(key, key): value for key, value in row.items()}
        row.setdefault(task.id_field, position)
        if teacher_field and row.get(teacher_field) not in (None, ""):
            teacher[str(row[task.id_field])] = (where, str(row[teacher_field]))
        examples.append((where, row))
    teacher_file = str(path) if teacher_field else ""
    if teacher_files and split in teacher_files:
        teacher, teacher_file = _teacher_by_id(Path(teacher_files[split])), teacher_files[split]
    return _Raw(examples, teacher, teacher_file, str(path))


_SOURCES = {"local": _raw_local, "official": _raw_official, "hub": _raw_hub, "jsonl": _raw_user, "csv": _raw_user}


# -- building records ------------------------------------------------------------------------------------------

def _build_records(task: Task, split: str, raw: _Raw) -> tuple[list[dict[str, Any]], SplitReport]:
    report = SplitReport()
    records = []
    seen: set[str] = set()
    for where, example in raw.examples:
        if task.id_field not in example:
            raise DataError(f"{where}: missing field '{task.id_field}'")
        example_id = str(example[task.id_field])
        if example_id in seen:
            raise DataError(f"{where}: field '{task.id_field}': duplicate id {example_id}")
        seen.add(example_id)
        for name in (*task.input_fields, task.label_field):
            if name not in example or example[name] is None:
                raise DataError(f"{where}: missing field '{name}'")
        raw_label = example[task.label_field]
        if isinstance(raw_label, int) and not isinstance(raw_label, bool) and task.labels and 0 <= raw_label < len(task.labels):
            raw_label = task.labels[raw_label]
        label = task.canonical_label(str(raw_label), example)
        if label is None:
            expected = task.labels or task.choices(example)
            hint = f" (expected one of: {', '.join(expected)})" if expected else ""
            raise DataError(f"{where}: field '{task.label_field}': unknown label {raw_label!r}{hint}")
        record: dict[str, Any] = {
            "id": example_id,
            "input": task.format_input(example),
            "label": label,
            "choices": task.choices(example),
            "teacher_output": None,
            "rationale": None,
            "teacher_label": None,
            "teacher_error": None,
            "fields": example,
        }
        if raw.teacher is not None and example_id in raw.teacher:
            record["teacher_output"] = raw.teacher[example_id][1]
            parsed = task.parse_teacher(record["teacher_output"], example)
            record.update(rationale=parsed.rationale, teacher_label=parsed.label, teacher_error=parsed.error)
        else:
            record["teacher_error"] = "missing"
        if record["teacher_error"] is None:
            report.teacher_ok += 1
        else:
            report.teacher_failures[record["teacher_error"]] += 1
        if record["teacher_label"] is not None and task.is_correct(record["teacher_label"], label, example):
            report.teacher_agree += 1
        report.labels[label] += 1
        records.append(record)
    report.examples = len(records)

    if raw.teacher is not None:
        full_size = task.full_split_sizes.get(split)
        for teacher_id, (where, _) in raw.teacher.items():
            if teacher_id in seen:
                continue
            # Outputs for examples that exist in the full public split but not locally are expected (counted);
            # any other id is a misalignment.
            if full_size is not None and teacher_id.isdigit() and int(teacher_id) < full_size:
                report.teacher_without_example += 1
            else:
                raise DataError(f"{where}: field 'id': teacher output id {teacher_id} matches no example of split '{split}'")
    return records, report


def load_task_data(task: str | Task, data_dir: str | os.PathLike | None = None, source: str = "local",
                   splits: tuple[str, ...] | list[str] | None = None, **options: Any) -> TaskData:
    """Load a task's splits from a source, join teacher outputs and validate every example.

    ``splits=None`` loads the splits that exist. ``options`` go to the source: ``hub_name``, ``teacher_dir`` (hub);
    ``files``, ``teacher_files``, ``fields`` ({task field: file column}), ``teacher_field`` (jsonl/csv).
    """
    task = get_task(task)
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(_SOURCES)}")
    root = resolve_data_dir(data_dir) if source in ("local", "official") else (Path(data_dir) if data_dir else None)
    if root is not None and not root.exists():
        raise DataError(f"{root}: data folder not found (set --data-dir or ${DATA_DIR_ENV})")
    wanted = list(splits) if splits else list(options.get("files") or SPLITS)
    out, reports = {}, {}
    for split in wanted:
        raw = _SOURCES[source](task, root, split, **options)
        if raw is None:
            if splits:
                raise DataError(f"{root or source}: no '{split}' split for task '{task.name}' (source '{source}')")
            continue
        if not raw.examples:
            raise DataError(f"{raw.path}: split '{split}' has no examples")
        out[split], reports[split] = _build_records(task, split, raw)
    if not out:
        raise DataError(f"{root or source}: no split of task '{task.name}' found (source '{source}')")
    return TaskData(task=task, splits=out, report=reports, source=source)


# -- subsampling -----------------------------------------------------------------------------------------------

def _rank(seed: int, example_id: str) -> int:
    # sha256 rather than random.shuffle: identical on every machine and Python version, and per-id so that
    # the order does not depend on which other examples are present
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()[:8], "big")


def subsample(records: list[dict[str, Any]], fraction: float | None = None, count: int | None = None, seed: int = 0,
              full_size: int | None = None, stratify: bool = False) -> list[dict[str, Any]]:
    """A deterministic subset, nested across sizes for one ``seed`` (a smaller subset is inside any larger one).

    ``fraction`` is relative to ``full_size`` when given (the complete public split) or else to ``len(records)``.
    With ``stratify`` the label proportions of every prefix follow those of ``records``.
    """
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction or count")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        count = round(fraction * (full_size or len(records)))
    if count < 1 or count > len(records):
        raise ValueError(f"subset of {count} examples asked for, but {len(records)} are available")
    ranked = sorted(records, key=lambda r: _rank(seed, r["id"]))
    if stratify:
        by_label: dict[str, list[dict[str, Any]]] = {}
        for record in ranked:
            by_label.setdefault(record["label"], []).append(record)
        # interleave classes by their relative position so that every prefix keeps the proportions
        keyed = [((i + 0.5) / len(group), _rank(seed, r["id"]), r) for group in by_label.values() for i, r in enumerate(group)]
        ranked = [r for _, _, r in sorted(keyed, key=lambda item: item[:2])]
    chosen = {id(r) for r in ranked[:count]}
    return [r for r in records if id(r) in chosen]


# -- the `data` command ----------------------------------------------------------------------------------------

def format_report(data: TaskData, subset_of: dict[str, int] | None = None) -> str:
    """The text report; ``subset_of`` names the splits whose report is of a subsample (split -> size before it)."""
    lines = [f"task {data.task.name} (source: {data.source})"]
    for split, report in data.report.items():
        full = data.task.full_split_sizes.get(split)
        of_full = f" of {full:,} in the full split" if full and full != report.examples else ""
        if subset_of and split in subset_of:
            of_full = f" (subsample of the {subset_of[split]:,} loaded{of_full.replace(' of ', '; ', 1)})"
        lines.append(f"\n[{split}] {report.examples:,} examples{of_full}")
        labels = ", ".join(f"{label} {count:,} ({count / report.examples:.1%})" for label, count in report.labels.most_common(10))
        lines.append(f"  labels: {labels}" + (" ..." if len(report.labels) > 10 else ""))
        lines.append(f"  teacher outputs parsed: {report.teacher_ok:,}; teacher-label agreement with gold: {report.agreement:.1%}")
        if report.teacher_failures:
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in report.teacher_failures.most_common())
            lines.append(f"  unusable teacher outputs by reason: {reasons}")
        if report.teacher_without_example:
            lines.append(f"  teacher outputs for examples not available locally: {report.teacher_without_example:,}")
    return "\n".join(lines)


def data_command(data: DataOptions, subset: SubsetOptions, splits: list[str] | None = None,
                 rationales: str | list[str] | None = None, json: bool = False) -> None:
    """Load a task from a data source and print what is there (flat names work: --task, --fraction).

    Prints counts per split, the label distribution, teacher-label agreement with gold and unusable teacher
    outputs by reason; with --fraction/--count, the train figures are the subsample's own.

    Args:
        data: Where the examples and teacher outputs come from.
        subset: A nested subsample of train (its own counts are reported).
        splits: Splits to load (default: all that exist).
        rationales: `stepdistill generate` caches (paths or globs) whose teacher outputs replace the data's own
            for the train split, joined by id.
        json: Print the report as JSON instead of text.
    """
    from .options import load_data, train_subset
    from .rationales import split_report

    loaded = load_data(data, splits=splits, rationales=rationales)
    subset_of = {}
    if subset.active and "train" in loaded.splits:
        records = train_subset(loaded, subset)
        subset_of["train"] = len(loaded.splits["train"])
        loaded.report["train"] = split_report(loaded.task, records)
    if json:
        import json as json_module

        payload = {split: report.as_dict() for split, report in loaded.report.items()}
        if subset_of:
            payload["subsample"] = {"train": loaded.report["train"].examples, "of": subset_of["train"],
                                    "data_seed": subset.data_seed}
        print(json_module.dumps({"task": loaded.task.name, "source": data.source, "splits": payload}, indent=2))
    else:
        print(format_report(loaded, subset_of))
