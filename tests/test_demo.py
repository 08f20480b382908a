"""`stepdistill demo`: the seeded counting problems, their replayed teacher outputs, the rationale check, the
interval, and a miniature end-to-end run over two seeds."""

import json
import random
import re
import statistics

import pytest

from stepdistill.demo import (KIND_OF, KINDS, KindsDemo, check_rationale, demo, demo_records, kind_counts,
                              make_dataset, make_problem, mean_interval, teacher_output)
from stepdistill.tasks import get_task


def test_problems_are_seeded_distinct_and_the_rationale_is_the_missing_step():
    a = make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a == make_dataset({"train": 50, "valid": 10}, seed=3)
    assert a != make_dataset({"train": 50, "valid": 10}, seed=4)
    questions = [p["question"] for split in a.values() for p in split]
    assert len(set(questions)) == 60  # no problem repeats across splits
    assert len({p["answer"] for p in a["train"]}) == len(KINDS)  # every kind is an answer
    for problem in a["train"]:
        things = problem["question"].removesuffix(": which kind is there most of?").split(", ")
        kinds = sorted(KIND_OF[t] for t in things)
        assert len(set(things)) == 4 and len(set(kinds)) == 3  # two of one kind, one each of two others
        assert kinds.count(problem["answer"]) == 2
        # the intermediate values (how many things of each kind) are in the rationale, not in the label
        counts = [f"{n} {kind}" + ("s" if n > 1 else "") for kind in KINDS if (n := kinds.count(kind))]
        assert problem["rationale"] == ", ".join(counts)
        assert check_rationale(problem["rationale"], problem["question"]) == "correct"


def test_a_problem_reads_as_documented():
    problem = make_problem(random.Random(0))
    assert set(problem) == {"question", "rationale", "answer"} and problem["question"].endswith("?")
    assert kind_counts(["pear", "drum", "hammer", "harp"]) == {"fruit": 1, "tool": 1, "instrument": 2}
    assert make_dataset({"train": 1}, seed=0)["train"][0] == {
        "id": 0, "question": "truck, peach, tram, dress: which kind is there most of?",
        "rationale": "1 fruit, 2 vehicles, 1 garment", "answer": "vehicle"}


def test_teacher_output_parses_back():
    rationale = "1 fruit, 1 tool, 2 instruments"
    text = teacher_output({"rationale": rationale, "answer": "instrument"})
    assert text == f"{rationale}. So the answer is instrument."
    parsed = get_task("kinds-demo").parse_teacher(text)
    assert (parsed.rationale, parsed.label, parsed.error) == (rationale, "instrument", None)
    assert get_task("kinds-demo").parse_teacher("1 fruit").error == "no_answer"
    assert get_task("kinds-demo").parse_teacher("1 fruit. So the answer is spoon.").error == "unknown_label"
    assert KindsDemo.labels == tuple(KINDS)  # ranked over the six kinds, never free text


def test_check_rationale_sorts_what_a_student_writes():
    question = "pear, drum, hammer, harp: which kind is there most of?"
    assert check_rationale("1 fruit, 1 tool, 2 instruments", question) == "correct"
    assert check_rationale("2 instruments, 1 tool, 1 fruit", question) == "correct"  # order is no fact
    assert check_rationale("1 fruit, 2 tools, 1 instrument", question) == "wrong_count"
    assert check_rationale("1 fruit, 1 tool, 1 instrument", question) == "wrong_count"  # a thing left out
    assert check_rationale("1 fruit, 1 tool, 2 instruments, 1 car", question) == "malformed"  # not a kind
    assert check_rationale("1 fruit, 1 fruit, 2 instruments", question) == "malformed"  # a kind twice
    for garbage in ("1 + 1 - 1 = 1111111111111111111", "", None, "1 fruit, 1", "12 fruits"):
        assert check_rationale(garbage, question) == "malformed"
    with pytest.raises(ValueError, match="not a demo problem"):
        check_rationale("1 fruit", "spoon, pear: which kind is there most of?")


def test_mean_interval_is_the_student_t_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_interval([0.5, 0.5]) == (0.5, 0.0)
    assert mean_interval([0.4]) == (0.4, None)


def test_demo_records_come_through_the_replay_teacher(tmp_path):
    splits = demo_records(tmp_path, {"train": 12, "valid": 3, "test": 3}, seed=1)
    assert (tmp_path / "teacher" / "kinds-demo" / "palm_train.jsonl").exists()
    cache = [json.loads(line) for line in (tmp_path / "rationales_train.jsonl").read_text().splitlines()]
    assert len(cache) == 12 and all(row["status"] == "ok" for row in cache)
    for record in splits["train"]:
        assert record["teacher_error"] is None and record["teacher_label"] == record["label"]
        assert f"2 {record['label']}s" in record["rationale"]
    assert all(record["rationale"] is None for record in splits["valid"])  # only train needs rationales


