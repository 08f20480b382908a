"""Which training examples go to which task, and their token ids (through the student family's interface).

  - label task: every example with a label from the chosen source (gold: all; teacher: those whose teacher output
    gave a valid label, the rest are dropped and counted as ``dropped_no_teacher_label``);
  - rationale task: only examples whose teacher output parsed completely (``teacher_error`` is None). Examples
    without a usable rationale stay in the label task and leave the rationale task (``no_rationale`` by reason).

With a self-consistency cache (``generate --n K``) and ``rationale_samples`` other than ``one``, an example's
rationale task gets one row per kept sample (:func:`sampled_rationales`): the first row carries the label target,
the others the rationale alone, so the label task still counts each example once.

The ablations (``single-task``, ``single-task-label-first``, ``rationale-input``) have one task whose every row
needs a rationale: examples without one are dropped (``dropped_no_rationale`` by reason). Their targets/inputs:

  - single-task: ``task.answer_text(rationale, label)`` (e.g. ``<rationale> So the answer is <label>.``), which
    the task's own teacher parser reads back (checked here for every example);
  - single-task-label-first: ``<label>. <rationale>`` (:func:`label_first_text`);
  - rationale-input: input ``<input> rationale: <rationale>`` (:func:`rationale_input_text`), target the label.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .config import TrainConfig

ABLATIONS = ("single-task", "single-task-label-first", "rationale-input")  # one task, every row with a rationale
TWO_PART_TARGETS = ("single-task", "single-task-label-first")  # targets that hold rationale and label
LABEL_FIRST_SEPARATOR = ". "  # between the label and the rationale in the label-first target
RATIONALE_INPUT_SEPARATOR = " rationale: "  # between the input and the appended rationale


def label_first_text(label: str, rationale: str) -> str:
    return f"{label}{LABEL_FIRST_SEPARATOR}{rationale}"


def label_first_candidate(label: str) -> str:
    """What a candidate label is scored as: the start of the label-first target (scored without an end token)."""
    return label + LABEL_FIRST_SEPARATOR.rstrip()


def label_first_label(text: str) -> str:
    """The label of a generated label-first text: everything before the first separator."""
    return text.split(LABEL_FIRST_SEPARATOR, 1)[0].strip().removesuffix(LABEL_FIRST_SEPARATOR.strip())


def rationale_input_text(text: str, rationale: str) -> str:
    return f"{text}{RATIONALE_INPUT_SEPARATOR}{rationale}"


def usable_rationale(record: dict[str, Any]) -> bool:
    return record.get("teacher_error") is None and bool((record.get("rationale") or "").strip())


def missing_rationales(records: list[dict[str, Any]]) -> list[str]:
    """Ids of the records without a usable teacher rationale (the rationale-input method cannot read them)."""
    return [str(record.get("id")) for record in records if not usable_rationale(record)]


def with_student_rationales(records: list[dict[str, Any]], path) -> list[dict[str, Any]]:
    """Copies of ``records`` whose rationale is the student's own, read from the JSONL at ``path`` (rows with
    ``id`` and ``rationale``, e.g. a step-by-step run's predictions_test.jsonl with generate_rationales)."""
    from pathlib import Path

    from ..sources import DataError, read_jsonl

    found: dict[str, str] = {}
    for lineno, row in read_jsonl(Path(path)):
        if not isinstance(row.get("rationale"), str):
            raise DataError(f"{path}: line {lineno}: field 'rationale': expected a string (generate the run's "
                            "test rationales with generate_rationales)")
        found[str(row.get("id"))] = row["rationale"]
    missing = [str(record["id"]) for record in records if str(record["id"]) not in found]
    if missing:
        raise DataError(f"{path}: no rationale for {len(missing)} of {len(records)} test examples "
                        f"(first: id {missing[0]})")
    return [{**record, "rationale": found[str(record["id"])], "teacher_error": None} for record in records]


