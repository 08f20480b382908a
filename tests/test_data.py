import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stepdistill.data import DataError, carve_valid_split, load_task_data, subsample

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
    assert (report.examples, report.teacher_ok, report.teacher_agree, report.teacher_agree_authors) == (3, 1, 1, 1)
    assert dict(report.teacher_failures) == {"unknown_label": 1, "no_answer": 1}


def test_teacher_lines_for_examples_not_held_locally_are_counted_unparsed(tmp_path):
    """Only the lines of local examples are parsed: a broken line for another example of the full split is counted
    (it cannot reach training), a broken line for a local example is still an error, and a line whose id is not
    first is parsed whole."""
    root = make_local(tmp_path, gz=False)
    palm = root / "esnli" / "palm_test.jsonl"
    lines = palm.read_text().splitlines()
    palm.write_text("\n".join([lines[0], '{"id": 7, "output": "cut sh', '{"output": "x", "id": 8}', *lines[1:],
                               '{ "id" : 9 }']) + "\n")
    data = load_task_data("esnli", data_dir=root)
    assert [r["teacher_error"] for r in data.splits["test"]] == [None, "unknown_label", "no_answer"]
    assert data.report["test"].teacher_without_example == 3  # ids 7, 8, 9
    palm.write_text("\n".join([lines[0], '{"id": 1, "output": "cut sh', lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"palm_test.jsonl: line 2: malformed JSON"):
        load_task_data("esnli", data_dir=root)
    palm.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"palm_test.jsonl: line 4: field 'id': duplicate teacher output id 1"):
        load_task_data("esnli", data_dir=root)


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


def test_user_file_teacher_field_that_matches_no_column(tmp_path):
    jsonl_path, csv_path = tmp_path / "train.jsonl", tmp_path / "train.csv"
    write_jsonl(jsonl_path, [dict(row, teacher="Because.\nAnswer: neutral") for row in NLI_ROWS])
    csv_path.write_text("premise,hypothesis,label,teacher\nA dog runs.,An animal moves.,entailment,x\n")
    with pytest.raises(DataError, match=r"train.jsonl: teacher field 'output' matches no column \(columns: hypothesis, "
                                        r"id, label, premise, teacher\)"):
        load_task_data("esnli", source="jsonl", files={"train": str(jsonl_path)}, teacher_field="output")
    with pytest.raises(DataError, match=r"train.csv: teacher field 'teacher_text' matches no column"):
        load_task_data("esnli", source="csv", files={"train": str(csv_path)}, teacher_field="teacher_text")
    found = load_task_data("esnli", source="jsonl", files={"train": str(jsonl_path)}, teacher_field="teacher",
                           carve_valid=None)
    assert [r["teacher_label"] for r in found.splits["train"]] == ["neutral"] * 3


def truncate_gzip(path: Path, rows):
    """A real gzip stream of ``rows``, cut short before its end-of-stream marker."""
    data = gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode())
    path.write_bytes(data[: len(data) - 30])


@pytest.mark.parametrize("which", ["examples", "teacher", "csv"])
def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, which):
    rows = [{"id": i, "premise": f"A dog runs {i}.", "hypothesis": "An animal moves.", "label": "entailment"} for i in range(200)]
    teacher = [{"id": i, "output": f"Dogs are animals {i}.\nAnswer: entailment"} for i in range(200)]
    root = make_local(tmp_path, rows, teacher)
    if which == "examples":
        target = root / "esnli" / "test.jsonl.gz"
        truncate_gzip(target, rows)
    elif which == "teacher":
        target = root / "esnli" / "palm_test.jsonl.gz"
        truncate_gzip(target, teacher)
    if which == "csv":
        target = tmp_path / "train.csv.gz"
        text = "premise,hypothesis,label\n" + "".join(f"A dog runs {i}.,An animal moves.,entailment\n" for i in range(200))
        data = gzip.compress(text.encode())
        target.write_bytes(data[: len(data) - 30])
        call = lambda: load_task_data("esnli", source="csv", files={"train": str(target)})  # noqa: E731
    else:
        call = lambda: load_task_data("esnli", data_dir=root)  # noqa: E731
    with pytest.raises(DataError, match=rf"{target}: truncated gzip stream \(the file is incomplete\)"):
        call()


