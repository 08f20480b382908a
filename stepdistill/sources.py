"""Reading a task's raw examples and teacher outputs from each data source (the layer under ``stepdistill.data``).

Sources:
- ``local``: a folder in the layout of ``../shared/data``: ``{split}.jsonl[.gz]`` examples and
  ``palm_{split}.jsonl[.gz]`` teacher outputs (``{"id", "output"}``), joined by ``id``.
- ``official``: the distilling-step-by-step ``datasets/{task}`` layout: ``{task}_{split}.json`` (JSON Lines) and
  ``llm/{split}_CoT_{i}.json`` chunks (JSON arrays), concatenated in index order and joined by position (examples
  keep their own ids where the file has them, e.g. CQA's cos_e ids).
- ``hub``: ``datasets.load_dataset`` (e.g. ``esnli``, ``anli``), with teacher outputs from ``teacher_dir``
  (either of the layouts above).
- ``jsonl`` / ``csv``: a user's files, one per split, with configurable field names.

Every file is read to its end, so a truncated ``.gz`` stream is an error, never a shorter split.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jsonlines

from .tasks import Task

SPLITS = ("train", "valid", "test")
HUB_SPLITS = {  # our split name -> the hub dataset's split name
    "esnli": ("esnli", {"train": "train", "valid": "validation", "test": "test"}),
    "anli1": ("anli", {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}),
}


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


# -- reading files ---------------------------------------------------------------------------------------------

def _open_text(path: Path):
    if path.suffix == ".gz":
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raise DataError(f"{path}: not a gzip file (the name ends in .gz but the content is not gzip)")
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _lines(handle, path: Path) -> Iterator[str]:
    # jsonlines ends its iteration on EOFError, which is also how gzip reports a truncated stream: turn it into
    # an error of our own before jsonlines (or csv) can mistake it for the end of the file
    try:
        yield from handle
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip stream (the file is incomplete): {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable: {exc}") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line, to the end of the file; errors name the file and line."""
    with _open_text(path) as handle:
        reader = jsonlines.Reader(_lines(handle, path))
        try:
            for lineno, obj in enumerate(reader, start=1):
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except jsonlines.InvalidLineError as exc:
            raise DataError(f"{path}: line {exc.lineno}: malformed JSON: {exc}") from None


def read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for each row, to the end of the file."""
    with _open_text(path) as handle:
        try:
            return [(f"{path}: line {i + 2}", row) for i, row in enumerate(csv.DictReader(_lines(handle, path)))]
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV: {exc}") from None


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".jsonl.gz", ".jsonl", ".json.gz", ".json"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


# -- teacher outputs -------------------------------------------------------------------------------------------

@dataclass
class TeacherOutputs:
    outputs: dict[str, tuple[str, str]]  # id (or position, as a string) -> (where, output)
    where: str  # the file(s), for messages
    by_position: bool  # keys are positions in the split, to be replaced by the examples' ids
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (id, line) of outputs for no wanted example


# `{"id": 17, ...` or `{"id": "a-b", ...`: the id of a teacher line, read without parsing the rest of the line
_LEADING_ID = re.compile(r'\{\s*"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")\s*[,}]')


def _skip_unwanted(path: Path, wanted: set[str], skipped: list[tuple[str, int]]) -> Iterator[tuple[int, dict]]:
    """(line number, object) of the lines whose id is wanted or cannot be read cheaply; the others' (id, line) go to
    ``skipped`` unparsed (the shared e-SNLI teacher file holds 549,367 outputs, for 14,949 local examples)."""
    with _open_text(path) as handle:
        for lineno, line in enumerate(_lines(handle, path), start=1):
            match = _LEADING_ID.match(line)
            key = None if match is None else json.loads(match[1]) if match[1][0] == '"' else match[1]
            if key is not None and key not in wanted:
                skipped.append((key, lineno))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)  # jsonlines reads whole files; here most lines are skipped before parsing
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: malformed JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _teacher_by_id(path: Path, id_field: str = "id", output_field: str = "output", wanted: set[str] | None = None,
                   skipped: list[tuple[str, int]] | None = None) -> dict[str, tuple[str, str]]:
    """Teacher outputs by id. With ``wanted`` (and ``id_field`` "id"), only lines for those ids are parsed; the
    others' (id, line) are appended to ``skipped``."""
    outputs: dict[str, tuple[str, str]] = {}
    lines = (read_jsonl(path) if wanted is None or id_field != "id"
             else _skip_unwanted(path, wanted, skipped if skipped is not None else []))
    for lineno, obj in lines:
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


def _teacher_by_position(folder: Path, split: str) -> TeacherOutputs | None:
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
    return TeacherOutputs(outputs, str(chunks[0].parent / f"{split}_CoT_*.json"), by_position=True)


