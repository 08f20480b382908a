"""A task's data: examples from a source (see ``stepdistill.sources``) joined with teacher outputs, validated;
a valid split carved from train where a task has none; nested subsampling for data-efficiency curves.

Every record is a plain dict: ``id``, ``input``, ``label``, ``choices``, ``teacher_output``, ``rationale``,
``teacher_label`` (a valid label or None, so an invalid one never becomes a training target),
``teacher_raw_label`` (the label text as parsed, valid or not), ``teacher_error`` (None when the teacher output
parsed) and ``fields`` (the example). Examples without a usable teacher output are kept, marked and counted by
reason; nothing is blanked.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sources import HUB_SPLITS, SOURCES, SPLITS, DataError, Raw, TeacherOutputs, _teacher_from_dir, read_jsonl
from .tasks import Task, get_task

_REEXPORTED = (HUB_SPLITS, _teacher_from_dir, read_jsonl)  # still importable from here (the replay teacher's reader)

DATA_DIR_ENV = "STEPDISTILL_DATA_DIR"
DEFAULT_CARVE = 0.1  # the authors carve 10% of train as valid where a dataset has no valid split (seed 0)


@dataclass
class SplitReport:
    examples: int = 0
    labels: Counter = field(default_factory=Counter)
    teacher_ok: int = 0
    teacher_failures: Counter = field(default_factory=Counter)  # reason -> count ("missing", "no_answer", ...)
    teacher_agree: int = 0  # teacher label == gold label by the task's rule (normalised text; equations by value)
    teacher_agree_authors: int = 0  # the parsed label agrees with gold by the task's authors' rule (Task.authors_rule)
    authors_rule: str = "exact text"
    teacher_without_example: int = 0  # outputs for examples of the full split that are not available locally

    @property
    def agreement(self) -> float:
        return self.teacher_agree / self.examples if self.examples else 0.0

    @property
    def agreement_authors(self) -> float:
        return self.teacher_agree_authors / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "labels": dict(self.labels.most_common()),
            "teacher_ok": self.teacher_ok,
            "teacher_failures": dict(self.teacher_failures.most_common()),
            "teacher_label_agreement": round(self.agreement, 6),
            "teacher_label_agreement_authors": round(self.agreement_authors, 6),
            "authors_rule": self.authors_rule,
            "teacher_without_example": self.teacher_without_example,
        }


@dataclass
class TaskData:
    task: Task
    splits: dict[str, list[dict[str, Any]]]
    report: dict[str, SplitReport]
    source: str
    valid_carved: dict[str, Any] | None = None  # {"from": "train", "size": n, "seed": s} when valid was carved

    @property
    def train_full_size(self) -> int | None:
        """The size that train fractions refer to (``subsample(full_size=...)``): the complete public train split,
        less the carved valid examples. (The authors subsample first and carve 10% of each subset: the same number
        of training examples at a fraction.)"""
        full = self.task.full_split_sizes.get("train")
        return full - self.valid_carved["size"] if full is not None and self.valid_carved else full


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else $STEPDISTILL_DATA_DIR, else ../shared/data next to the working directory."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or Path.cwd().parent / "shared" / "data"
    return Path(chosen).expanduser()


# -- building records ------------------------------------------------------------------------------------------

def _prepared(task: Task, raw: Raw) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, id, example) in file order, mapped onto the task's fields, ids checked."""
    out, seen = [], {}
    for position, (where, example) in enumerate(raw.examples):
        try:
            example = task.prepare_example(example)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        if task.id_field not in example and raw.position_ids:
            example = {**example, task.id_field: position}  # files without ids: the position in the split
        if task.id_field not in example:
            raise DataError(f"{where}: missing field '{task.id_field}'")
        example_id = str(example[task.id_field])
        if example_id in seen:
            raise DataError(f"{where}: field '{task.id_field}': duplicate id {example_id} (first at {seen[example_id]})")
        seen[example_id] = where
        out.append((where, example_id, example))
    return out


def _outputs_by_id(teacher: TeacherOutputs, ids: list[str]) -> dict[str, tuple[str, str]]:
    """Teacher outputs keyed by example id; positional outputs take the id of the example at their position."""
    if not teacher.by_position:
        return teacher.outputs
    return {(ids[int(key)] if int(key) < len(ids) else key): value for key, value in teacher.outputs.items()}