def test_replay_reader_sees_a_truncated_teacher_file_too(tmp_path):
    from stepdistill.data import _teacher_from_dir

    truncate_gzip(tmp_path / "palm_test.jsonl.gz", [{"id": i, "output": "x\nAnswer: neutral"} for i in range(200)])
    with pytest.raises(DataError, match="palm_test.jsonl.gz: truncated gzip stream"):
        _teacher_from_dir(tmp_path, "test")


def test_an_invalid_teacher_label_is_never_a_training_target(tmp_path):
    from stepdistill.student.trainer import TrainConfig, select_examples

    folder = tmp_path / "anli1"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [dict(row) for row in NLI_ROWS])
    write_jsonl(folder / "palm_train.jsonl", [
        {"id": 0, "output": "An animal moves when a dog runs. So the answer is entailment.\n\nPremise: x"},
        {"id": 1, "output": "Nothing is said about a cat. So the answer is maybe.\n\nPremise: x"},
        {"id": 2, "output": "A running dog does not sit. So the answer is contradiction."},
    ])
    records = load_task_data("anli1", data_dir=tmp_path, splits=["train"]).splits["train"]
    assert (records[1]["teacher_label"], records[1]["teacher_raw_label"], records[1]["teacher_error"]) == (
        None, "maybe", "unknown_label")
    for method in ("standard", "step-by-step"):
        chosen, counts = select_examples(records, TrainConfig(method=method, label_source="teacher"))
        assert [(e["id"], e["target"]) for e in chosen] == [("0", "entailment"), ("2", "contradiction")]
        assert counts["dropped_no_teacher_label"] == {"unknown_label": 1} and counts["label_task"] == 2
    chosen, counts = select_examples(records, TrainConfig(method="standard", label_source="gold"))
    assert [e["target"] for e in chosen] == ["entailment", "neutral", "contradiction"]


# -- CQA and SVAMP: the authors' released layout and ours (our own made-up fixtures) ---------------------------

def cqa_id(question):
    import hashlib

    return hashlib.md5(question.encode()).hexdigest()  # how the fixtures made their cos_e-like string ids


CQA_EXPECTED = {
    "train": {
        "teacher_error": [None, None, None, None, None, None, None, None, "unknown_label", None, "no_answer", None],
        "teacher_label": ["river", "shoes", "sink", "open a lock", "telescope", "cockpit", "hungry", "toy box", None,
                          "oven", None, "chalk"],
        "report": {"examples": 12, "teacher_ok": 10, "teacher_failures": {"unknown_label": 1, "no_answer": 1},
                   "teacher_label_agreement": 0.75, "teacher_label_agreement_authors": 0.666667,
                   "authors_rule": "exact text", "teacher_without_example": 0},
    },
    "test": {
        "teacher_error": [None, None, None, None, None, "unknown_label"],
        "teacher_label": ["market", "nests", "umbrella", "kitchen", "camera", None],
        "report": {"examples": 6, "teacher_ok": 5, "teacher_failures": {"unknown_label": 1},
                   "teacher_label_agreement": 0.666667, "teacher_label_agreement_authors": 0.666667,
                   "teacher_without_example": 0},
    },
}


