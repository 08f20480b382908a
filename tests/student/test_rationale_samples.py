"""Training on every sampled rationale of a self-consistency cache (rationale_samples): which rows are built."""

from __future__ import annotations

import pytest

from stepdistill.rationales import attach_rationales
from stepdistill.student.config import TrainConfig
from stepdistill.student.examples import select_examples, tokenize_examples

from student_toy import toy_records, toy_task

SAMPLES = {
    # red (gold warm): voted warm; one sample parses to cold, one does not parse
    "0": (["red is a warm color. So the answer is warm.", "red is cold. So the answer is cold.", "garbled"], "warm"),
    # orange (gold warm): the vote (cold) disagrees with gold
    "1": (["orange is cold. So the answer is cold.", "orange is cold too. So the answer is cold.",
           "orange is warm. So the answer is warm."], "cold"),
}


def _records():
    records = toy_records()[:4]
    cache = {}
    for record in records:
        outputs, vote = SAMPLES.get(record["id"], ([record["teacher_output"]], record["label"]))
        cache[record["id"]] = {"id": record["id"], "key": record["id"], "status": "ok", "raw_output": outputs[0],
                               "rationale": record["rationale"], "label": vote,
                               **({"outputs": outputs, "finish_reasons": ["stop"] * len(outputs)}
                                  if len(outputs) > 1 else {})}
    bare = [{k: v for k, v in r.items() if not k.startswith("teacher_") and k != "rationale"} for r in records]
    return attach_rationales(bare, cache)


@pytest.mark.parametrize("which, rows, dropped", [
    ("all", [("0", "warm", "red is a warm color."), ("0", None, "red is cold."),
             ("1", "warm", "orange is cold."), ("1", None, "orange is cold too."), ("1", None, "orange is warm.")],
     {"no_answer": 1}),
    ("vote-agree", [("0", "warm", "red is a warm color."), ("1", "warm", "orange is cold."),
                    ("1", None, "orange is cold too.")], {"no_answer": 1, "disagrees_with_vote": 2}),
    ("gold-agree", [("0", "warm", "red is a warm color."), ("1", "warm", "orange is warm.")],
     {"no_answer": 1, "disagrees_with_gold": 3}),
])
def test_each_kept_sample_is_a_rationale_row_and_the_label_counts_once(which, rows, dropped):
    config = TrainConfig(model="tiny", rationale_samples=which)
    examples, counts = select_examples(_records(), config, toy_task())
    built = [(e["id"], e["target"], e["rationale"]) for e in examples]
    # examples 2 and 3 have one output each: their cache rationale, as with "one"
    assert built == rows + [("2", "warm", "yellow is a warm color"), ("3", "warm", "pink is a warm color")]
    assert counts["label_task"] == 4 and counts["rationale_task"] == 4
    assert counts["rationale_samples"] == {"which": which, "rows": len(rows) + 2, "dropped": dropped}


def test_one_keeps_the_cache_rationale_only():
    examples, counts = select_examples(_records(), TrainConfig(model="tiny"), toy_task())
    assert [(e["id"], e["rationale"]) for e in examples] == [
        ("0", "red is a warm color"), ("1", "orange is a warm color"), ("2", "yellow is a warm color"),
        ("3", "pink is a warm color")]
    assert "rationale_samples" not in counts


def test_rows_without_a_label_target_add_no_label_tokens(tmp_path):
    from stepdistill.student.models import load_student, student_texts

    records = _records()
    config = TrainConfig(model="tiny", rationale_samples="all")
    examples, _ = select_examples(records, config, toy_task())
    _, tokenizer = load_student("tiny", student_texts(records, "[label] ", "[rationale] ") + ["red is cold."],
                                tmp_path / "tok")
    rows = tokenize_examples(examples, tokenizer, config)
    assert [len(labels) > 0 for labels in rows["labels"]] == [True, False, True, False, False, True, True]
    assert all(len(r) > 0 for r in rows["rationale_labels"])
    assert tokenizer.decode(rows["rationale_labels"][1], skip_special_tokens=True) == "red is cold."


def test_a_cache_without_samples_is_refused():
    records = toy_records()
    with pytest.raises(ValueError, match="no training example has more than one teacher sample; generate the "
                                         "cache with --n K"):
        select_examples(records, TrainConfig(model="tiny", rationale_samples="all"), toy_task())
    with pytest.raises(ValueError, match="rationale_samples applies to method step-by-step, not to 'standard'"):
        TrainConfig(model="tiny", method="standard", rationale_samples="all")


def test_train_on_every_sample_end_to_end(tmp_path):
    import json

    from stepdistill.student.trainer import run_training

    records = _records()
    config = TrainConfig(model="tiny", rationale_samples="vote-agree", max_steps=4, batch_size=4, eval_steps=4,
                         logging_steps=1, max_target_length=16)
    results = run_training(toy_task(), records, records, records, config, tmp_path / "run")
    assert results["examples"]["rationale_samples"] == {"which": "vote-agree", "rows": 5,
                                                        "dropped": {"no_answer": 1, "disagrees_with_vote": 2}}
    assert results["examples"]["label_task"] == 4 and results["test_count"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row for row in log if "rationale_loss" in row]
    assert len(losses) == 4 and all(row["rationale_loss"] > 0 for row in losses)
    # 5 rows in batches of 4: the step whose one row is a further sample has rationale tokens only
    assert [row["label_loss"] > 0 for row in losses] == [True, False, True, True]


def test_rationale_first_prediction_reads_the_generated_rationale(tmp_path):
    """rationale_first_eval: test is scored again with each label predicted after the student's own rationale,
    appended to the label input; the same rows come out of `predict(..., rationale_first=True)`."""
    import json

    from stepdistill.student.predict import predict
    from stepdistill.student.trainer import run_training

    records = toy_records()
    config = TrainConfig(model="tiny", max_steps=6, batch_size=8, eval_steps=6, max_target_length=12,
                         rationale_first_eval=True, learning_rate=3e-3)
    results = run_training(toy_task(), records, records[:4], records, config, tmp_path / "run")
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "predictions_test_rationale_first.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(isinstance(row["rationale"], str) for row in rows)
    assert results["test_accuracy_rationale_first"] == sum(row["correct"] for row in rows) / 16
    again = predict(tmp_path / "run", [r["fields"] for r in records], rationale_first=True)
    assert [(r["prediction"], r["rationale"]) for r in again] == [(r["prediction"], r["rationale"]) for r in rows]
    plain = predict(tmp_path / "run", [r["fields"] for r in records])
    assert "rationale" not in plain[0] and all(a["scores"] != b["scores"] for a, b in zip(again, plain))
    with pytest.raises(ValueError, match="rationale_first_eval needs method step-by-step"):
        TrainConfig(model="tiny", method="standard", rationale_first_eval=True)
