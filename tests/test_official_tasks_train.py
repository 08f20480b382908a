"""cqa and svamp train end to end through the CLI from both layouts (the authors' datasets/ and the shared one), with
their teacher outputs and a valid split carved from train (neither task has one)."""

import json
from pathlib import Path

import pytest

from stepdistill.cli import main
from stepdistill.data import load_task_data

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("task, folder, source", [
    ("cqa", "cqa_official", "official"), ("cqa", "cqa_shared", "local"),
    ("svamp", "svamp_official", "official"), ("svamp", "svamp_shared", "local"),
])
def test_cqa_and_svamp_train_from_either_layout(task, folder, source, tmp_path):
    data_dir = FIXTURES / folder
    expected = load_task_data(task, data_dir=data_dir, source=source)
    pool, valid, test = (expected.splits[s] for s in ("train", "valid", "test"))
    main(["train", "--task", task, "--source", source, "--data-dir", str(data_dir), "--model", "tiny",
          "--method", "step-by-step", "--label-source", "teacher", "--max-steps", "2", "--batch-size", "4",
          "--eval-steps", "2", "--output-dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["valid_carved"] == expected.valid_carved == {"from": "train", "size": len(valid), "seed": 0}
    assert (results["count"], results["valid_size"], results["test_size"]) == (len(pool), len(valid), len(test))
    counts = results["examples"]
    assert counts["label_task"] == sum(r["teacher_label"] is not None for r in pool) < len(pool)  # bad labels drop
    assert counts["rationale_task"] == sum(r["teacher_error"] is None for r in pool)
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions_test.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in test]
    if task == "cqa":  # ranked over each question's own five choices
        assert all(p["prediction"] in r["choices"] for p, r in zip(predictions, test))