@pytest.mark.parametrize("layout, source", [("official", "official"), ("shared", "local")])
def test_cqa_in_both_layouts(layout, source):
    data = load_task_data("cqa", data_dir=FIXTURES / f"cqa_{layout}", source=source, carve_valid=None)
    assert list(data.splits) == ["train", "test"] and data.valid_carved is None
    for split, expected in CQA_EXPECTED.items():
        records = data.splits[split]
        assert [r["teacher_error"] for r in records] == expected["teacher_error"]
        assert [r["teacher_label"] for r in records] == expected["teacher_label"]
        assert all(r["id"] == cqa_id(r["fields"]["question"]) for r in records)  # cos_e's ids, outputs by position
        report = data.report[split].as_dict()
        assert {key: report[key] for key in expected["report"]} == expected["report"]
        assert sum(report["labels"].values()) == len(records)
    train = data.splits["train"]
    question = "Where would you find water flowing between two banks?"
    fields = {"id": cqa_id(question), "question": question, "choices": ["desert", "river", "attic", "oven", "wallet"],
              "answer": "river"}
    if layout == "official":
        fields.update(abstractive_explanation="", extractive_explanation="")
    assert train[0] == {
        "id": cqa_id(question),
        "input": f"{question}\nAnswer Choices:\n(a) desert\n(b) river\n(c) attic\n(d) oven\n(e) wallet",
        "label": "river",
        "choices": ["desert", "river", "attic", "oven", "wallet"],
        "teacher_output": "Water flows between two banks in a river. So the answer is (b) river.\n\nQ: What do you use to cut paper?",
        "rationale": "Water flows between two banks in a river.",
        "teacher_label": "river",
        "teacher_raw_label": "river",
        "teacher_error": None,
        "fields": fields,
    }
    # right answer, spelt otherwise: agrees after normalisation, not by the authors' exact rule
    assert (train[5]["label"], train[5]["teacher_label"], train[5]["teacher_raw_label"]) == ("cockpit", "cockpit", "Cockpit")
    assert (train[8]["rationale"], train[8]["teacher_raw_label"]) == ("Rain is water falling from clouds.", "lake")
    assert (train[10]["rationale"], train[10]["teacher_raw_label"]) == (
        "Fish breathe through gills, and the best place is hard to say.", None)


SVAMP_EXPECTED = {
    "train": {
        "teacher_error": [None, None, None, None, None, None, "unknown_label", None, "no_answer", None, None, None],
        "teacher_raw_label": ["( 8.0 - 5.0 )", "(12.0 + 7.0)", "( 6.0 * 4.0 )", "( 20.0 / 5.0 )", "( 15.0 - 9.0 )",
                              "( 3.0 + 4.0 )", "(thirty minus eighteen)", "( 9.0 * 8.0 )", None, "( 40.0 - 8.0 )",
                              "( 25.0 * 3.0 )", "( 36.0 / 9.0 )"],
        # the authors compare equations by value, as our rule does: the same figure
        "report": {"examples": 12, "teacher_ok": 10, "teacher_failures": {"unknown_label": 1, "no_answer": 1},
                   "teacher_label_agreement": 0.75, "teacher_label_agreement_authors": 0.75,
                   "authors_rule": "equation value", "teacher_without_example": 0},
    },
    "test": {
        "teacher_error": [None, None, None, None, None, "no_answer"],
        "teacher_raw_label": ["( 14.0 + 11.0 )", "( 60.0 / 4.0 )", "(27 - 9)", "( 5.0 + 6.0 )", "( 12.0 + 16.0 )", None],
        "report": {"examples": 6, "teacher_ok": 5, "teacher_failures": {"no_answer": 1},
                   "teacher_label_agreement": 0.666667, "teacher_label_agreement_authors": 0.666667,
                   "authors_rule": "equation value", "teacher_without_example": 0},
    },
}


@pytest.mark.parametrize("layout, source", [("official", "official"), ("shared", "local")])
def test_svamp_in_both_layouts(layout, source):
    data = load_task_data("svamp", data_dir=FIXTURES / f"svamp_{layout}", source=source, carve_valid=None)
    assert list(data.splits) == ["train", "test"]
    for split, expected in SVAMP_EXPECTED.items():
        records = data.splits[split]
        first_id = 100 if split == "train" else 500
        # the released files have no ids (positions); SVAMP.json's form keeps its ID
        assert [r["id"] for r in records] == ([str(i) for i in range(len(records))] if layout == "official"
                                              else [f"chal-{first_id + i}" for i in range(len(records))])
        assert [r["teacher_error"] for r in records] == expected["teacher_error"]
        assert [r["teacher_raw_label"] for r in records] == expected["teacher_raw_label"]
        assert [r["teacher_label"] for r in records] == [
            None if error == "unknown_label" else raw for raw, error in zip(expected["teacher_raw_label"], expected["teacher_error"])]
        report = data.report[split].as_dict()
        assert {key: report[key] for key in expected["report"]} == expected["report"]
    fields = {"Body": "Ann has 8 pens. She gives 5 pens to her brother.", "Question": "How many pens does Ann have now?",
              "Equation": "( 8.0 - 5.0 )"}
    fields.update({"id": 0} if layout == "official" else {"ID": "chal-100", "id": "chal-100", "Answer": 3.0, "Type": "Arith"})
    assert data.splits["train"][0] == {
        "id": "0" if layout == "official" else "chal-100",
        "input": "Ann has 8 pens. She gives 5 pens to her brother.\nHow many pens does Ann have now?",
        "label": "( 8.0 - 5.0 )",
        "choices": None,
        "teacher_output": "Ann had 8 pens and gave away 5, so she has 8 - 5 = 3 pens. The answer is ( 8.0 - 5.0 ).\n\nQ: next",
        "rationale": "Ann had 8 pens and gave away 5, so she has 8 - 5 = 3 pens.",
        "teacher_label": "( 8.0 - 5.0 )",
        "teacher_raw_label": "( 8.0 - 5.0 )",
        "teacher_error": None,
        "fields": fields,
    }


