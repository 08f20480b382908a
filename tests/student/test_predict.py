"""Inference from a saved student: the Python function and `stepdistill predict`."""

import json
import subprocess
import sys

import pytest

from stepdistill.student.predict import load_trained_student, predict

from student_toy import TOY_SPEC, toy_task


def test_predict_function_labels_and_rationales(trained_toy):
    run_dir, _ = trained_toy
    student = load_trained_student(run_dir, task=toy_task())  # the run folder or its model/ subfolder
    rows = predict(student, [{"text": "crimson"}, "the color is teal"], rationales=True)
    assert [row["prediction"] for row in rows] == ["warm", "cold"]
    assert rows[0]["input"] == "the color is crimson"
    assert rows[1]["rationale"].endswith("is a cold color")
    assert set(rows[0]["scores"]) == {"warm", "cold"}
    with pytest.raises(ValueError, match="missing field"):
        predict(student, [{"colour": "red"}])


def test_run_folder_rebuilds_an_unregistered_spec_task(trained_toy):
    run_dir, _ = trained_toy
    student = load_trained_student(run_dir)  # no task given: the saved task reference rebuilds the JSON spec task
    assert student.task.name == "toy-colors" and student.task.labels == tuple(TOY_SPEC["labels"])
    assert predict(student, [{"text": "scarlet"}])[0]["prediction"] == "warm"


def test_predict_command(trained_toy, tmp_path):
    run_dir, _ = trained_toy
    spec = tmp_path / "toy.json"
    spec.write_text(json.dumps(TOY_SPEC))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"text": "scarlet"}\n{"input": "the color is azure"}\n')
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "stepdistill.cli", "predict", "--model_dir", str(run_dir / "model"),
                           "--task", str(spec), "--input_file", str(inputs), "--output_file", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prediction"] for row in rows] == ["warm", "cold"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "red"}\n{not json\n')
    done = subprocess.run([sys.executable, "-m", "stepdistill.cli", "predict", "--model_dir", str(run_dir),
                           "--task", str(spec), "--input_file", str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"{bad}: line 2: malformed JSON" in done.stderr
