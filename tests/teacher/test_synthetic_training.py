"""Synthetic examples as training data: `--rationales SYNTH` alone (data-free) and `--synthetic PATH
--synthetic-ratio R` added to the real subset (seeded, nested), with their errors."""

import json
from pathlib import Path

import pytest
from teacher_helpers import API_KEY, write_jsonl
from test_synthesize import _load, _write_data

from stepdistill.data import DataError
from stepdistill.options import DataOptions, SubsetOptions, load_data, train_subset
from stepdistill.teacher.synthesize import SyntheticGenerator
from stepdistill.teacher.teachers import OpenAITeacher


@pytest.fixture
def synthetic(serve, tmp_path):
    """Train/valid/test files and a cache of 10 synthetic slots (the server's default replies, all accepted)."""
    files = _write_data(tmp_path)
    server = serve()
    teacher = OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, timeout=2.0, max_attempts=1)
    out = tmp_path / "synthetic.jsonl"
    records, summary = SyntheticGenerator("esnli", teacher, out, _load(files).splits, shots=3,
                                          progress=False).synthesize(10)
    assert summary.accepted == 10
    return files, out, records


def _options(files):
    return DataOptions(task="esnli", source="jsonl", files=files, teacher_field="teacher", carve_valid=None)


def test_data_free_train_split_is_the_accepted_synthetic_examples(synthetic):
    files, out, records = synthetic
    data = load_data(_options(files), rationales=[str(out)])
    train = data.splits["train"]
    assert [r["id"] for r in train] == [f"synth-0-{i}" for i in range(10)]
    first, cached = train[0], records[0]
    assert first == {"id": "synth-0-0", "input": cached["input"], "label": "neutral", "choices": list(
        ("entailment", "neutral", "contradiction")), "teacher_output": cached["raw_output"],
        "rationale": cached["rationale"], "teacher_label": "neutral", "teacher_raw_label": "neutral",
        "teacher_error": None, "fields": cached["fields"], "synthetic": True}
    assert first["input"].startswith("premise: A ") and " hypothesis: A " in first["input"]
    assert [len(data.splits[s]) for s in ("valid", "test")] == [2, 2]  # valid and test stay real
    assert data.report["train"].teacher_ok == 10 and data.report["train"].labels == {"neutral": 10}


def test_synthetic_ratio_adds_seeded_nested_examples(synthetic):
    files, out, _ = synthetic
    data = load_data(_options(files))
    half = train_subset(data, SubsetOptions(count=4, synthetic=str(out), synthetic_ratio=0.5))
    full = train_subset(data, SubsetOptions(count=4, synthetic=str(out), synthetic_ratio=2.0))
    real = train_subset(data, SubsetOptions(count=4))
    assert half[:4] == real and full[:4] == real
    added_half, added_full = [r["id"] for r in half[4:]], [r["id"] for r in full[4:]]
    assert len(added_half) == 2 and len(added_full) == 8 and set(added_half) <= set(added_full)
    assert all(r["synthetic"] for r in full[4:]) and not any(r.get("synthetic") for r in real)
    other_seed = train_subset(data, SubsetOptions(count=4, data_seed=1, synthetic=str(out), synthetic_ratio=0.5))
    assert [r["id"] for r in other_seed[4:]] != added_half or other_seed[:4] != real
    with pytest.raises(DataError, match=r"option --synthetic-ratio 3: 12 synthetic examples for 4 real ones, but "
                                        r".*synthetic\.jsonl holds 10 accepted ones"):
        train_subset(data, SubsetOptions(count=4, synthetic=str(out), synthetic_ratio=3))
    with pytest.raises(ValueError, match="option --synthetic-ratio: must be positive, got 0"):
        SubsetOptions(synthetic=str(out), synthetic_ratio=0)


