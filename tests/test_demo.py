"""`stepdistill demo`: the seeded counting problems, their replayed teacher outputs, the rationale check, the
interval, and a miniature end-to-end run over two seeds."""

import json
import random
import re
import statistics

import pytest

from stepdistill.demo import (KIND_OF, KINDS, ArithDemo, check_rationale, demo, demo_records, make_dataset, make_problem,
                              mean_interval, teacher_output)
from stepdistill.tasks import get_task


def test_problems_are_seeded_distinct_and_the_rationale_is_the_missing_step():
    a = make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a == make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a != make_dataset({"train": 50, "valid": 10}, seed=4)
    questions = [p["question"] for split in a.values() for p in split]
    assert len(set(questions)) == 60  # no problem repeats across splits
    for problem in a["train"]:
        things = re.findall(r"\ban? ([a-z]+)", problem["question"].split(". How many")[0])
        kind = re.search(r"How many ([a-z]+)s are in", problem["question"])[1]
        assert len(things) == 4 and kind in KINDS
        # the intermediate values (each thing's kind) are in the rationale, not in the label
        steps = ", ".join(f"{t} is {'an' if KIND_OF[t][0] in 'aeiou' else 'a'} {KIND_OF[t]}" for t in things)
        assert problem["rationale"] == f"{steps}; {kind}s: {problem['answer']}"
        assert int(problem["answer"]) == sum(KIND_OF[t] == kind for t in things)
        assert check_rationale(problem["rationale"], problem["question"]) == "correct"


def test_teacher_output_parses_back():
    problem = make_problem(random.Random(0))
    assert set(problem) == {"question", "rationale", "answer"} and problem["question"].endswith("?")
    rationale = "pear is a fruit, saw is a tool, dog is an animal, plum is a fruit; fruits: 2"
    text = teacher_output({"rationale": rationale, "answer": "2"})
    assert text == f"{rationale}. So the answer is 2."
    parsed = get_task("arith-demo").parse_teacher(text)
    assert (parsed.rationale, parsed.label, parsed.error) == (rationale, "2", None)
    assert get_task("arith-demo").parse_teacher("pear is a fruit").error == "no_answer"
    assert ArithDemo().is_correct("2.0", "2") and not ArithDemo().is_correct("3", "2")


def test_check_rationale_sorts_what_a_student_writes():
    question = "Anne's bag holds a pear, a saw, a dog and a plum. How many fruits are in Anne's bag?"
    gold = "pear is a fruit, saw is a tool, dog is an animal, plum is a fruit; fruits: 2"
    assert check_rationale(gold, question) == "correct"
    assert check_rationale(gold.replace("saw is a tool", "saw is a fruit"), question) == "wrong_facts"
    assert check_rationale(gold.replace("dog", "cat"), question) == "wrong_facts"  # not the bag's things
    assert check_rationale(gold.replace("fruits: 2", "fruits: 3"), question) == "wrong_count"
    assert check_rationale(gold.replace("fruits: 2", "tools: 1"), question) == "wrong_count"  # another kind counted
    for garbage in ("1 + 1 - 1 = 1111111111111111111", "", None, "pear is a fruit, saw is"):
        assert check_rationale(garbage, question) == "malformed"


def test_mean_interval_is_the_student_t_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_interval([0.5, 0.5]) == (0.5, 0.0)
    assert mean_interval([0.4]) == (0.4, None)


def test_demo_records_come_through_the_replay_teacher(tmp_path):
    splits = demo_records(tmp_path, {"train": 12, "valid": 3, "test": 3}, seed=1)
    assert (tmp_path / "teacher" / "arith-demo" / "palm_train.jsonl").exists()
    cache = [json.loads(line) for line in (tmp_path / "rationales_train.jsonl").read_text().splitlines()]
    assert len(cache) == 12 and all(row["status"] == "ok" for row in cache)
    for record in splits["train"]:
        assert record["teacher_error"] is None and record["teacher_label"] == record["label"]
        assert record["rationale"].endswith(f"s: {record['label']}")
    assert all(record["rationale"] is None for record in splits["valid"])  # only train needs rationales


def test_miniature_demo_over_two_seeds(tmp_path, capsys):
    summary = demo(output_dir=str(tmp_path), seeds=[0, 1], train_size=48, valid_size=8, test_size=8, max_steps=4,
                   eval_steps=2, batch_size=8, workers=2)
    printed = capsys.readouterr().out
    results = summary["results"]
    assert [r["seed"] for r in results["standard fine-tuning"]] == [0, 1]
    assert [r["seed"] for r in results["distilling step-by-step"]] == [0, 1]
    for runs in results.values():
        for r in runs:
            assert r["steps"] == 4 and r["test_count"] == 8 and 0.0 <= r["test_accuracy"] <= 1.0
            assert r["final_losses"]["loss"] > 0
        mean, half = mean_interval([100 * r["test_accuracy"] for r in runs])
        assert f"{mean:.1f} ± {half:.1f}" in printed  # the table prints what was measured
    sbs = results["distilling step-by-step"]
    assert all(r["examples"]["rationale_task"] == 48 and "rationale_loss" in r["final_losses"] for r in sbs)
    assert all(r["examples"]["rationale_task"] == 0 for r in results["standard fine-tuning"])
    assert f"{statistics.fmean(r['final_losses']['rationale_loss'] for r in sbs):.3f}" in printed
    counts = summary["rationales"]
    assert counts["total"] == 16 and counts["well_formed"] == counts["total"] - counts.get("malformed", 0)
    assert f"({counts['total']} over 2 seeds): {counts['well_formed']} well-formed" in printed
    if counts.get("correct", 0) + counts.get("wrong_count", 0) == 0:  # 4 steps: no true rationale yet, and the
        # demo says so instead of printing what the students wrote
        assert "cannot write rationales yet" in printed and "    rationale: " not in printed
    assert "step-by-step minus standard (paired by seed)" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo_summary.json").read_text())["seconds"] == summary["seconds"]


def test_only_rationales_with_true_facts_are_shown(tmp_path, capsys):
    from stepdistill.demo import _rationales

    problems = make_dataset({"test": 3}, seed=5)["test"]
    test = [{"input": p["question"], "label": p["answer"], "fields": {"question": p["question"]}} for p in problems]
    written = [problems[0]["rationale"], "1 + 1 - 1 = 1111111111111111111",
               problems[2]["rationale"].rsplit(": ", 1)[0] + ": 9"]
    run = tmp_path / "step-by-step" / "seed-0"
    run.mkdir(parents=True)
    run.joinpath("predictions_test.jsonl").write_text("".join(
        json.dumps({"prediction": "1", "rationale": r}) + "\n" for r in written))
    counts = _rationales(tmp_path, [0], test)
    printed = capsys.readouterr().out
    assert counts == {"total": 3, "well_formed": 2, "correct": 1, "malformed": 1, "wrong_count": 1}
    assert f"    rationale: {written[0]} (correct)" in printed and f"    rationale: {written[2]} (wrong count)" in printed
    assert "1111" not in printed and "cannot write" not in printed
