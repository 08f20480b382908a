"""The paper's ablations as trainer methods: the rows each builds (decoded back to text), how each is read at test
time, and one tiny end-to-end run per method."""

import json

import pytest

from stepdistill.student.config import TrainConfig
from stepdistill.student.examples import select_examples, tokenize_examples
from stepdistill.tasks import get_task

from student_toy import toy_records, toy_task


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    from stepdistill.student.models import load_student, student_texts

    records = toy_records()
    texts = student_texts(records, "[label] ", "[rationale] ") + ["So the answer is warm.", "rationale: ."]
    _, tokenizer = load_student("tiny", texts, tmp_path_factory.mktemp("tok"))
    return tokenizer


def _decoded(tokenizer, method, records=None):
    config = TrainConfig(model="tiny", method=method)
    examples, counts = select_examples(records or toy_records(without_rationale=(3,)), config, toy_task())
    rows = tokenize_examples(examples, tokenizer, config)
    text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return ([text(r) for r in rows["input_ids"]], [text(r) for r in rows["labels"]],
            [r for r in rows["rationale_labels"]], counts)


def test_single_task_targets_are_rationale_then_label_in_the_answer_format(toy_tokenizer):
    inputs, targets, rationale_rows, counts = _decoded(toy_tokenizer, "single-task")
    assert inputs[0] == "[label] the color is red"
    assert targets[0] == "red is a warm color So the answer is warm."
    assert targets[-1] == "violet is a cold color So the answer is cold."
    assert len(targets) == 15 and "pink" not in " ".join(inputs)  # example 3 (pink) has no rationale: dropped, counted
    assert counts["dropped_no_rationale"] == {"no_answer": 1} and counts["rationale_task"] == 0
    assert all(row == [] for row in rationale_rows)  # one task only
    # the task's own teacher parser reads every target back to its label
    task = toy_task()
    assert [task.parse_teacher(t).label for t in targets] == [t.rsplit(" ", 1)[1][:-1] for t in targets]


def test_label_first_targets_start_with_the_label(toy_tokenizer):
    inputs, targets, rationale_rows, counts = _decoded(toy_tokenizer, "single-task-label-first")
    assert inputs[0] == "[label] the color is red"
    assert targets[0] == "warm. red is a warm color"
    assert targets[-1] == "cold. violet is a cold color"
    assert len(targets) == 15 and all(row == [] for row in rationale_rows)
    # what ranking scores (the candidate "warm." without its end token) is exactly the start of the target's tokens
    from stepdistill.student.examples import label_first_candidate
    from stepdistill.student.families import _target_table

    table = _target_table(toy_tokenizer, [[label_first_candidate("warm"), label_first_candidate("cold")]], end=False)
    examples, _ = select_examples(toy_records(), TrainConfig(method="single-task-label-first"))
    labels = tokenize_examples(examples, toy_tokenizer, TrainConfig(method="single-task-label-first"))["labels"]
    for example, row in zip(examples, labels):
        start = table[label_first_candidate(example["target"].split(".")[0])]
        assert row[:len(start)] == start and len(row) > len(start) + 2


def test_rationale_input_appends_the_teacher_rationale(toy_tokenizer):
    inputs, targets, rationale_rows, counts = _decoded(toy_tokenizer, "rationale-input")
    assert inputs[0] == "[label] the color is red rationale: red is a warm color"
    assert targets[:2] == ["warm", "warm"] and targets[-1] == "cold"
    assert len(inputs) == 15 and counts["dropped_no_rationale"] == {"no_answer": 1}


@pytest.mark.parametrize("task_name,fields,label", [
    ("esnli", {"premise": "p", "hypothesis": "h"}, "neutral"),
    ("anli1", {"premise": "p", "hypothesis": "h"}, "contradiction"),
    ("cqa", {"question": "q", "choices": ["a dog", "a cat", "a bird", "a fish", "a cow"]}, "a bird"),
    ("svamp", {"Body": "b", "Question": "q"}, "( 3.0 + 4.0 )"),
    ("svamp", {"Body": "b", "Question": "q"}, "3.0 + 4.0"),
])
def test_every_builtin_task_parses_its_own_single_task_target(task_name, fields, label):
    task = get_task(task_name)
    parsed = task.parse_teacher(task.answer_text("because of this", label, fields), fields)
    assert parsed.error is None and parsed.rationale == "because of this"
    assert task.is_correct(parsed.label, label, fields)


def test_rationale_input_needs_teacher_rationales_on_valid_and_test(tmp_path):
    from stepdistill.student.trainer import run_training

    records = toy_records()
    with pytest.raises(ValueError, match=r"rationale-input: 2 of 16 test examples have no usable teacher rationale "
                                         r"\(first: id 4\)"):
        run_training(toy_task(), records, records, toy_records(without_rationale=(4, 9)),
                     TrainConfig(model="tiny", method="rationale-input", max_steps=1, batch_size=4, eval_steps=1),
                     tmp_path / "run")
    # or read bare: those examples get their input alone, and results.json counts them
    config = TrainConfig(model="tiny", method="rationale-input", max_steps=2, batch_size=4, eval_steps=1,
                         missing_rationale="bare", max_target_length=8)
    results = run_training(toy_task(), records, records, toy_records(without_rationale=(4, 9)), config,
                           tmp_path / "bare")
    assert results["rationale_input_bare"] == {"valid": 0, "test": 2} and results["test_count"] == 16
    with pytest.raises(ValueError, match="missing_rationale must be 'error' or 'bare'"):
        TrainConfig(missing_rationale="skip")


