"""`stepdistill tune` (Optuna over TrainConfig fields) and `stepdistill train --config FILE.yaml`: the best config
reproduces its trial's valid accuracy, a resumed study runs only the remaining trials, bad input is one error line."""

import json
from pathlib import Path

import optuna
import pytest
import yaml
from cli_helpers import error_line
from optuna.trial import TrialState

from stepdistill.cli import _commands, _normalise, main
from stepdistill.experiments.tune import STUDY_NAME, parse_space

SPACE = "{alpha: [0.1, 0.9], learning_rate: [1e-4, 1e-1, log]}"


def _data(shared_data_dir) -> list[str]:
    return ["--task", "esnli", "--data-dir", str(shared_data_dir), "--count", "16", "--valid-size", "8",
            "--test-size", "8", "--max-steps", "2", "--eval-steps", "1", "--batch-size", "4"]


def _tune(shared_data_dir, out: Path, trials: int) -> None:
    main(["tune", *_data(shared_data_dir), "--space", SPACE, "--trials", str(trials), "--output-dir", str(out)])


def _study(out: Path):
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.shared_data
@pytest.mark.slow  # 30-40 s on 1 thread: two or four tiny trials, the data loaded each run
def test_best_config_reproduces_its_trials_valid_accuracy(shared_data_dir, tmp_path, capsys):
    out = tmp_path / "study"
    _tune(shared_data_dir, out, trials=2)
    best = json.loads((out / "best.json").read_text())
    study = _study(out)
    assert len(study.trials) == 2 and study.trials[0].state == TrialState.COMPLETE
    assert best["valid_accuracy"] == study.best_value
    assert best["test_size"] == 8 and 0.0 <= best["test_accuracy"] <= 1.0
    config = yaml.safe_load((out / "best_config.yaml").read_text())
    assert config["alpha"] == best["params"]["alpha"] and config["learning_rate"] == best["params"]["learning_rate"]
    assert (config["max_steps"], config["eval_steps"], config["batch_size"]) == (2, 1, 4)
    assert (out / "trials.png").stat().st_size > 1000
    assert (out / "trials.csv").read_text().splitlines()[0].startswith("number,state,value,alpha,learning_rate")
    assert len((out / "trials.md").read_text().splitlines()) == 2 + len(study.trials)

    # the same data options and the best config: the same valid accuracy and the same scores, example by example
    run = tmp_path / "run"
    main(["train", "--config", str(out / "best_config.yaml"), *_data(shared_data_dir)[:-6], "--output-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    assert results["valid_accuracy"] == best["valid_accuracy"]
    assert results["alpha"] == best["params"]["alpha"]
    trial_dir = out / f"trial_{best['best_trial']}"
    ours = [json.loads(line)["scores"] for line in (run / "predictions_valid.jsonl").read_text().splitlines()]
    theirs = [json.loads(line)["scores"] for line in (trial_dir / "predictions_valid.jsonl").read_text().splitlines()]
    assert ours == theirs
    # the file's options come first, so the command line's (later) override them
    argv = _normalise(["train", "--config", str(out / "best_config.yaml"), "--max-steps", "1"], _commands())
    assert argv.index("--student.max_steps=2") < argv.index("--student.max_steps")
    assert argv[argv.index("--student.max_steps") + 1] == "1"


@pytest.mark.shared_data
@pytest.mark.slow  # 30-40 s on 1 thread: two or four tiny trials, the data loaded each run
def test_resumed_study_runs_only_the_remaining_trials(shared_data_dir, tmp_path):
    out = tmp_path / "study"
    _tune(shared_data_dir, out, trials=1)
    first = _study(out).trials[0]
    assert first.state == TrialState.COMPLETE
    stamp = (out / "trial_0" / "results.json").stat().st_mtime_ns
    # a process killed mid-trial leaves it RUNNING with its params drawn
    killed = _study(out).ask()
    killed_params = {"alpha": killed.suggest_float("alpha", 0.1, 0.9),
                     "learning_rate": killed.suggest_float("learning_rate", 1e-4, 1e-1, log=True)}
    _tune(shared_data_dir, out, trials=3)
    trials = _study(out).trials
    assert len(trials) == 4  # 0 kept, 1 killed (now failed), 2 = 1's params again, 3 new
    assert (trials[0].params, trials[0].value, trials[0].state) == (first.params, first.value, TrialState.COMPLETE)
    assert (out / "trial_0" / "results.json").stat().st_mtime_ns == stamp  # not trained again
    assert trials[1].state == TrialState.FAIL
    assert trials[2].params == killed_params and trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED) and trials[3].params != first.params
    # the same command once more: nothing left to run
    _tune(shared_data_dir, out, trials=3)
    assert len(_study(out).trials) == 4


def test_space_formats():
    assert parse_space("{alpha: [0.1, 0.9], learning_rate: [1e-4, 1e-2, log], warmup_steps: [0, 20], "
                       "lora_r: {choices: [0, 4, 8]}}") == {
        "alpha": {"kind": "float", "low": 0.1, "high": 0.9, "log": False},
        "learning_rate": {"kind": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "warmup_steps": {"kind": "int", "low": 0, "high": 20, "log": False},
        "lora_r": {"kind": "categorical", "choices": [0, 4, 8]}}


@pytest.mark.parametrize("space, message", [
    ("{alpha: [0.1, 0.9", "error: option --space: malformed YAML"),
    ("{alpah: [0.1, 0.9]}", "error: option --space: unknown field 'alpah'"),
    ("{alpha: [0.9, 0.1]}", "error: option --space: field 'alpha': low (0.9) must be below high (0.1)"),
    ("{learning_rate: [0, 1e-2, log]}", "error: option --space: field 'learning_rate': a log range needs low > 0"),
    ("{alpha: [0.1, 0.9, lin]}", "error: option --space: field 'alpha': expected [low, high], [low, high, log]"),
])
def test_bad_space_is_oneerror_line(capsys, tmp_path, space, message):
    line = error_line(capsys, ["tune", "--task", "esnli", "--space", space, "--output-dir", str(tmp_path)])
    assert line.startswith(message), line
    assert not (tmp_path / "study.db").exists()


def test_unknown_config_field_is_oneerror_line(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("alpha: 0.3\nlearning_rat: 0.1\n")
    line = error_line(capsys, ["train", "--config", str(config), "--task", "esnli", "--output-dir", str(tmp_path)])
    assert line == f"error: {config}: unknown field 'learning_rat' (a TrainConfig field, e.g. alpha, learning_rate)"


@pytest.mark.shared_data
def test_a_second_tune_on_a_folder_in_use_is_oneerror_line(shared_data_dir, tmp_path, capsys):
    from stepdistill.locks import exclusive_lock

    out = tmp_path / "study"
    out.mkdir()
    with exclusive_lock(out / "tune.lock", "held by the test"):
        line = error_line(capsys, ["tune", *_data(shared_data_dir), "--space", SPACE, "--output-dir", str(out)])
    assert line.startswith(f"error: {out}: another tune is running in this folder (lock {out / 'tune.lock'} held by pid ")
    assert not (out / "study.db").exists()


def test_the_trainer_callback_reports_to_the_trial_and_prunes_below_the_median():
    from types import SimpleNamespace

    from stepdistill.experiments.tune import _pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    first.report(0.8, 1)
    study.tell(first, 0.8)
    trial = study.ask()
    callback = _pruning_callback(trial)
    state = SimpleNamespace(global_step=1)
    callback.on_evaluate(None, state, None, metrics={"eval_accuracy": 0.9})  # above the median: goes on
    second = study.ask()
    with pytest.raises(optuna.TrialPruned, match="valid accuracy 0.5000 at step 1"):
        _pruning_callback(second).on_evaluate(None, state, None, metrics={"eval_accuracy": 0.5})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.9}
    assert second.storage.get_trial(second._trial_id).intermediate_values == {1: 0.5}
