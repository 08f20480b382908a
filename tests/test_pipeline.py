"""The whole path through the CLI: a user's JSONL task and an OpenAI-compatible teacher (`run exp.yaml`), and
training on a `generate` cache against training on the data's own teacher outputs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "teacher"))  # the loopback server lives with the teacher tests

from fake_server import FakeOpenAIServer, Script  # noqa: E402

from stepdistill.cli import main  # noqa: E402
from stepdistill.data import subsample  # noqa: E402

API_KEY = "sk-test-pipeline-1c9e"


def _review(i: int) -> dict:
    good = i % 2 == 0
    return {"uid": f"r{i}", "review": f"{'A wonderful, moving' if good else 'A dull, tedious'} film [ex:r{i}].",
            "label": "positive" if good else "negative"}


def _teacher_answer(marker: str) -> str:
    good = int(marker[1:]) % 2 == 0
    return f"The review calls it {'wonderful' if good else 'dull'}. So the answer is {'positive' if good else 'negative'}"


def _write_user_task(folder: Path) -> dict:
    (folder / "prompt.txt").write_text("# stop: [\"\\nReview:\"]\nReview: {text}\nReasoning:")
    (folder / "sentiment.json").write_text(json.dumps({
        "name": "sentiment-pipeline", "input_template": "review: {text}", "labels": ["positive", "negative"],
        "id_field": "uid", "prompt": "prompt.txt",
        "teacher_pattern": "(?s)^(?P<rationale>.*?)So the answer is (?P<label>\\w+)"}))
    files = {}
    for split, ids in {"train": range(40), "valid": range(100, 108), "test": range(200, 208)}.items():
        files[split] = str(folder / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(_review(i)) + "\n" for i in ids))
    return files


def test_run_experiment_file_asks_the_teacher_only_for_what_the_runs_train_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    files = _write_user_task(tmp_path)
    with FakeOpenAIServer(Script(output_fn=_teacher_answer)) as server:
        experiment = {
            "task": str(tmp_path / "sentiment.json"),
            "data": {"source": "jsonl", "files": files, "fields": {"text": "review"}},
            "teacher": {"spec": "openai:fake-teacher", "options": {"base_url": server.url, "timeout": 5},
                        "concurrency": 4},
            "preset": "smoke",
            "sweep": {"methods": ["standard-finetune", "step-by-step-teacher"], "fractions": [0.5],
                      "seeds": [0, 1], "max_steps": 2, "eval_steps": 1, "valid_size": 8, "test_size": 8},
            "out_dir": str(tmp_path / "report"),
        }
        path = tmp_path / "exp.yaml"
        import yaml

        path.write_text(yaml.safe_dump(experiment))
        main(["run", str(path)])
        printed = capsys.readouterr().out
        # the teacher is asked for the union over the seeds of the largest fraction's subset (20 of 40 each)
        from stepdistill.data import load_task_data

        train = load_task_data(str(tmp_path / "sentiment.json"), source="jsonl", files=files,
                               fields={"text": "review"}).splits["train"]
        needed = {r["id"] for seed in (0, 1) for r in subsample(train, fraction=0.5, seed=seed)}
        assert set(server.per_marker) == needed and len(needed) == 29
        assert server.requests == 29  # one request per needed example, none for the other 11
        assert "rationales for 29 of 40 training examples" in printed
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert report["runs_finished"] == 4
        assert {row["method"] for row in report["rows"]} == {"standard-finetune", "step-by-step-teacher"}
        assert (tmp_path / "report" / "summary.md").exists() and (tmp_path / "report" / "curve_all.png").exists()
        runs = report["rows"]
        assert {(row["fraction"], row["count"]) for row in runs} == {(0.5, 20)}
        sbs = json.loads(next((tmp_path / "report" / "runs" / "step-by-step-teacher").glob("*/seed-0/results.json"))
                         .read_text())
        assert sbs["examples"]["rationale_task"] == sbs["count"]  # every trained example got its rationale

        main(["run", str(path)])  # resume: nothing asked again, nothing retrained
        printed = capsys.readouterr().out
        assert server.requests == 29
        assert "4 runs, 4 already finished" in printed


@pytest.mark.shared_data
def test_training_on_a_generate_cache_equals_training_on_the_datas_own_teacher_outputs(shared_data_dir, tmp_path,
                                                                                        capsys):
    cache = tmp_path / "esnli_train_palm.jsonl"
    main(["generate", "--task", "esnli", "--split", "train", "--data-dir", str(shared_data_dir),
          "--teacher", f"replay:{shared_data_dir}", "--out", str(cache), "--progress", "false"])
    assert "14,949 examples" in capsys.readouterr().out
    common = ["train", "--task", "esnli", "--data-dir", str(shared_data_dir), "--count", "24", "--data-seed", "3",
              "--method", "step-by-step", "--label-source", "teacher", "--max-steps", "3", "--batch-size", "8",
              "--eval-steps", "3", "--valid-size", "16", "--test-size", "24", "--max-input-length", "48",
              "--max-target-length", "24"]
    main(common + ["--output-dir", str(tmp_path / "own")])
    main(common + ["--output-dir", str(tmp_path / "cache"), "--rationales", str(cache)])
    own, cached = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("own", "cache"))
    assert own["examples"] == cached["examples"] and own["count"] == cached["count"] == 24
    assert cached["rationales"] == str(cache) and cached["valid_size"] == 16 and cached["valid_full_size"] == 9842
    assert own["valid_accuracy"] == cached["valid_accuracy"] and own["test_accuracy"] == cached["test_accuracy"]
    assert own["train_loss"] == cached["train_loss"]
    assert ((tmp_path / "own" / "predictions_test.jsonl").read_text()
            == (tmp_path / "cache" / "predictions_test.jsonl").read_text())


@pytest.mark.parametrize("name", ["esnli_replay", "anli1_replay", "user_api"])
def test_shipped_experiment_files_are_valid(name):
    from stepdistill.experiments.experiment_file import load_experiment, sweep_preset
    from stepdistill.tasks import get_task

    experiment = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml")
    preset = sweep_preset(experiment, get_task(experiment.task if name != "user_api" else "esnli"))
    assert experiment.teacher.spec.split(":")[0] in ("replay", "openai") and preset.methods and preset.seeds


def test_train_carves_valid_for_a_task_without_one_and_states_the_sizes(tmp_path, capsys):
    files = _write_user_task(tmp_path)
    main(["train", "--task", str(tmp_path / "sentiment.json"), "--source", "jsonl",
          "--files", json.dumps({"train": files["train"], "test": files["test"]}), "--fields", '{"text": "review"}',
          "--carve-valid", "0.25", "--count", "12", "--valid-size", "4", "--method", "standard", "--max-steps", "2",
          "--batch-size", "4", "--eval-steps", "2", "--output-dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["valid_carved"] == {"from": "train", "size": 10, "seed": 0}  # 25% of 40
    assert (results["valid_size"], results["valid_full_size"], results["test_size"]) == (4, 10, 8)
    valid_ids = {json.loads(line)["id"] for line in (tmp_path / "run" / "predictions_valid.jsonl").read_text().splitlines()}
    from stepdistill.options import DataOptions, load_data

    data = load_data(DataOptions(task=str(tmp_path / "sentiment.json"), source="jsonl", carve_valid=0.25,
                                 files={"train": files["train"], "test": files["test"]}, fields={"text": "review"}))
    pool, carved = ({r["id"] for r in data.splits[split]} for split in ("train", "valid"))
    assert len(valid_ids) == 4 and valid_ids <= carved and not carved & pool and len(pool) == 30


def test_curve_fractions_of_a_carved_task_refer_to_the_pool_left_after_carving(tmp_path, capsys):
    """A task with a public train size but no valid split: fraction 1.0 is the whole pool left after carving, in
    `train`, `curve`, the spend table and the report alike."""
    files = _write_user_task(tmp_path)
    spec = json.loads((tmp_path / "sentiment.json").read_text())
    (tmp_path / "sentiment.json").write_text(json.dumps({**spec, "full_split_sizes": {"train": 40, "test": 8}}))
    main(["curve", "--task", str(tmp_path / "sentiment.json"), "--source", "jsonl",
          "--files", json.dumps({"train": files["train"], "test": files["test"]}), "--fields", '{"text": "review"}',
          "--carve-valid", "0.25", "--preset", "smoke", "--methods", '["standard-finetune"]', "--seeds", "[0]",
          "--fractions", "[1.0, 0.5]", "--max-steps", "2", "--out-dir", str(tmp_path / "report")])
    results = {r["fraction"]: r for r in (json.loads(p.read_text())
                                          for p in (tmp_path / "report" / "runs").glob("*/*/*/results.json"))}
    assert {f: (r["count"], r["full_train_size"]) for f, r in results.items()} == {1.0: (30, 30), 0.5: (15, 30)}
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["fraction_base"] == 30 and report["valid_carved"] == {"from": "train", "size": 10, "seed": 0}
    assert {f: row["count"] for f, row in report["spend"]["fractions"].items()} == {"1": 30, "0.5": 15}
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "(40 - 10 = 30 examples)" in summary and "10 examples were carved from train (seed 0)" in summary
