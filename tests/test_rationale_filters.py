"""Rationale filters: a tiny T5 trained for one step with each filter; removal counts against counts made here."""

from __future__ import annotations

import json

import pytest

from stepdistill.rationale_filters import parse_filters
from stepdistill.student.config import TrainConfig
from stepdistill.tasks import SpecTask

WORDS = ["red", "blue", "green", "warm", "cold", "sky", "fire", "sea", "sun", "ice", "leaf", "rose"]
MAX_TARGET = 8


def task():
    return SpecTask({"name": "colors", "input_template": "the color is {text}", "labels": ["warm", "cold"]})


def records():
    """24 examples: rationales of 1-12 words; the teacher disagrees with gold on every fourth; two have none."""
    out = []
    for i in range(24):
        gold = "warm" if i % 2 else "cold"
        teacher = gold if i % 4 else ("cold" if gold == "warm" else "warm")
        rationale = " ".join(WORDS[: i % 12 + 1]) if i not in (5, 17) else None
        out.append({"id": str(i), "input": f"the color is {WORDS[i % 12]} {i}", "label": gold, "choices": ["warm", "cold"],
                    "teacher_output": "x", "rationale": rationale, "teacher_label": teacher if rationale else None,
                    "teacher_error": None if rationale else "no_answer", "fields": {"text": WORDS[i % 12]}})
    return out


def expected_removed(filters, train, tokenizer):
    """Counted here: the first filter (in list order) that rejects a rationale gets it."""
    removed = dict.fromkeys(filters, 0)
    for record in train:
        if record["rationale"] is None:
            continue
        length = len(tokenizer(record["rationale"], add_special_tokens=False)["input_ids"]) + 1
        for spec in filters:
            name, _, n = spec.partition(":")
            if ((name == "gold-agree" and record["teacher_label"] != record["label"])
                    or (name == "no-truncation" and length > MAX_TARGET)
                    or (name == "min-length" and length < int(n)) or (name == "max-length" and length > int(n))):
                removed[spec] += 1
                break
    return removed


@pytest.mark.parametrize("filters", [["gold-agree"], ["no-truncation"], ["min-length:5"], ["max-length:6"],
                                     ["gold-agree", "no-truncation", "min-length:4"]])
def test_training_with_each_filter_counts_what_it_removed(tmp_path, filters):
    from transformers import AutoTokenizer

    from stepdistill.student.trainer import run_training

    train = records()
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=1, batch_size=4, eval_steps=1,
                         eval_batch_size=8, max_input_length=16, max_target_length=MAX_TARGET,
                         rationale_filter=filters, tiny_overrides={"num_layers": 1, "num_decoder_layers": 1})
    results = run_training(task(), train, train[:4], train[:4], config, tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "model"))
    removed = expected_removed(filters, train, tokenizer)
    counts = results["examples"]["rationale_filter"]
    assert counts == {"filters": filters, "removed": removed, "given": 22, "kept": 22 - sum(removed.values())}
    assert all(n > 0 for n in removed.values()), removed  # each filter really removes something here
    assert results["examples"]["label_task"] == 24  # a filtered example stays in the label task
    assert results["examples"]["rationale_task"] == 22 - sum(removed.values())
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["examples"]["rationale_filter"] == counts
    if filters == ["gold-agree"]:
        assert removed == {"gold-agree": 6}  # ids 0, 4, 8, 12, 16, 20 (5 and 17 have no rationale)


def test_bad_filters_are_refused_by_name():
    assert parse_filters(["gold-agree", "max-length:12"]) == [("gold-agree", None), ("max-length", 12)]
    for bad, message in [("gold", "'gold' is not one of"), ("min-length", "'min-length' is not one of"),
                         ("no-truncation:3", "'no-truncation:3' is not one of"),
                         ("max-length:0", "'max-length:0': N must be a whole"),
                         ("max-length:x", "'max-length:x': N must be a whole")]:
        with pytest.raises(ValueError, match=f"rationale_filter: {message}"):
            TrainConfig(rationale_filter=[bad])
