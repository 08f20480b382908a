"""Rationale filters for training: drop a teacher rationale from the rationale task when it disagrees with gold, would
be cut short, or is too short or too long. The example stays in the label task.

Filters (``TrainConfig.rationale_filter``, combinable, applied in this order of the list):
  ``gold-agree``     the teacher's label must agree with the gold label (the task's rule, e.g. equations by value);
  ``no-truncation``  the rationale must fit ``max_target_length`` as a student target (tokens + the end token);
  ``min-length:N``   at least N target tokens;  ``max-length:N``  at most N target tokens.
"""

from __future__ import annotations

from typing import Any

from .tasks import Task

FILTERS = ("gold-agree", "no-truncation", "min-length", "max-length")
_WITH_N = ("min-length", "max-length")


def parse_filters(specs: list[str] | tuple[str, ...]) -> list[tuple[str, int | None]]:
    """(name, N) per filter; a ValueError naming the option and the bad value otherwise."""
    parsed = []
    for spec in specs:
        name, _, value = str(spec).partition(":")
        if name not in FILTERS or (name in _WITH_N) != bool(value):
            raise ValueError(f"rationale_filter: {spec!r} is not one of gold-agree, no-truncation, min-length:N, "
                             "max-length:N")
        number = None
        if name in _WITH_N:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"rationale_filter: {spec!r}: N must be a whole number of tokens >= 1")
            number = int(value)
        parsed.append((name, number))
    return parsed


def target_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Student target length of each text: its tokens without special tokens, plus the end token (as the trainer's
    ``encode_targets`` builds targets, before any cut)."""
    if not texts:
        return []
    return [len(ids) + 1 for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def filter_rationales(task: Task, examples: list[dict[str, Any]], records: list[dict[str, Any]],
                      specs: list[str] | tuple[str, ...], tokenizer, max_target_length: int
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Copies of the selected training ``examples`` (trainer's ``select_examples``) with ``rationale`` set to None
    where a filter removes it, and the counts: per filter, the rationales it removed (that no earlier filter had)."""
    filters = parse_filters(specs)
    by_id = {str(record["id"]): record for record in records}
    with_rationale = [i for i, example in enumerate(examples) if example["rationale"] is not None]
    lengths = dict(zip(with_rationale, target_lengths(tokenizer, [examples[i]["rationale"] for i in with_rationale])))
    removed = {spec: 0 for spec in specs}
    out = [dict(example) for example in examples]
    for i in with_rationale:
        record = by_id[str(examples[i]["id"])]
        for spec, (name, number) in zip(specs, filters):
            if name == "gold-agree":
                teacher = record.get("teacher_label")
                drop = teacher is None or not task.is_correct(teacher, record["label"], record.get("fields"))
            elif name == "no-truncation":
                drop = lengths[i] > max_target_length
            elif name == "min-length":
                drop = lengths[i] < number
            else:
                drop = lengths[i] > number
            if drop:
                removed[spec] += 1
                out[i]["rationale"] = None
                break
    kept = sum(example["rationale"] is not None for example in out)
    return out, {"filters": list(specs), "removed": removed, "given": len(with_rationale), "kept": kept}
