import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stepdistill.data import DataError, load_task_data, subsample

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows, gz=False):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


NLI_ROWS = [
    {"id": 0, "premise": "A dog runs.", "hypothesis": "An animal moves.", "label": "entailment"},
    {"id": 1, "premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": "neutral"},
    {"id": 2, "premise": "A dog runs.", "hypothesis": "The dog sits still.", "label": "contradiction"},
]
NLI_TEACHER = [
    {"id": 0, "output": "A dog is an animal.\nAnswer: entailment\n\nPremise: A dog"},
    {"id": 1, "output": "No cat is mentioned.\nAnswer: maybe\n\nPremise: A dog"},
    {"id": 2, "output": "Running is not sitting."},
]


def make_local(tmp_path, rows=NLI_ROWS, teacher=NLI_TEACHER, split="test", gz=True):
    folder = tmp_path / "esnli"
    folder.mkdir(exist_ok=True)
    suffix = ".jsonl.gz" if gz else ".jsonl"
    write_jsonl(folder / f"{split}{suffix}", rows, gz)
    write_jsonl(folder / f"palm_{split}{suffix}", teacher, gz)
    return tmp_path


# -- the paper's data (../shared/data; CI has it) --------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("task, sizes, test_agreement", [
    ("esnli", {"train": 14_949, "valid": 9_842, "test": 9_824}, 0.730),
    ("anli1", {"train": 1_000, "valid": 1_000, "test": 1_000}, 0.656),
])
def test_data_command_on_the_papers_data(shared_data_dir, task, sizes, test_agreement):
    # the README's command, run as a user runs it
    result = subprocess.run([sys.executable, "-m", "stepdistill.cli", "data", "--task", task, "--data-dir",
                             str(shared_data_dir), "--json", "true"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)["splits"]
    assert {split: report[split]["examples"] for split in sizes} == sizes
    assert report["test"]["teacher_label_agreement"] == pytest.approx(test_agreement, abs=0.0005)
    assert sum(report["test"]["teacher_failures"].values()) == {"esnli": 1, "anli1": 10}[task]


@pytest.mark.shared_data
def test_shared_train_counts_outputs_without_local_examples(shared_data_dir):
    data = load_task_data("anli1", data_dir=shared_data_dir, splits=["train"])
    report = data.report["train"]
    assert report.teacher_without_example == 16_946 - 1_000
    assert dict(report.teacher_failures) == {"no_answer": 6, "unknown_label": 1}
    first = data.splits["train"][0]
    assert first["id"] == "0" and first["teacher_label"] == "entailment" and first["label"] == "entailment"
    assert first["rationale"] == "The premise mentions that the system has 4 urban routes."


# -- records and failures --------------------------------------------------------------------------------------

def test_local_records_keep_and_mark_unusable_teacher_outputs(tmp_path):
    data = load_task_data("esnli", data_dir=make_local(tmp_path))
    records = data.splits["test"]
    assert [r["teacher_error"] for r in records] == [None, "unknown_label", "no_answer"]
    assert records[0]["input"] == "premise: A dog runs. hypothesis: An animal moves."
    assert (records[0]["rationale"], records[0]["teacher_label"]) == ("A dog is an animal.", "entailment")
    # an invalid teacher label is never a label; its text stays for reports
    assert (records[1]["rationale"], records[1]["teacher_label"], records[1]["teacher_raw_label"]) == (
        "No cat is mentioned.", None, "maybe")
    assert records[2]["teacher_raw_label"] is None
    report = data.report["test"]
    assert (report.examples, report.teacher_ok, report.teacher_agree, report.teacher_agree_exact) == (3, 1, 1, 1)
    assert dict(report.teacher_failures) == {"unknown_label": 1, "no_answer": 1}


def test_example_without_teacher_output_is_marked_missing(tmp_path):
    data = load_task_data("esnli", data_dir=make_local(tmp_path, teacher=NLI_TEACHER[:2]))
    assert data.splits["test"][2]["teacher_error"] == "missing"
    assert data.report["test"].teacher_failures["missing"] == 1


@pytest.mark.parametrize("case, message", [
    ("malformed", r"test.jsonl: line 2: malformed JSON"),
    ("missing_field", r"test.jsonl: line 2: missing field 'hypothesis'"),
    ("unknown_label", r"test.jsonl: line 3: field 'label': unknown label 'maybe' \(expected one of: entailment, neutral, contradiction\)"),
    ("teacher_id", r"palm_test.jsonl: line 3: field 'id': teacher output id 600000 matches no example of split 'test'"),
    ("not_gzip", r"test.jsonl.gz: not a gzip file"),
    ("empty", r"test.jsonl: split 'test' has no examples"),
])
def test_bad_input_names_file_line_and_field(tmp_path, case, message):
    rows = [dict(row) for row in NLI_ROWS]
    teacher = [dict(row) for row in NLI_TEACHER]
    gz = False
    if case == "missing_field":
        del rows[1]["hypothesis"]
    elif case == "unknown_label":
        rows[2]["label"] = "maybe"
    elif case == "teacher_id":
        teacher[2]["id"] = 600_000  # beyond the full e-SNLI split
    elif case == "empty":
        rows = []
    root = make_local(tmp_path, rows, teacher, gz=gz)
    if case == "malformed":
        path = root / "esnli" / "test.jsonl"
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], '{"id": 1, "premise": ', lines[2]]) + "\n")
    elif case == "not_gzip":
        (root / "esnli" / "test.jsonl").rename(root / "esnli" / "test.jsonl.gz")
    with pytest.raises(DataError, match=message):
        load_task_data("esnli", data_dir=root)