def test_official_cqa_and_svamp_have_no_valid_split(tmp_path):
    for task in ("cqa", "svamp"):
        with pytest.raises(DataError, match=f"no 'valid' split for task '{task}' \\(source 'official'\\)"):
            load_task_data(task, data_dir=FIXTURES / f"{task}_official", source="official", splits=["valid"],
                           carve_valid=None)


def test_official_source_rejects_a_teacher_output_beyond_the_examples(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "cqa_official", tmp_path / "cqa_official")
    chunk = tmp_path / "cqa_official" / "cqa" / "llm" / "test_CoT_1.json"
    chunk.write_text(json.dumps(json.loads(chunk.read_text()) + ["x"] * 1_300))  # 1,221 is the full test split
    with pytest.raises(DataError, match=r"test_CoT_1.json: item 1217: field 'id': teacher output id 1221 matches no example"):
        load_task_data("cqa", data_dir=tmp_path / "cqa_official", source="official", splits=["test"])


# -- carving a valid split -------------------------------------------------------------------------------------

def test_load_carves_valid_from_train_where_the_task_has_none(tmp_path):
    full = load_task_data("cqa", data_dir=FIXTURES / "cqa_official", source="official", splits=["train"])
    assert len(full.splits["train"]) == 12 and full.valid_carved is None  # train alone (e.g. for the teacher): whole
    data = load_task_data("cqa", data_dir=FIXTURES / "cqa_official", source="official")
    assert list(data.splits) == ["train", "valid", "test"]
    assert data.valid_carved == {"from": "train", "size": 2, "seed": 0}  # 10%, rounded up
    assert (full.train_full_size, data.train_full_size) == (9_741, 9_739)  # fractions of the pool left after carving
    pool, valid = carve_valid_split(full.splits["train"], 0.1, seed=0)
    assert [r["id"] for r in data.splits["valid"]] == [r["id"] for r in valid]
    assert [r["id"] for r in data.splits["train"]] == [r["id"] for r in pool]
    assert data.report["train"].examples + data.report["valid"].examples == 12
    assert (data.report["train"].teacher_ok + data.report["valid"].teacher_ok,
            data.report["train"].teacher_agree + data.report["valid"].teacher_agree) == (10, 9)
    only_valid = load_task_data("cqa", data_dir=FIXTURES / "cqa_official", source="official", splits=["valid"],
                                carve_valid=3, carve_seed=1)
    assert list(only_valid.splits) == ["valid"] and only_valid.valid_carved == {"from": "train", "size": 3, "seed": 1}
    for split in ("train", "valid", "test"):
        make_local(tmp_path, split=split, gz=False)
    with pytest.raises(DataError, match=r"task 'cqa' has no valid split to load: cannot carve 12 valid examples from 12"):
        load_task_data("cqa", data_dir=FIXTURES / "cqa_official", source="official", carve_valid=12)
    esnli = load_task_data("esnli", data_dir=tmp_path)  # has its own valid split: nothing carved
    assert esnli.valid_carved is None and [len(esnli.splits[s]) for s in ("train", "valid", "test")] == [3, 3, 3]


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


CARVE_RECORDS = [{"id": f"q{i}", "label": "ab"[i % 2]} for i in range(1000)]
CARVE_IDS = ["q168", "q231", "q284", "q632", "q912"]  # fixed: sha256 of (salt, seed, id), in input order


