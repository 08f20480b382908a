"""Every command: a wrong task name, a missing data folder and a bad option value end as ONE `error:` line naming
the task, folder or option, with a non-zero exit and no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import error_line


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A folder that looks like a run to `predict` up to loading the model (its meta file names the task)."""
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "stepdistill.json").write_text(json.dumps({"task": "esnli"}))
    return folder


@pytest.fixture
def experiment(tmp_path):
    def write(**fields) -> str:
        spec = {"task": "esnli", "data": {"data_dir": str(tmp_path)}, "teacher": "replay:" + str(tmp_path),
                "preset": "smoke", **fields}
        path = tmp_path / f"exp{len(list(tmp_path.glob('exp*.json')))}.json"
        path.write_text(json.dumps(spec))
        return str(path)
    return write


NO_DIR = "/nonexistent/stepdistill-data"


def _cases(tmp_path, run_folder, experiment):
    """(command line, text the error line must contain) per command and failure."""
    out = str(tmp_path / "out")
    return {
        "data": [
            (["data", "--task", "esnlii", "--data-dir", NO_DIR], "unknown task 'esnlii'"),
            (["data", "--task", "esnli", "--data-dir", NO_DIR], f"{NO_DIR}: data folder not found"),
            (["data", "--task", "esnli", "--source", "user"], "option --data.source: Expected a typing.Literal"),
        ],
        "generate": [
            (["generate", "--task", "esnlii", "--out", out], "unknown task 'esnlii'"),
            (["generate", "--task", "esnli", "--data-dir", NO_DIR, "--out", out], "data folder not found"),
            (["generate", "--task", "esnli", "--concurrency", "many", "--out", out], "option --concurrency"),
        ],
        "train": [
            (["train", "--task", "esnlii", "--output-dir", out], "unknown task 'esnlii'"),
            (["train", "--task", "esnli", "--data-dir", NO_DIR, "--output-dir", out], "data folder not found"),
            (["train", "--task", "esnli", "--method", "step_by_step", "--output-dir", out],
             "method must be one of ('standard', 'step-by-step', 'single-task', 'single-task-label-first', "
             "'rationale-input', 'distill'), got 'step_by_step'"),
            (["train", "--task", "esnli", "--fraction", "1.5", "--output-dir", out],
             "option --fraction: must be in (0, 1], got 1.5"),
            (["train", "--task", "esnli", "--max-steps", "ten", "--output-dir", out], "option --student.max_steps"),
        ],
        "curve": [
            (["curve", "--task", "esnlii", "--data-dir", NO_DIR], "unknown task 'esnlii'"),
            (["curve", "--task", "esnli", "--data-dir", NO_DIR], "data folder not found"),
            (["curve", "--task", "esnli", "--workers", "two", "--data-dir", NO_DIR], "option --workers"),
        ],
        "predict": [
            (["predict", "--model-dir", str(run_folder), "--task", "esnlii", "--input", "x"], "unknown task 'esnlii'"),
            (["predict", "--model-dir", str(run_folder), "--split", "test", "--data-dir", NO_DIR],
             "data folder not found"),
            (["predict", "--model-dir", str(run_folder), "--input", "x", "--batch-size", "big"],
             "option --batch_size"),
            (["predict", "--model-dir", str(tmp_path), "--input", "x"], "not a run folder"),
            (["predict", str(tmp_path), "--input", "x"], "not a run folder"),  # the folder without its option
        ],
        "serve": [
            (["serve", str(tmp_path / "none")], "none: no such folder"),
            (["serve"], "error: the following arguments are required: --run-dir"),
            (["serve", str(run_folder), "--port", "eighty"], "option --port"),
        ],
        "export": [
            (["export", str(tmp_path / "none"), out], "none: no such folder"),
            (["export", str(run_folder)], "error: the following arguments are required: --out"),
            (["export", str(run_folder), out, "--quantize", "int4"], "option --quantize"),
        ],
        "tune": [
            (["tune", "--task", "esnlii", "--space", "{alpha: [0.1, 0.9]}", "--output-dir", out],
             "unknown task 'esnlii'"),
            (["tune", "--task", "esnli", "--data-dir", NO_DIR, "--space", "{alpha: [0.1, 0.9]}", "--output-dir", out],
             "data folder not found"),
            (["tune", "--task", "esnli", "--space", "{alpha: [0.1, 0.9]}", "--trials", "0", "--output-dir", out],
             "option --trials: must be at least 1"),
            (["tune", "--task", "esnli", "--config", str(tmp_path / "none.yaml"), "--space", "{alpha: [0, 1]}",
              "--output-dir", out], "none.yaml: file not found (option --config)"),
        ],
        "run": [
            (["run", experiment(task="esnlii")], "unknown task 'esnlii'"),
            (["run", experiment(data={"data_dir": NO_DIR})], "data folder not found"),
            (["run", experiment(workers="two", sweep={"max_stepz": 3})], "field 'sweep': unknown preset field(s) max_stepz"),
            (["run", str(tmp_path / "missing.yaml")], "missing.yaml: experiment file not found"),
        ],
    }


