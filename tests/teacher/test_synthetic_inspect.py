"""`inspect` on a synthetic cache: dropped counts, label balance against train, diversity, lengths and leakage, each
figure checked against a computation done here."""

import json
import re

from teacher_helpers import write_jsonl
from test_synthesize import REPLIES, TEST, _scripted, _teacher, _write_data

from stepdistill.insights.command import inspect_command
from stepdistill.teacher.synthesize import SyntheticGenerator


def test_inspect_reports_on_a_synthetic_cache(serve, tmp_path, capsys):
    files = _write_data(tmp_path)
    server, data, _ = _scripted(serve, files, tmp_path)
    out = tmp_path / "synthetic.jsonl"
    records, _ = SyntheticGenerator("esnli", _teacher(server), out, data.splits, shots=3,
                                    progress=False).synthesize(len(REPLIES))
    accepted = [r for r in records if r["status"] == "ok"]
    # the test split as the report sees it: the original one plus a copy of an accepted example (a leak, e.g. a test
    # split that changed after generation), reworded a little
    leaked = accepted[1]["fields"]
    rows = [{"id": i, "premise": p, "hypothesis": h, "label": l, "teacher": None} for i, (p, h, l) in enumerate(TEST)]
    rows.append({"id": 7, "premise": leaked["premise"].replace("late", "very late"), "hypothesis": leaked["hypothesis"],
                 "label": "contradiction", "teacher": None})
    files = {**files, "test": str(write_jsonl(tmp_path / "test_later.jsonl", rows))}
    capsys.readouterr()
    inspect_command("esnli", cache=str(out), source="jsonl", files=files, tokenizer="whitespace",
                    out_dir=str(tmp_path / "report"))
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "inspect.json").read_text())["synthetic"]
    assert (report["records"], report["accepted"]) == (14, 2)
    assert report["dropped"] == {"invalid_fields": 1, "unknown_label": 1, "unparsable_rationale": 1,
                                 "duplicate_test": 1, "near_duplicate_test": 1, "duplicate_valid": 1,
                                 "near_duplicate_valid": 1, "duplicate_train": 1, "near_duplicate_train": 1,
                                 "duplicate_synthetic": 1, "near_duplicate_synthetic": 1}
    assert report["failed"] == {"http_500": 1}
    balance = report["label_balance"]
    assert {label: (row["synthetic"], row["train"]) for label, row in balance.items()} == {
        "entailment": (1, 4), "neutral": (0, 2), "contradiction": (1, 3)}
    assert balance["entailment"]["difference"] == 1 / 2 - 4 / 9
    words = [re.findall(r"\w+", r["input"].lower()) for r in accepted]
    unigrams = [w for ws in words for w in ws]
    bigrams = [tuple(ws[i:i + 2]) for ws in words for i in range(len(ws) - 1)]
    assert report["diversity"]["distinct_1"] == {"n": 1, "ngrams": len(unigrams), "distinct": len(set(unigrams)),
                                                 "ratio": len(set(unigrams)) / len(unigrams)}
    assert report["diversity"]["distinct_2"]["distinct"] == len(set(bigrams))
    assert report["diversity"]["near_duplicate_pairs"] == 0
    assert report["lengths"]["input_words"]["max"] == max(map(len, words))
    assert report["leakage"]["valid"] == {"examples": 2, "exact": 0, "near": 0, "shown": []}
    assert report["leakage"]["test"] == {"examples": 3, "exact": 0, "near": 1,
                                         "shown": [{"id": "synth-0-1", "kind": "near", "of": "7"}]}
    assert "## Synthetic examples" in printed
    assert "14 synthesis records: 2 accepted; dropped: " in printed
    assert "| entailment | 1 (50.0%) | 4 (44.4%) | +5.6 points |" in printed
    assert "test 0 equal, 1 close (of 3)" in printed and "- `synth-0-1`: near to test example 7" in printed


def test_inspect_without_the_task_data_says_so(serve, tmp_path, capsys):
    files = _write_data(tmp_path)
    server, data, _ = _scripted(serve, files, tmp_path, count=2)
    out = tmp_path / "synthetic.jsonl"
    SyntheticGenerator("esnli", _teacher(server), out, data.splits, shots=3, progress=False).synthesize(2)
    inspect_command("esnli", cache=str(out), data_dir=str(tmp_path / "nowhere"), tokenizer="whitespace",
                    out_dir=str(tmp_path / "report"))
    printed = capsys.readouterr().out
    assert "The task's data was not found" in printed and "2 synthesis records: 2 accepted." in printed