def test_carved_valid_is_disjoint_from_every_training_subset():
    pool, valid = carve_valid_split(CARVE_RECORDS, 0.1, seed=0)
    assert (len(pool), len(valid)) == (900, 100) and ids(pool) | ids(valid) == ids(CARVE_RECORDS)
    for data_seed in (0, 1, 2):
        for fraction in (0.01, 0.05, 0.1, 0.5, 1.0):
            subset = subsample(pool, fraction=fraction, seed=data_seed)
            assert not ids(subset) & ids(valid)
    # a salt of its own: valid is not subsample's first 100 of the whole split, and overlaps it only by chance
    overlap = len(ids(valid) & ids(subsample(CARVE_RECORDS, count=100, seed=0)))
    assert overlap < 30


def test_carve_is_deterministic_and_sized():
    assert [r["id"] for r in carve_valid_split(CARVE_RECORDS, 5, seed=0)[1]] == CARVE_IDS
    assert [r["id"] for r in carve_valid_split(list(reversed(CARVE_RECORDS)), 5, seed=0)[1]] == list(reversed(CARVE_IDS))
    assert ids(carve_valid_split(CARVE_RECORDS, 5, seed=1)[1]) != set(CARVE_IDS)
    assert len(carve_valid_split(CARVE_RECORDS[:12], 0.1)[1]) == 2  # rounded up, as datasets' train_test_split
    assert len(carve_valid_split(CARVE_RECORDS, 250)[1]) == 250
    assert len(carve_valid_split(CARVE_RECORDS[:30], 0.1)[1]) == 3  # not 4 from 0.1 * 30 = 3.0000000000000004
    for size, message in [(0, "cannot carve 0"), (1000, "cannot carve 1000 valid examples from 1000"),
                          (1.0, "valid fraction must be in \\(0, 1\\)"), ("10%", "a fraction in \\(0, 1\\) or a count")]:
        with pytest.raises(ValueError, match=message):
            carve_valid_split(CARVE_RECORDS, size)


def test_replayed_cqa_rationales_drop_invalid_teacher_labels_too(tmp_path):
    # the generator's path (finalize, attach_rationales) agrees with the data layer on the released-format fixture
    from stepdistill.student.trainer import TrainConfig, select_examples
    from stepdistill.teacher import RationaleGenerator, ReplayTeacher, attach_rationales, load_rationales

    records = load_task_data("cqa", data_dir=FIXTURES / "cqa_shared", splits=["train"]).splits["train"]
    generator = RationaleGenerator("cqa", ReplayTeacher(FIXTURES / "cqa_shared", "cqa", "train"),
                                   tmp_path / "cache.jsonl", progress=False)
    generator.run(records)
    attached = attach_rationales(records, load_rationales(tmp_path / "cache.jsonl"))
    assert [r["teacher_label"] for r in attached] == CQA_EXPECTED["train"]["teacher_label"]
    assert [r["teacher_error"] for r in attached] == CQA_EXPECTED["train"]["teacher_error"]
    assert attached[8]["teacher_raw_label"] is None and attached[5]["teacher_raw_label"] == "cockpit"
    _, counts = select_examples(attached, TrainConfig(method="step-by-step", label_source="teacher"))
    assert counts["dropped_no_teacher_label"] == {"unknown_label": 1, "no_answer": 1}
    assert (counts["label_task"], counts["rationale_task"]) == (10, 10)


def test_data_command_prints_the_authors_agreement_where_it_differs(capsys):
    from stepdistill.cli import main

    main(["data", "--task", "cqa", "--data-dir", str(FIXTURES / "cqa_official"), "--source", "official",
          "--carve-valid", "null"])
    train, test = capsys.readouterr().out.split("[test]")
    # "Cockpit" for "cockpit": agrees by our rule (case folded), not by the authors' exact text
    assert "teacher-label agreement with gold: 75.0% (by the authors' rule, exact text: 66.7%)" in train
    assert "teacher-label agreement with gold: 66.7%\n" in test  # the same figure both ways: said once
    main(["data", "--task", "svamp", "--data-dir", str(FIXTURES / "svamp_official"), "--source", "official",
          "--carve-valid", "null", "--json", "true"])
    report = json.loads(capsys.readouterr().out)["splits"]["test"]
    assert (report["teacher_label_agreement"], report["teacher_label_agreement_authors"], report["authors_rule"]) \
        == (0.666667, 0.666667, "equation value")