def test_requested_split_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="no 'train' split for task 'esnli'"):
        load_task_data("esnli", data_dir=make_local(tmp_path), splits=["train"])


# -- other sources ---------------------------------------------------------------------------------------------

def test_official_layout_joins_chunks_by_position(tmp_path):
    folder = tmp_path / "esnli"
    (folder / "llm").mkdir(parents=True)
    # the official files: JSON Lines written by datasets.to_json, integer labels, no id
    write_jsonl(folder / "esnli_train.json", [{"premise": r["premise"], "hypothesis": r["hypothesis"],
                                              "label": i, "explanation_1": ""} for i, r in enumerate(NLI_ROWS)])
    (folder / "llm" / "train_CoT_0.json").write_text(json.dumps([NLI_TEACHER[0]["output"], "x\nAnswer: neutral"]))
    (folder / "llm" / "train_CoT_1.json").write_text(json.dumps(["Sitting is not running.\nAnswer: contradiction"]))
    data = load_task_data("esnli", data_dir=tmp_path, source="official", splits=["train"])
    records = data.splits["train"]
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert [r["label"] for r in records] == ["entailment", "neutral", "contradiction"]
    assert [r["teacher_label"] for r in records] == ["entailment", "neutral", "contradiction"]
    assert records[2]["rationale"] == "Sitting is not running."


def test_hub_source_through_load_dataset(tmp_path):
    import datasets

    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    rows = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "label": i} for i, r in enumerate(NLI_ROWS)]
    hub_copy = tmp_path / "hub_esnli"
    (hub_copy / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(hub_copy / "data" / "test-00000-of-00001.parquet"))
    (tmp_path / "palm").mkdir()
    teacher_dir = make_local(tmp_path / "palm") / "esnli"
    data = load_task_data("esnli", source="hub", splits=["test"], hub_name=str(hub_copy), teacher_dir=str(teacher_dir))
    records = data.splits["test"]
    assert [r["label"] for r in records] == ["entailment", "neutral", "contradiction"]
    assert [r["teacher_error"] for r in records] == [None, "unknown_label", "no_answer"]


def test_user_task_from_bundled_spec_and_jsonl():
    data = load_task_data(str(REPO_ROOT / "data" / "sentiment_task.json"), source="jsonl", carve_valid=None,
                          files={"train": str(REPO_ROOT / "data" / "sentiment_train.jsonl")}, teacher_field="teacher")
    records = data.splits["train"]
    assert len(records) == 12 and records[0]["id"] == "s0" and data.valid_carved is None
    assert records[0]["input"] == "review: The soup was hot and the staff remembered my name."
    assert records[0]["rationale"] == "Remembering a guest's name and serving hot food are signs of good service."
    assert records[5]["teacher_error"] == "no_answer"
    assert dict(data.report["train"].labels) == {"positive": 6, "negative": 6}


def test_user_csv_with_renamed_fields(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,gold\nA dog runs.,An animal moves.,entailment\nA dog runs.,A cat.,sideways\n")
    fields = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold"}
    with pytest.raises(DataError, match=r"pairs.csv: line 3: field 'label': unknown label 'sideways'"):
        load_task_data("esnli", source="csv", files={"train": str(path)}, fields=fields)


# -- subsampling -----------------------------------------------------------------------------------------------

RECORDS = [{"id": str(i), "label": "ab"[i % 2] if i < 900 else "c"} for i in range(1000)]


def ids(records):
    return {r["id"] for r in records}


@pytest.mark.parametrize("stratify", [False, True])
def test_subsets_are_nested_for_one_data_seed(stratify):
    sizes = [ids(subsample(RECORDS, fraction=f, seed=3, stratify=stratify)) for f in (0.01, 0.05, 0.25, 1.0)]
    assert [len(s) for s in sizes] == [10, 50, 250, 1000]
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]
    other_seed = ids(subsample(RECORDS, fraction=0.25, seed=4, stratify=stratify))
    assert other_seed != sizes[2]


def test_subsets_are_deterministic_across_runs_and_machines():
    # fixed values: the order comes from sha256(seed, id), not from Python's random state
    assert [r["id"] for r in subsample(RECORDS, count=5, seed=0)] == ["148", "505", "560", "574", "998"]
    assert [r["id"] for r in subsample(list(reversed(RECORDS)), count=5, seed=0)] == ["998", "574", "560", "505", "148"]


def test_fraction_of_the_full_split_and_stratification():
    subset = subsample(RECORDS, fraction=0.1, seed=0, full_size=2000)  # 10% of a 2,000 split = 200 of our 1,000
    assert len(subset) == 200
    stratified = Counter(r["label"] for r in subsample(RECORDS, count=100, seed=0, stratify=True))
    assert stratified == {"a": 45, "b": 45, "c": 10}
    with pytest.raises(ValueError, match="subset of 2000 examples asked for, but 1000 are available"):
        subsample(RECORDS, count=2000)
