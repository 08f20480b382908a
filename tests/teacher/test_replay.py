"""Replay of released teacher outputs: both folder layouts, and the paper's agreement figures over ../shared/data."""

import gzip
import json

import pytest
from teacher_helpers import nli_examples

from stepdistill.data import load_task_data
from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.teachers import GenerationParams, ReplayTeacher, make_teacher


def _output(i, label):
    return f"Reason number {i}.\nAnswer: {label}\n\nPremise: echo"


def test_official_layout_chunks_in_index_order(tmp_path):
    llm = tmp_path / "datasets" / "esnli" / "llm"
    llm.mkdir(parents=True)
    labels = ["entailment", "neutral", "contradiction", "entailment", "neutral"]
    # chunk 10 sorts before 2 as text: the order must be numeric
    chunks = {0: [0, 1], 1: [2], 2: [3]} | {i: [] for i in range(3, 10)} | {10: [4]}
    for index, members in chunks.items():
        (llm / f"test_CoT_{index}.json").write_text(json.dumps([_output(i, labels[i]) for i in members]))
    teacher = make_teacher(f"replay:{tmp_path / 'datasets'}", "esnli", "test")
    assert isinstance(teacher, ReplayTeacher) and len(teacher.outputs) == 5
    examples = nli_examples(6)
    result = RationaleGenerator("esnli", teacher, tmp_path / "c.jsonl", progress=False).run(examples)
    assert [r["rationale"] for r in result.records[:5]] == [f"Reason number {i}." for i in range(5)]
    assert [r["label"] for r in result.records[:5]] == labels
    assert (result.records[5]["status"], result.records[5]["error"]) == ("failed", "missing_output")
    assert result.records[0]["prompt_hash"] == "released" and result.records[0]["params"] == {"split": "test"}
    assert result.summary.agree == 2  # examples 0 and 3 have gold "entailment"


def test_shared_data_layout_by_id_and_errors(tmp_path):
    folder = tmp_path / "data" / "anli1"
    folder.mkdir(parents=True)
    with gzip.open(folder / "palm_valid.jsonl.gz", "wt") as handle:
        for i in (7, 3):
            handle.write(json.dumps({"id": i, "output": f"Because {i}. So the answer is neutral.\n\nPremise: x"}) + "\n")
    teacher = ReplayTeacher(tmp_path / "data", "anli1", "valid")
    examples = [{"id": 3, "premise": "p", "hypothesis": "h", "label": "neutral"},
                {"id": 7, "premise": "p", "hypothesis": "h", "label": "entailment"}]
    result = RationaleGenerator("anli1", teacher, tmp_path / "c.jsonl", progress=False).run(examples)
    assert [(r["id"], r["rationale"], r["label"]) for r in result.records] == [("3", "Because 3.", "neutral"),
                                                                              ("7", "Because 7.", "neutral")]
    assert result.summary.agreement == 0.5
    with pytest.raises(ValueError, match="no teacher outputs for task 'anli1' split 'test'"):
        ReplayTeacher(tmp_path / "data", "anli1", "test")
    with pytest.raises(ValueError, match="replay folder not found"):
        ReplayTeacher(tmp_path / "nope", "anli1", "test")
    with pytest.raises(ValueError, match="self-consistency needs n = 1"):
        RationaleGenerator("anli1", teacher, tmp_path / "d.jsonl", params=GenerationParams(n=2, temperature=1.0))
    with pytest.raises(ValueError, match="expected openai:MODEL, openai-batch:MODEL, hf:PATH(,| or) replay:DIR"):
        make_teacher("gpt-4o", "anli1")


@pytest.mark.shared_data
@pytest.mark.parametrize("task,agree,examples,failures", [
    ("esnli", 7171, 9824, {"unknown_label": 1}),
    ("anli1", 656, 1000, {"no_answer": 10}),
])
def test_replay_reproduces_paper_teacher_agreement(shared_data_dir, tmp_path, task, agree, examples, failures):
    data = load_task_data(task, data_dir=shared_data_dir, splits=["test"])
    teacher = ReplayTeacher(shared_data_dir, task, "test")
    generator = RationaleGenerator(task, teacher, tmp_path / "replay.jsonl", progress=False)
    result = generator.run(data.splits["test"])
    summary = result.summary
    assert (summary.examples, summary.agree, dict(summary.parse_failures)) == (examples, agree, failures)
    assert round(summary.agreement * 100, 1) == {"esnli": 73.0, "anli1": 65.6}[task]
    # the same parse as the data layer, record by record
    for record, example in zip(result.records, data.splits["test"]):
        assert (record["id"], record["rationale"], record["label"]) == (example["id"], example["rationale"], example["teacher_label"])
    rerun = generator.run(data.splits["test"])
    assert rerun.summary.cached == examples and rerun.summary.agree == agree


def test_official_cqa_chunks_are_keyed_by_the_examples_string_ids(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "fixtures" / "cqa_official"
    records = load_task_data("cqa", data_dir=folder, source="official", splits=["test"]).splits["test"]
    teacher = make_teacher(f"replay:{folder}", "cqa", "test")
    assert teacher.outputs == {r["id"]: r["teacher_output"] for r in records}
    assert not any(key.isdigit() for key in teacher.outputs)  # cos_e ids, not positions
    result = RationaleGenerator("cqa", teacher, tmp_path / "c.jsonl", progress=False).run(records)
    assert [r["rationale"] for r in result.records] == [r["rationale"] for r in records]
    assert not any(r.get("error") == "missing_output" for r in result.records)
