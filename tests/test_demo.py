"""`stepdistill demo`: the synthetic arithmetic data, its replayed teacher outputs, and a miniature end-to-end run."""

import json
import random

from stepdistill.arith import evaluate_arithmetic
from stepdistill.demo import ArithDemo, demo, demo_records, make_dataset, make_problem, teacher_output
from stepdistill.tasks import get_task


def test_problems_are_seeded_distinct_and_consistent():
    a = make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a == make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a != make_dataset({"train": 50, "valid": 10}, seed=4)
    questions = [p["question"] for split in a.values() for p in split]
    assert len(set(questions)) == 60  # no problem repeats across splits
    for problem in a["train"]:
        equation, _, result = problem["rationale"].rpartition(" = ")
        assert evaluate_arithmetic(equation) == float(result) == float(problem["answer"]) >= 0


def test_example_from_the_issue_shape():
    problem = make_problem(random.Random(0))
    assert set(problem) == {"question", "rationale", "answer"}
    assert problem["question"].endswith("?")
    text = teacher_output({"rationale": "4 - 2 - 1 = 1", "answer": "1"})
    assert text == "4 - 2 - 1 = 1. So the answer is 1."
    parsed = get_task("arith-demo").parse_teacher(text)
    assert (parsed.rationale, parsed.label, parsed.error) == ("4 - 2 - 1 = 1", "1", None)
    assert get_task("arith-demo").parse_teacher("4 - 2 - 1 = 1").error == "no_answer"
    assert ArithDemo().is_correct("1.0", "1") and not ArithDemo().is_correct("2", "1")


def test_demo_records_come_through_the_replay_teacher(tmp_path):
    splits = demo_records(tmp_path, {"train": 12, "valid": 3, "test": 3}, seed=1)
    assert (tmp_path / "teacher" / "arith-demo" / "palm_train.jsonl").exists()
    cache = [json.loads(line) for line in (tmp_path / "rationales_train.jsonl").read_text().splitlines()]
    assert len(cache) == 12 and all(row["status"] == "ok" for row in cache)
    for record in splits["train"]:
        assert record["teacher_error"] is None and record["teacher_label"] == record["label"]
        assert record["rationale"].endswith(f"= {record['label']}")
    assert all(record["rationale"] is None for record in splits["valid"])  # only train needs rationales


def test_miniature_demo_end_to_end(tmp_path, capsys):
    summary = demo(output_dir=str(tmp_path), train_size=48, valid_size=8, test_size=8, max_steps=4, eval_steps=2,
                   batch_size=8, learning_rate=2e-3)
    printed = capsys.readouterr().out
    assert "standard fine-tuning" in printed and "distilling step-by-step" in printed and "test acc" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    results = summary["results"]
    assert results["standard fine-tuning"]["method"] == "standard"
    assert results["distilling step-by-step"]["examples"]["rationale_task"] == 48
    assert results["standard fine-tuning"]["examples"]["rationale_task"] == 0
    for r in results.values():
        assert r["steps"] == 4 and r["test_count"] == 8 and 0.0 <= r["test_accuracy"] <= 1.0
        # the printed table carries the measured numbers
        assert f"{100 * r['test_accuracy']:.1f}%" in printed
    assert json.loads((tmp_path / "demo_summary.json").read_text())["seconds"] == summary["seconds"]