def test_wrong_caches_are_one_clear_error(synthetic, tmp_path):
    files, out, _ = synthetic
    rationale_cache = write_jsonl(tmp_path / "rationales.jsonl", [{"id": "0", "key": "k", "status": "ok"}])
    with pytest.raises(DataError, match=r"synthetic\.jsonl hold synthetic examples and the others rationales"):
        load_data(_options(files), rationales=[str(out), str(rationale_cache)])
    with pytest.raises(DataError, match=r"rationales\.jsonl: line 1: not a synthetic example \(option --synthetic"):
        train_subset(load_data(_options(files)), SubsetOptions(synthetic=str(rationale_cache)))
    other_task = tmp_path / "other.jsonl"
    other_task.write_text(out.read_text().replace('"task":"esnli"', '"task":"anli1"'))
    with pytest.raises(DataError, match=r"other\.jsonl: line 1: a synthetic example of task 'anli1', not 'esnli'"):
        load_data(_options(files), rationales=[str(other_task)])


def test_train_data_free_end_to_end_and_data_shows_the_mix(synthetic, tmp_path, capsys):
    from stepdistill.cli import main

    files, out, _ = synthetic
    base = ["train", "--task", "esnli", "--source", "jsonl", "--files", json.dumps(files), "--teacher-field",
            "teacher", "--max-steps", "2", "--eval-steps", "2", "--batch-size", "4"]
    main(base + ["--rationales", str(out), "--output-dir", str(tmp_path / "free")])
    results = json.loads((tmp_path / "free" / "results.json").read_text())
    assert (results["count"], results["synthetic_examples"], results["rationales"]) == (10, 10, str(out))
    assert results["test_size"] == 2 and results["valid_size"] == 2
    capsys.readouterr()
    main(["data", "--task", "esnli", "--source", "jsonl", "--files", json.dumps(files), "--teacher-field", "teacher",
          "--carve-valid", "null", "--count", "6", "--synthetic", str(out), "--synthetic-ratio", "0.5", "--json", "true"])
    report = json.loads(capsys.readouterr().out)["splits"]
    assert report["subsample"] == {"train": 9, "of": 9, "data_seed": 0, "synthetic": 3}
    assert report["train"]["labels"] == {"entailment": 3, "neutral": 4, "contradiction": 2}


def test_curve_sweep_adds_synthetic_examples_to_every_run(synthetic, tmp_path):
    from dataclasses import replace

    from stepdistill.experiments import PRESETS, run_sweep
    from stepdistill.options import choose_synthetic
    from stepdistill.rationales import synthetic_records
    from stepdistill.tasks import get_task

    files, out, _ = synthetic
    data = load_data(_options(files))
    pool = synthetic_records(get_task("esnli"), str(out))
    seen = {}

    def fake_train(task, train, valid, test, config, run_dir, extra=None):
        seen[extra["run_key"]] = ([r["id"] for r in train if not r.get("synthetic")],
                                  [r["id"] for r in train if r.get("synthetic")], extra)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "results.json").write_text(json.dumps({"method": config.method, "seed": config.seed,
                                                                "test_accuracy": 0.5, **extra}))

    preset = replace(PRESETS["smoke"], fractions={"esnli": (1 / 3, 2 / 3)}, seeds=(0,), methods=("step-by-step-gold",))
    run_sweep("esnli", data.splits, preset, tmp_path / "sweep", train_fn=fake_train, echo=lambda _: None,
              full_train_size=9, add_synthetic=lambda real, seed: choose_synthetic(pool, 0.5, real, seed, str(out)))
    (small_real, small_synth, small), (large_real, large_synth, large) = sorted(seen.values(), key=lambda v: len(v[0]))
    assert (len(small_real), len(small_synth), len(large_real), len(large_synth)) == (3, 2, 6, 3)
    assert set(small_synth) <= set(large_synth)  # nested, like the real subsets
    assert (small["count"], small["synthetic_examples"]) == (3, 2)


def test_curve_synthetic_errors_are_one_line(synthetic):
    from stepdistill.cli import main

    files, out, _ = synthetic
    base = ["curve", "--task", "esnli", "--source", "jsonl", "--files", json.dumps(files), "--teacher-field",
            "teacher", "--preset", "smoke", "--synthetic", str(out)]
    with pytest.raises(SystemExit, match="error: option --synthetic-ratio: must be positive, got -1"):
        main(base + ["--synthetic-ratio", "-1"])