@pytest.mark.parametrize("command", ["data", "generate", "train", "curve", "predict", "run", "serve", "export",
                                     "tune"])
def test_each_command_fails_with_oneerror_line(command, tmp_path, run_folder, experiment, capsys):
    for args, expected in _cases(tmp_path, run_folder, experiment)[command]:
        line = error_line(capsys, args)
        assert expected in line, (args, line)


def test_preset_and_method_names_are_checked(tmp_path, capsys, shared_data_dir):
    base = ["curve", "--task", "anli1", "--data-dir", str(shared_data_dir), "--out-dir", str(tmp_path)]
    assert "unknown preset 'smokey'" in error_line(capsys, base + ["--preset", "smokey"])
    assert "unknown method(s) step_by_step" in error_line(capsys, base + ["--preset", "smoke", "--methods",
                                                                           "[step_by_step]"])


def test_a_fraction_larger_than_the_data_is_anerror_line(capsys, shared_data_dir, tmp_path):
    line = error_line(capsys, ["train", "--task", "esnli", "--data-dir", str(shared_data_dir), "--fraction", "0.05",
                                "--output-dir", str(tmp_path)])
    assert line == ("error: option --fraction 0.05 (27,468 of 549,367): only 14,949 training examples exist; "
                    "largest --fraction: 0.02721")


def test_the_installed_command_exits_1_with_one_line_and_debug_shows_the_traceback(tmp_path):
    args = [sys.executable, "-m", "stepdistill.cli", "data", "--task", "esnli", "--data-dir", NO_DIR]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr == f"error: {NO_DIR}: data folder not found (set --data-dir or $STEPDISTILL_DATA_DIR)\n"
    debug = subprocess.run(args + ["--debug"], capture_output=True, text=True, cwd=REPO)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_help_is_fast_lists_true_sources_and_derives_options_from_the_config():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "stepdistill.cli", "train", "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0
    assert "{local,official,hub,jsonl,csv}" in done.stdout and "user" not in done.stdout.split("--data.source")[1][:40]
    for option in ("--student.warmup_steps", "--student.lr_scheduler_type", "--student.weight_decay",
                   "--student.gradient_checkpointing", "--student.group_by_length", "--student.eval_batch_size",
                   "--student.save_steps", "--rationales", "--valid_size"):
        assert option in done.stdout
    assert "weight of the label loss (step-by-step)" in done.stdout  # help from TrainConfig's field comments
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "transformers" not in imported


def test_every_train_config_field_is_a_train_option():
    from dataclasses import fields

    from stepdistill.cli import _commands, _option_groups
    from stepdistill.student.config import TrainConfig

    groups = _option_groups(_commands()["train"])
    assert all(groups[field.name] == f"student.{field.name}" for field in fields(TrainConfig))
    assert groups["task"] == "data.task" and groups["fraction"] == "subset.fraction"


def test_generate_against_an_unreachable_server_fails_saying_how_many_and_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    examples = tmp_path / "train.jsonl"
    examples.write_text("".join(json.dumps({"id": i, "premise": "A dog runs.", "hypothesis": "An animal moves.",
                                            "label": "entailment"}) + "\n" for i in range(2)))
    line = error_line(capsys, ["generate", "--task", "esnli", "--source", "jsonl", "--files",
                                json.dumps({"train": str(examples)}), "--teacher", "openai:m", "--base-url",
                                "http://127.0.0.1:9/v1", "--max-attempts", "1", "--timeout", "1", "--progress", "false",
                                "--out", str(tmp_path / "out.jsonl")])
    assert line == f"error: no usable rationale from openai:m: 2 examples failed (connection 2); see {tmp_path / 'out.jsonl'}"


def test_batch_sizes_below_one_are_anerror_line(capsys, tmp_path):
    base = ["train", "--task", "esnli", "--data-dir", NO_DIR, "--output-dir", str(tmp_path)]
    assert error_line(capsys, base + ["--per-device-batch-size", "0"]) == \
        "error: per_device_batch_size must be at least 1, got 0"
    assert error_line(capsys, base + ["--batch-size", "-4"]) == "error: batch_size must be at least 1, got -4"