def test_miniature_demo_over_two_seeds(tmp_path, capsys):
    summary = demo(output_dir=str(tmp_path), seeds=[0, 1], train_size=48, valid_size=8, test_size=8, max_steps=4,
                   eval_steps=2, batch_size=8, workers=2)
    printed = capsys.readouterr().out
    assert ("example input:     truck, peach, tram, dress: which kind is there most of?\n"
            "teacher rationale: 1 fruit, 2 vehicles, 1 garment\nlabel:             vehicle\n") in printed
    results = summary["results"]
    assert [r["seed"] for r in results["standard fine-tuning"]] == [0, 1]
    assert [r["seed"] for r in results["distilling step-by-step"]] == [0, 1]
    for runs in results.values():
        for r in runs:
            assert r["steps"] == 4 and r["test_count"] == 8
            assert r["final_losses"]["loss"] > 0
            rows = [json.loads(line) for line in (tmp_path / r["method"] / f"seed-{r['seed']}" /
                                                  "predictions_test.jsonl").read_text().splitlines()]
            assert all(row["prediction"] in KINDS for row in rows)  # ranked over the kinds
            assert r["test_accuracy"] == sum(row["correct"] for row in rows) / 8
        mean, half = mean_interval([100 * r["test_accuracy"] for r in runs])
        assert f"{mean:.1f} ± {half:.1f}" in printed  # the table prints what was measured
    sbs = results["distilling step-by-step"]
    assert all(r["examples"]["rationale_task"] == 48 and "rationale_loss" in r["final_losses"] for r in sbs)
    assert all(r["examples"]["rationale_task"] == 0 for r in results["standard fine-tuning"])
    assert f"{statistics.fmean(r['final_losses']['rationale_loss'] for r in sbs):.3f}" in printed
    counts = summary["rationales"]
    assert counts["total"] == 16 and counts["well_formed"] == counts["total"] - counts.get("malformed", 0)
    assert f"({counts['total']} over 2 seeds): {counts['well_formed']} well-formed" in printed
    if counts["correct"] == 0:  # 4 steps: no true rationale yet, and the demo says so instead of printing any
        assert "cannot write rationales yet" in printed and "    rationale: " not in printed
    else:
        assert printed.count(" (correct); answer ") == min(3, counts["correct"])
    assert "step-by-step minus standard (paired by seed)" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo_summary.json").read_text())["seconds"] == summary["seconds"]


def test_only_correct_rationales_are_shown(tmp_path, capsys):
    from stepdistill.demo import _rationales

    problems = make_dataset({"test": 3}, seed=5)["test"]
    test = [{"input": p["question"], "label": p["answer"], "fields": {"question": p["question"]}} for p in problems]
    wrong = problems[2]["rationale"].replace("2 ", "3 ")
    written = [problems[0]["rationale"], "1 + 1 - 1 = 1111111111111111111", wrong]
    run = tmp_path / "step-by-step" / "seed-0"
    run.mkdir(parents=True)
    run.joinpath("predictions_test.jsonl").write_text("".join(
        json.dumps({"prediction": "fruit", "rationale": r}) + "\n" for r in written))
    counts = _rationales(tmp_path, [0], test)
    printed = capsys.readouterr().out
    assert counts == {"total": 3, "well_formed": 2, "correct": 1, "malformed": 1, "wrong_count": 1}
    assert "(3 over 1 seeds): 2 well-formed: 1 correct (every kind counted right), 1 with a wrong count; 1 malformed" \
        in printed
    assert f"  {problems[0]['question']}\n    rationale: {written[0]} (correct); answer fruit" in printed
    assert wrong not in printed and "1111" not in printed and "cannot write" not in printed
    run.joinpath("predictions_test.jsonl").write_text(json.dumps({"prediction": "fruit", "rationale": wrong}) + "\n")
    _rationales(tmp_path, [0], test)
    assert "cannot write rationales yet" in capsys.readouterr().out


def test_killing_the_demo_kills_its_workers(tmp_path):
    """A demo stopped with SIGTERM (or killed) takes its training workers with it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sweep_workers import alive

    demo_run = subprocess.Popen(
        [sys.executable, "-m", "stepdistill.cli", "demo", "--output-dir", str(tmp_path / "out"), "--workers", "2",
         "--train-size", "48", "--valid-size", "8", "--test-size", "8", "--max-steps", "100000", "--seeds", "[0]"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == demo_run.pid:
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + 180
    logs = [tmp_path / "out" / method / "seed-0" / "train_output.log" for method in ("standard", "step-by-step")]
    while not all(log.exists() for log in logs):  # both workers are training
        assert time.monotonic() < deadline and demo_run.poll() is None, "the demo's workers did not start"
        time.sleep(0.1)
    workers = [pid for pid in children() if pid != demo_run.pid]
    assert len(workers) >= 2
    demo_run.send_signal(signal.SIGTERM)
    demo_run.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "a demo worker outlived the demo"