def evaluation_rationales(config: TrainConfig, valid: list[dict[str, Any]], test: list[dict[str, Any]] | None
                          ) -> tuple[dict[str, int], list[dict[str, Any]] | None]:
    """rationale-input: per split, how many examples lack a teacher rationale (an error unless
    ``missing_rationale="bare"``), and the test records carrying the student's own rationales (None: not asked)."""
    if config.method != "rationale-input":
        return {}, None
    bare = {}
    for split, records in (("valid", valid), ("test", test or [])):
        missing = missing_rationales(records)
        bare[split] = len(missing)
        if missing and config.missing_rationale == "error":
            raise ValueError(f"method rationale-input: {len(missing)} of {len(records)} {split} examples have "
                             f"no usable teacher rationale (first: id {missing[0]}); run the teacher on the "
                             f"{split} split, or read them bare with --student.missing_rationale bare")
    own = with_student_rationales(test, config.student_rationales) if config.student_rationales and test else None
    return bare, own


def sampled_rationales(record: dict[str, Any], task, which: str, label: str) -> tuple[list[str], Counter]:
    """The rationales of ``record``'s teacher samples that ``which`` keeps ("all" that parsed, "vote-agree",
    "gold-agree"), in sample order, and why the others were dropped (parser reason, disagrees_with_vote/gold)."""
    outputs = record["teacher_outputs"]
    finish = record.get("teacher_finish_reasons") or [None] * len(outputs)
    fields = record.get("fields")
    kept, dropped = [], Counter()
    for text, reason in zip(outputs, finish):
        parsed = task.parse_teacher(text, fields)
        if not parsed.ok or reason == "length" or not (parsed.rationale or "").strip():
            dropped["truncated" if reason == "length" else parsed.error or "empty_rationale"] += 1
        elif which == "vote-agree" and not task.is_correct(parsed.label, record["teacher_label"], fields):
            dropped["disagrees_with_vote"] += 1
        elif which == "gold-agree" and not task.is_correct(parsed.label, record["label"], fields):
            dropped["disagrees_with_gold"] += 1
        else:
            kept.append(parsed.rationale.strip())
    return kept, dropped


def _ablation_example(record: dict[str, Any], label: str, config: TrainConfig, task) -> dict[str, Any]:
    """The one-task row of an ablation (the record has a usable rationale)."""
    rationale = record["rationale"].strip()
    example = {"id": record["id"], "input": record["input"], "target": label, "rationale": None}
    if config.method == "single-task":
        text = task.answer_text(rationale, label, record.get("fields"))
        parsed = task.parse_teacher(text, record.get("fields")).label
        if parsed is None or not task.is_correct(parsed, label, record.get("fields")):
            raise ValueError(f"task {task.name}: its parser does not read back the single-task target {text!r} "
                             f"of example {record['id']} (define Task.answer_text for this task)")
        example["target"] = text
    elif config.method == "single-task-label-first":
        example["target"] = label_first_text(label, rationale)
    else:
        example["input"] = rationale_input_text(record["input"], rationale)
    return example