def _gold_text(task: Task, example: dict[str, Any]) -> str:
    """The gold label as the file spells it (integer class labels by name)."""
    raw_label = example[task.label_field]
    if isinstance(raw_label, int) and not isinstance(raw_label, bool) and task.labels and 0 <= raw_label < len(task.labels):
        return task.labels[raw_label]
    return str(raw_label)


def _gold_label(task: Task, example: dict[str, Any], where: str) -> str:
    """The gold label as the task spells it."""
    for name in (*task.input_fields, task.label_field):
        if name not in example or example[name] is None:
            raise DataError(f"{where}: missing field '{name}'")
    label = task.canonical_label(_gold_text(task, example), example)
    if label is None:
        expected = task.labels or task.choices(example)
        hint = f" (expected one of: {', '.join(expected)})" if expected else ""
        raise DataError(f"{where}: field '{task.label_field}': unknown label {example[task.label_field]!r}{hint}")
    return label


def split_report(task: Task, records: list[dict[str, Any]], teacher_without_example: int = 0) -> SplitReport:
    """Counts over a split's records (labels, usable teacher outputs, failures by reason, agreement with gold)."""
    report = SplitReport(examples=len(records), teacher_without_example=teacher_without_example,
                         authors_rule=task.authors_rule)
    for record in records:
        report.labels[record["label"]] += 1
        if record["teacher_error"] is None:
            report.teacher_ok += 1
        else:
            report.teacher_failures[record["teacher_error"]] += 1
        if record["teacher_label"] is not None and task.is_correct(record["teacher_label"], record["label"], record["fields"]):
            report.teacher_agree += 1
        report.teacher_agree_authors += task.authors_agree(record["teacher_raw_label"], _gold_text(task, record["fields"]),
                                                           record["fields"])
    return report


def _build_records(task: Task, split: str, raw: Raw) -> tuple[list[dict[str, Any]], SplitReport]:
    records = []
    examples = _prepared(task, raw)
    outputs = _outputs_by_id(raw.teacher, [example_id for _, example_id, _ in examples]) if raw.teacher else None
    for where, example_id, example in examples:
        label = _gold_label(task, example, where)  # checks the fields first
        record: dict[str, Any] = {
            "id": example_id,
            "input": task.format_input(example),
            "label": label,
            "choices": task.choices(example),
            "teacher_output": None,
            "rationale": None,
            "teacher_label": None,
            "teacher_raw_label": None,
            "teacher_error": "missing",
            "fields": example,
        }
        if outputs is not None and example_id in outputs:
            record["teacher_output"] = outputs[example_id][1]
            parsed = task.parse_teacher(record["teacher_output"], example)
            record.update(rationale=parsed.rationale, teacher_label=parsed.label, teacher_raw_label=parsed.raw_label,
                          teacher_error=parsed.error)
        records.append(record)

    without_example = 0
    if outputs is not None:
        full_size = task.full_split_sizes.get(split)
        seen = {record["id"] for record in records}
        skipped = ((teacher_id, f"{raw.teacher.where}: line {lineno}") for teacher_id, lineno in raw.teacher.skipped)
        for teacher_id, where in itertools.chain(((key, where) for key, (where, _) in outputs.items()), skipped):
            if teacher_id in seen:
                continue
            # Outputs for examples that exist in the full public split but not locally are expected (counted);
            # any other id is a misalignment.
            if full_size is not None and teacher_id.isdigit() and int(teacher_id) < full_size:
                without_example += 1
            else:
                raise DataError(f"{where}: field 'id': teacher output id {teacher_id} matches no example of split '{split}'")
    return records, split_report(task, records, without_example)


