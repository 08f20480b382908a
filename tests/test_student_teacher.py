"""`generate --teacher student:RUN_DIR` (issue 24): a trained student (full fine-tuning and LoRA) as the teacher,
its records' label_logprobs equal to its own rank scores log-softmaxed, with resume; the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli_helpers import error_line

from stepdistill.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
TASK = str(DATA / "sentiment_task.json")
FILES = json.dumps({"train": str(DATA / "sentiment_train.jsonl")})
DATA_OPTIONS = ["--task", TASK, "--source", "jsonl", "--files", FILES, "--teacher-field", "teacher"]


@pytest.fixture(scope="module", params=["full", "lora"])
def student_run(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(f"student-teacher-{request.param}") / "run"
    extra = ["--lora-r", "8", "--learning-rate", "3e-2"] if request.param == "lora" else ["--learning-rate", "3e-3"]
    main(["train", *DATA_OPTIONS, "--model", "tiny", "--method", "step-by-step", "--max-steps", "40",
          "--eval-steps", "40", "--batch-size", "4", "--max-target-length", "24",
          "--tiny-overrides", "{num_layers: 1, num_decoder_layers: 1}", *extra, "--output-dir", str(run_dir)])
    return run_dir


def _log_softmax(scores: dict[str, float]) -> dict[str, float]:
    total = math.log(sum(math.exp(value) for value in scores.values()))
    return {label: value - total for label, value in scores.items()}


def test_student_teacher_writes_its_rationales_and_rank_scores(student_run, tmp_path, capsys):
    from stepdistill.student.predict import load_trained_student, predict

    out = tmp_path / "soft.jsonl"
    args = ["generate", "--task", TASK, "--source", "jsonl", "--files", FILES, "--teacher", f"student:{student_run}",
            "--out", str(out), "--progress", "false", "--device", "cpu"]
    main(args)
    printed = capsys.readouterr().out
    assert "12 examples: 0 from the cache, 12 generated" in printed
    records = {record["id"]: record for record in map(json.loads, out.read_text().splitlines())}
    student = load_trained_student(student_run, device="cpu")
    fields = [json.loads(line) for line in (DATA / "sentiment_train.jsonl").read_text().splitlines()]
    own = {example["id"]: row for example, row in zip(fields, predict(student, fields, rationales=True))}
    assert sorted(records) == sorted(own)
    for example_id, record in records.items():
        row = own[example_id]
        assert record["teacher"] == "student" and record["model"] == "run"
        assert record["label_logprobs_source"] == "scores" and record["label_logprob_rest"] is None
        assert record["label_logprobs"] == pytest.approx(_log_softmax(row["scores"]), abs=1e-5)
        assert sorted(record["label_logprobs"]) == ["negative", "positive"]
        assert record["raw_output"] == f"{row['rationale'].strip()} So the answer is {row['prediction']}."
        if record["status"] == "ok":  # the task's parser read the student's answer back
            assert record["label"] == row["prediction"] == max(record["label_logprobs"],
                                                               key=record["label_logprobs"].get)
            assert record["rationale"] == row["rationale"].strip()
    assert sum(record["status"] == "ok" for record in records.values()) >= 6, printed
    # resume: nothing asked again, the same fields read back (with or without --label-logprobs: they are free)
    main(args + ["--label-logprobs", "true"])
    assert "12 examples: 12 from the cache, 0 generated" in capsys.readouterr().out
    again = {record["id"]: record for record in map(json.loads, out.read_text().splitlines())}
    assert len(again) == 12 and again == records


def test_student_teacher_refusals(student_run, tmp_path, capsys):
    base = ["generate", "--source", "jsonl", "--out", str(tmp_path / "o.jsonl"), "--progress", "false"]
    line = error_line(capsys, base + ["--task", TASK, "--files", FILES, "--teacher", f"student:{tmp_path / 'nope'}"])
    assert line == f"error: student teacher: no such run folder or export: {tmp_path / 'nope'}"
    nli = tmp_path / "nli.jsonl"
    nli.write_text(json.dumps({"id": 0, "premise": "A dog runs.", "hypothesis": "An animal moves.",
                               "label": "entailment"}) + "\n")
    line = error_line(capsys, base + ["--task", "esnli", "--files", json.dumps({"train": str(nli)}),
                                      "--teacher", f"student:{student_run}"])
    assert line == f"error: student teacher {student_run}: trained on task 'sentiment', not 'esnli'"
    line = error_line(capsys, base + ["--task", TASK, "--files", FILES, "--teacher", f"student:{student_run}",
                                      "--n", "3", "--temperature", "1"])
    assert line == "error: student teacher: it answers once per example (greedy); --n K needs a sampling teacher"


def test_an_export_teaches_as_its_run_does(student_run, tmp_path, capsys):
    from stepdistill.serving.export import export_student

    # LoRA runs are merged into plain weights by export: the same scores up to float rounding
    exported = export_student(student_run, tmp_path / "export")
    records = {}
    for name, teacher in (("run", student_run), ("export", exported)):
        out = tmp_path / f"{name}.jsonl"
        main(["generate", "--task", TASK, "--source", "jsonl", "--files", FILES, "--teacher", f"student:{teacher}",
              "--out", str(out), "--progress", "false", "--device", "cpu", "--limit", "4"])
        records[name] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()
    for run_record, export_record in zip(records["run"], records["export"]):
        assert export_record["model"] == "export" and export_record["raw_output"] == run_record["raw_output"]
        assert export_record["label_logprobs"] == pytest.approx(run_record["label_logprobs"], abs=1e-4)


def test_teacher_and_student_do_not_import_each_other():
    import ast

    root = Path(__file__).resolve().parents[1] / "stepdistill"
    for layer, other in (("teacher", "student"), ("student", "teacher")):
        for path in (root / layer).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    relative = getattr(node, "level", 0)
                    absolute = name if not relative else ("stepdistill." if relative == 2 else f"stepdistill.{layer}.") + name
                    assert not absolute.startswith(f"stepdistill.{other}"), f"{path.name} imports {absolute}"
