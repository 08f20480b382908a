"""Which training examples go to which task, and their token ids (through the student family's interface).

  - label task: every example with a label from the chosen source (gold: all; teacher: those whose teacher output
    gave a valid label, the rest are dropped and counted as ``dropped_no_teacher_label``);
  - rationale task: only examples whose teacher output parsed completely (``teacher_error`` is None). Examples
    without a usable rationale stay in the label task and leave the rationale task (``no_rationale`` by reason).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .config import TrainConfig


def usable_rationale(record: dict[str, Any]) -> bool:
    return record.get("teacher_error") is None and bool((record.get("rationale") or "").strip())


def select_examples(records: list[dict[str, Any]], config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training examples as (record, target label, rationale or None), plus counts of what went where and why."""
    chosen, dropped, no_rationale = [], Counter(), Counter()
    for record in records:
        label = record["label"] if config.label_source == "gold" else record.get("teacher_label")
        if label is None:
            dropped[record.get("teacher_error") or "missing"] += 1
            continue
        rationale = None
        if config.method == "step-by-step":
            if usable_rationale(record):
                rationale = record["rationale"].strip()
            else:
                no_rationale[record.get("teacher_error") or "empty_rationale"] += 1
        chosen.append({"id": record["id"], "input": record["input"], "target": label, "rationale": rationale})
    if not chosen:
        raise ValueError(f"no training example has a {config.label_source} label")
    counts = {
        "given": len(records),
        "label_task": len(chosen),
        "rationale_task": sum(example["rationale"] is not None for example in chosen),
        "dropped_no_teacher_label": dict(dropped),
        "no_rationale": dict(no_rationale),
    }
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
    input_ids, labels = family.training_rows(
        tokenizer, [label_prefix + example["input"] for example in examples],
        [example["target"] for example in examples], config.max_input_length, config.max_target_length)
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