def load_task_data(task: str | Task | dict[str, Any], data_dir: str | os.PathLike | None = None,
                   source: str = "local", splits: tuple[str, ...] | list[str] | None = None,
                   carve_valid: float | int | None = DEFAULT_CARVE, carve_seed: int = 0, **options: Any) -> TaskData:
    """Load a task's splits from a source, join teacher outputs and validate every example.

    ``splits=None`` loads the splits that exist. Where valid is wanted (``splits=None`` or listing it) but the
    source has none, ``carve_valid`` (a fraction of train, or a count; None: do not carve) examples are carved
    from train by :func:`carve_valid_split`; train is then the remaining pool and ``TaskData.valid_carved`` says
    so. ``splits=["train"]`` alone never carves (the full train split, e.g. for the teacher). ``options`` go to
    the source: ``hub_name``, ``teacher_dir`` (hub); ``files``, ``teacher_files``, ``fields`` ({task field: file
    column}), ``teacher_field`` (jsonl/csv).
    """
    task = get_task(task)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    root = resolve_data_dir(data_dir) if source in ("local", "official") else (Path(data_dir) if data_dir else None)
    if root is not None and not root.exists():
        raise DataError(f"{root}: data folder not found (set --data-dir or ${DATA_DIR_ENV})")
    wanted = list(splits) if splits else list(dict.fromkeys([*SPLITS, *(options.get("files") or {})]))
    out, reports = {}, {}

    def load(split: str) -> bool:
        raw = SOURCES[source](task, root, split, **options)
        if raw is None:
            return False
        if not raw.examples:
            raise DataError(f"{raw.path}: split '{split}' has no examples")
        out[split], reports[split] = _build_records(task, split, raw)
        return True

    carve = False
    for split in wanted:
        if not load(split):
            if split == "valid" and carve_valid is not None:
                carve = True
            elif splits:
                raise DataError(f"{root or source}: no '{split}' split for task '{task.name}' (source '{source}')")
    valid_carved = None
    if carve and ("train" in out or load("train")):
        try:
            out["train"], out["valid"] = carve_valid_split(out["train"], carve_valid, carve_seed)
        except ValueError as exc:
            raise DataError(f"{root or source}: task '{task.name}' has no valid split to load: {exc}") from None
        reports["valid"] = split_report(task, out["valid"])
        reports["train"] = split_report(task, out["train"], reports["train"].teacher_without_example)
        valid_carved = {"from": "train", "size": len(out["valid"]), "seed": carve_seed}
        if splits and "train" not in splits:
            del out["train"], reports["train"]
    elif carve and splits:
        raise DataError(f"{root or source}: no 'valid' split for task '{task.name}' (source '{source}') and no "
                        "train split to carve one from")
    if not out:
        raise DataError(f"{root or source}: no split of task '{task.name}' found (source '{source}')")
    order = [split for split in SPLITS if split in out] + [split for split in out if split not in SPLITS]
    return TaskData(task=task, splits={s: out[s] for s in order}, report={s: reports[s] for s in order},
                    source=source, valid_carved=valid_carved)


# -- subsampling -----------------------------------------------------------------------------------------------

def _rank(seed: int, example_id: str, salt: str = "") -> int:
    # sha256 rather than random.shuffle: identical on every machine and Python version, and per-id so that
    # the order does not depend on which other examples are present
    key = f"{salt}\x00{seed}\x00{example_id}" if salt else f"{seed}\x00{example_id}"  # unsalted: subsample's order
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


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


def carve_valid_split(records: list[dict[str, Any]], size: float | int = DEFAULT_CARVE,
                      seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train pool, valid): a valid split for a task that has none, carved from its train records.

    ``size`` is a fraction of the records (rounded up, as ``datasets``' ``train_test_split`` does) or a count.
    The choice hashes (seed, id) with a salt of its own, so it is independent of :func:`subsample`'s order;
    training subsets drawn from the pool are disjoint from valid at every fraction. Both keep the input order.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"valid size must be a fraction in (0, 1) or a count, got {size!r}")
    count = math.ceil(round(size * len(records), 9)) if isinstance(size, float) else size  # 0.1 * 30 is 3, not 4
    if isinstance(size, float) and not 0 < size < 1:
        raise ValueError(f"valid fraction must be in (0, 1), got {size}")
    if not 1 <= count < len(records):
        raise ValueError(f"cannot carve {count} valid examples from {len(records)} train examples (keep at least one)")
    chosen = {id(r) for r in sorted(records, key=lambda r: _rank(seed, r["id"], salt="carve-valid"))[:count]}
    return [r for r in records if id(r) not in chosen], [r for r in records if id(r) in chosen]