def test_student_rationales_must_cover_the_test_split(tmp_path):
    from stepdistill.sources import DataError
    from stepdistill.student.examples import with_student_rationales

    path = tmp_path / "own.jsonl"
    path.write_text('{"id": "0", "rationale": "red is a cold color"}\n{"id": "1", "rationale": "x"}\n')
    records = toy_records()
    with pytest.raises(DataError, match=r"own.jsonl: no rationale for 14 of 16 test examples \(first: id 2\)"):
        with_student_rationales(records, path)
    assert [r["rationale"] for r in with_student_rationales(records[:2], path)] == ["red is a cold color", "x"]
    path.write_text('{"id": "0", "prediction": "warm"}\n')
    with pytest.raises(DataError, match="line 1: field 'rationale': expected a string"):
        with_student_rationales(records, path)
    with pytest.raises(ValueError, match="student_rationales applies to method rationale-input"):
        TrainConfig(method="single-task", student_rationales=str(path))


def test_rationale_filter_is_refused_for_ablations():
    with pytest.raises(ValueError, match="rationale_filter applies to step-by-step training, not to method"):
        TrainConfig(method="single-task", rationale_filter=["gold-agree"])


@pytest.mark.parametrize("method", ["single-task", "single-task-label-first", "rationale-input"])
def test_each_ablation_trains_end_to_end_and_writes_an_accuracy(tmp_path, method):
    from stepdistill.student.trainer import run_training

    records = toy_records()
    config = TrainConfig(model="tiny", method=method, max_steps=80, batch_size=8, learning_rate=2e-3, eval_steps=40,
                         logging_steps=10, max_target_length=16, label_max_new_tokens=16)
    if method == "rationale-input":  # test is also scored with "the student's own" rationales: here, the teacher's
        (tmp_path / "own.jsonl").write_text("".join(json.dumps({"id": r["id"], "rationale": r["rationale"]}) + "\n"
                                                    for r in records))
        config.student_rationales = str(tmp_path / "own.jsonl")
    results = run_training(toy_task(), records, records, records, config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    if method == "rationale-input":  # the same inputs: the same predictions
        own = (tmp_path / "run" / "predictions_test_student_rationales.jsonl").read_text()
        assert own == (tmp_path / "run" / "predictions_test.jsonl").read_text()
        assert saved["test_accuracy_student_rationales"] == saved["test_accuracy"]
    assert saved["method"] == method and saved["test_count"] == 16
    assert saved["test_accuracy"] == results["test_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions_test.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(row["correct"] == (row["prediction"] == row["gold"]) for row in rows)
    assert saved["test_accuracy"] == sum(row["correct"] for row in rows) / 16
    # `predict` on the saved student reads it the same way (the method is in its stepdistill.json)
    from stepdistill.student.predict import predict

    item = {"text": "red", **({"rationale": records[0]["rationale"]} if method == "rationale-input" else {})}
    assert predict(tmp_path / "run", [item])[0]["prediction"] == rows[0]["prediction"]
    if method == "single-task":
        # the label comes from the generated text through the task's parser: after 80 steps every output is in
        # the answer format, but the tiny student still copies some colour words wrongly (measured 0.69 on 2 cores)
        task = toy_task()
        assert all(task.parse_teacher(row["output"]).label == row["prediction"] for row in rows)
        assert all(row["output"].endswith(f"So the answer is {row['prediction']}.") for row in rows)
        assert saved["test_accuracy"] > 0.5, saved["test_accuracy"]
    else:  # ranked labels: 80 steps on 16 examples and the tiny student knows them (chance is 0.5)
        assert saved["test_accuracy"] >= 0.9, saved["test_accuracy"]
    if method == "single-task-label-first":
        assert all(set(row["prefix_scores"]) == {"warm", "cold"} for row in rows)


@pytest.mark.parametrize("model_name", ["tiny", "tiny-llama"])
def test_prefix_scores_are_the_candidate_tokens_without_the_end(tmp_path, model_name):
    """end=False scores a candidate as the START of a target: its tokens' log-probabilities, no end token."""
    import torch

    from stepdistill.student.evaluate import rank_scores
    from stepdistill.student.families import _target_table, family_of
    from stepdistill.student.models import load_student, student_texts

    model, tokenizer = load_student(model_name, student_texts(toy_records(), "[label] ", "[rationale] ") + ["warm."],
                                    tmp_path / "student")
    model.eval()
    prompt, candidates = "[label] the color is red", ["warm.", "cold."]
    with_end, without_end = (rank_scores(model, tokenizer, [prompt], [candidates], end=end)[0] for end in (True, False))
    table = _target_table(tokenizer, [candidates], end=False)
    family = family_of(model)
    for candidate, score, ended in zip(candidates, without_end, with_end):
        ids = table[candidate]
        with torch.no_grad():
            if family.name == "seq2seq":
                enc = tokenizer(prompt, return_tensors="pt")
                logits = model(**enc, labels=torch.tensor([ids])).logits[0]
                expected = torch.log_softmax(logits, -1)[range(len(ids)), ids].sum().item()
            else:
                prompt_ids = family.prompt_ids(tokenizer, [prompt], 64)[0]
                logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
                positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(ids) - 1)
                expected = torch.log_softmax(logits, -1)[positions, ids].sum().item()
        assert score == pytest.approx(expected, abs=1e-4)
        assert ended < score  # the end token's log-probability is negative