def select_examples(records: list[dict[str, Any]], config: TrainConfig, task=None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training examples as (record, target label, rationale or None), plus counts of what went where and why.
    ``task`` is needed by the single-task ablation (its answer format)."""
    if config.method == "single-task" and task is None:
        raise ValueError("the single-task method needs the task (its answer format)")
    samples = config.rationale_samples != "one" and config.method == "step-by-step"
    if samples and task is None:
        raise ValueError("rationale_samples needs the task (its teacher parser)")
    if samples and any(usable_rationale(r) for r in records) and not any(r.get("teacher_outputs") for r in records):
        raise ValueError(f"rationale_samples {config.rationale_samples}: no training example has more than one "
                         "teacher sample; generate the cache with --n K (self-consistency) first")
    chosen, dropped, no_rationale, dropped_rationale = [], Counter(), Counter(), Counter()
    sample_rows, dropped_samples = 0, Counter()
    for record in records:
        label = record["label"] if config.label_source == "gold" else record.get("teacher_label")
        if label is None:
            dropped[record.get("teacher_error") or "missing"] += 1
            continue
        if config.method in ABLATIONS:
            if usable_rationale(record):
                chosen.append(_ablation_example(record, label, config, task))
            else:
                dropped_rationale[record.get("teacher_error") or "empty_rationale"] += 1
            continue
        rationale, more = None, []
        if config.method == "step-by-step":
            if samples and usable_rationale(record) and record.get("teacher_outputs"):
                kept, why = sampled_rationales(record, task, config.rationale_samples, label)
                dropped_samples.update(why)
                rationale, more = (kept[0], kept[1:]) if kept else (None, [])
                sample_rows += len(kept)
                if not kept:
                    no_rationale["no_sample_kept"] += 1
            elif usable_rationale(record):
                rationale = record["rationale"].strip()
                sample_rows += 1
            else:
                no_rationale[record.get("teacher_error") or "empty_rationale"] += 1
        chosen.append({"id": record["id"], "input": record["input"], "target": label, "rationale": rationale})
        # further samples: rationale rows without a label target (the label task counts the example once)
        chosen += [{"id": record["id"], "input": record["input"], "target": None, "rationale": extra} for extra in more]
    if not chosen:
        raise ValueError(f"no training example has a {config.label_source} label"
                         + (" and a usable rationale" if config.method in ABLATIONS else ""))
    counts = {
        "given": len(records),
        "label_task": sum(example["target"] is not None for example in chosen),
        "rationale_task": sum(example["rationale"] is not None and example["target"] is not None
                              for example in chosen),
        "dropped_no_teacher_label": dict(dropped),
        "no_rationale": dict(no_rationale),
    }
    if config.method in ABLATIONS:
        counts["dropped_no_rationale"] = dict(dropped_rationale)
    if samples:  # rationale rows over all kept samples, and the samples dropped by reason
        counts["rationale_samples"] = {"which": config.rationale_samples, "rows": sample_rows,
                                       "dropped": dict(dropped_samples)}
    return chosen, counts


def tokenize_examples(examples: list[dict[str, Any]], tokenizer, config: TrainConfig, family=None):
    """A `datasets.Dataset` of token ids for both tasks (rationale columns empty when an example has none).
    ``family``: the student's :mod:`.families` interface (default: seq2seq)."""
    from datasets import Dataset

    from .families import Seq2SeqFamily

    family = family or Seq2SeqFamily()
    # a shared encoder reads the bare input for both tasks (the prefixes go to the decoder, in the loss), and the
    # label task's input row is the rationale task's too: its rationale prompts are left empty
    shared = config.shared_encoder
    label_prefix = "" if shared else config.label_prefix
    with_rationale = [i for i, example in enumerate(examples) if example["rationale"] is not None]
    rationale_inputs, rationale_targets = family.training_rows(
        tokenizer, ["" if shared else config.rationale_prefix + examples[i]["input"] for i in with_rationale],
        [examples[i]["rationale"] for i in with_rationale], config.max_input_length, config.max_target_length)
    if shared:
        rationale_inputs = [[] for _ in rationale_inputs]
    rationale_input_ids: list[list[int]] = [[] for _ in examples]
    rationale_labels: list[list[int]] = [[] for _ in examples]
    for i, inp, tgt in zip(with_rationale, rationale_inputs, rationale_targets):
        rationale_input_ids[i], rationale_labels[i] = inp, tgt
    # a target holding rationale and label (single-task ablations) gets the rationale's length plus the label's, as
    # at generation: cut to the rationale's length alone, it would lose the label
    target_length = config.max_target_length + (config.label_max_new_tokens if config.method in TWO_PART_TARGETS else 0)
    input_ids, labels = family.training_rows(
        tokenizer, [label_prefix + example["input"] for example in examples],
        [example["target"] or "" for example in examples], config.max_input_length, target_length)
    for i, example in enumerate(examples):
        if example["target"] is None:  # a further sampled rationale's row: no label target
            labels[i] = [-100] * len(labels[i]) if family.labels_follow_inputs else []
    return Dataset.from_dict({
        "example_index": list(range(len(examples))),
        "input_ids": input_ids,
        "labels": labels,
        "rationale_input_ids": rationale_input_ids,
        "rationale_labels": rationale_labels,
        # work per example, for length grouping: both inputs and both targets
        "length": [len(a) + len(b) + len(c) + len(d) for a, b, c, d in
                   zip(input_ids, labels, rationale_input_ids, rationale_labels)],
    })