def teacher_outputs(folder: Path, split: str, wanted: set[str] | None = None) -> TeacherOutputs | None:
    """A split's teacher outputs in ``folder``: ``palm_{split}.jsonl[.gz]`` by id, else ``[llm/]{split}_CoT_*.json``.
    ``wanted``: the ids of the examples at hand; outputs for other ids are only listed in ``skipped``."""
    palm = _find(folder, f"palm_{split}")
    if palm:
        skipped: list[tuple[str, int]] = []
        return TeacherOutputs(_teacher_by_id(palm, wanted=wanted, skipped=skipped), str(palm), by_position=False,
                              skipped=skipped)
    for candidate in (folder / "llm", folder):
        positional = _teacher_by_position(candidate, split)
        if positional:
            return positional
    return None


def _teacher_from_dir(folder: Path, split: str) -> tuple[dict[str, tuple[str, str]] | None, str]:
    """(outputs keyed as stored: by id, or by position for chunks; where) - the replay teacher's reader."""
    found = teacher_outputs(folder, split)
    return (found.outputs, found.where) if found else (None, "")


# -- raw examples per source -----------------------------------------------------------------------------------

@dataclass
class Raw:
    examples: list[tuple[str, dict[str, Any]]]  # (where: "file: line N", example)
    teacher: TeacherOutputs | None  # None when the source has none
    path: str = ""  # where the examples came from, for messages
    position_ids: bool = False  # an example without an id takes its position in the split


def _task_folder(root: Path, task: Task, stem: str) -> Path:
    """Accept either the data root (holding a folder per task) or the task's folder itself."""
    if (root / task.name).is_dir() and _find(root / task.name, stem):
        return root / task.name
    return root


def _official_folder(root: Path, task: Task) -> Path:
    return root / task.name if (root / task.name).is_dir() else root


def _example_ids(task: Task, examples: list[tuple[str, dict[str, Any]]]) -> set[str] | None:
    """The examples' ids as the task reads them; None (every teacher line is parsed) when one has none."""
    ids = set()
    for _, example in examples:
        try:
            prepared = task.prepare_example(example)
        except ValueError:
            return None  # reported where the examples are built
        if task.id_field not in prepared:
            return None
        ids.add(str(prepared[task.id_field]))
    return ids


def _raw_local(task: Task, root: Path, split: str, **_: Any) -> Raw | None:
    folder = _task_folder(root, task, split)
    path = _find(folder, split)
    if path is None:
        return None
    examples = [(f"{path}: line {lineno}", obj) for lineno, obj in read_jsonl(path)]
    return Raw(examples, teacher_outputs(folder, split, _example_ids(task, examples)), str(path))


def _raw_official(task: Task, root: Path, split: str, **_: Any) -> Raw | None:
    folder = _official_folder(root, task)
    path = folder / f"{task.name}_{split}.json"
    if split not in task.official_splits or not path.exists():
        return None
    examples = [(f"{path}: line {lineno}", obj) for lineno, obj in read_jsonl(path)]
    return Raw(examples, _teacher_by_position(folder / "llm", split), str(path), position_ids=True)


def _raw_hub(task: Task, root: Path | None, split: str, hub_name: str | None = None,
             teacher_dir: str | None = None, **_: Any) -> Raw | None:
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
        if label_names is not None and isinstance(row.get(task.label_field), int) and row[task.label_field] >= 0:
            row[task.label_field] = label_names[row[task.label_field]]
        examples.append((f"{name}[{hub_split}]: row {position}", row))
    teacher = teacher_outputs(Path(teacher_dir), split) if teacher_dir else None
    return Raw(examples, teacher, f"{name}[{hub_split}]", position_ids=True)


def _raw_user(task: Task, root: Path | None, split: str, files: dict[str, str] | None = None,
              teacher_files: dict[str, str] | None = None, fields: dict[str, str] | None = None,
              teacher_field: str | None = None, **_: Any) -> Raw | None:
    if not files or split not in files:
        return None
    path = Path(files[split])
    if not path.exists():
        raise DataError(f"{path}: file not found (split '{split}')")
    rename = {column: ours for ours, column in (fields or {}).items()}  # file column -> task field
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        rows = read_csv(path)
    else:
        rows = [(f"{path}: line {lineno}", obj) for lineno, obj in read_jsonl(path)]
    rows = [(where, {rename.get(key, key): value for key, value in row.items()}) for where, row in rows]
    if teacher_field and rows and not any(teacher_field in row for _, row in rows):
        columns = sorted({key for _, row in rows for key in row})
        raise DataError(f"{path}: teacher field '{teacher_field}' matches no column (columns: {', '.join(columns)})")
    examples, outputs = [], {}
    for position, (where, row) in enumerate(rows):
        row.setdefault(task.id_field, position)
        if teacher_field and row.get(teacher_field) not in (None, ""):
            outputs[str(row[task.id_field])] = (where, str(row[teacher_field]))
        examples.append((where, row))
    teacher = TeacherOutputs(outputs, str(path), by_position=False) if teacher_field else None
    if teacher_files and split in teacher_files:
        teacher_path = Path(teacher_files[split])
        teacher = TeacherOutputs(_teacher_by_id(teacher_path), str(teacher_path), by_position=False)
    return Raw(examples, teacher, str(path))


SOURCES = {"local": _raw_local, "official": _raw_official, "hub": _raw_hub, "jsonl": _raw_user, "csv": _raw_user}

