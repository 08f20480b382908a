"""Schedules of alpha, soft_weight and temperature: exact values at chosen steps, applied to the loss, logged at every
logging step, recorded in results.json and the same after a resume."""

import json
import math
from dataclasses import replace

import pytest

from stepdistill.student.schedules import Schedule, parse_schedule, values_at
from stepdistill.student.trainer import TrainConfig, read_log, run_training

from student_toy import soft_records, toy_task
from test_resume import Crash, CrashAfterStep


def test_schedules_parse_and_give_exact_values_at_chosen_updates():
    assert parse_schedule("linear:0.2:0.8", "alpha") == Schedule("linear", 0.2, 0.8)
    assert parse_schedule("0.3", "soft_weight") == parse_schedule("constant:0.3", "soft_weight") == \
        Schedule("constant", 0.3, 0.3)
    linear = parse_schedule("linear:0.2:0.8", "alpha")
    # update n of 6 uses fraction (n - 1) / 5: the first START, the last END
    assert [round(linear.value(n, 6), 12) for n in range(1, 7)] == [0.2, 0.32, 0.44, 0.56, 0.68, 0.8]
    cosine = parse_schedule("cosine:4:1", "temperature")
    assert cosine.value(1, 5) == 4.0 and cosine.value(5, 5) == 1.0
    assert cosine.value(3, 5) == pytest.approx(2.5, abs=1e-12)
    assert cosine.value(2, 5) == pytest.approx(4 - 3 * (1 - math.cos(math.pi / 4)) / 2, abs=1e-12)
    assert Schedule("linear", 0.0, 1.0).value(1, 1) == 0.0  # a one-step run uses START
    # the trainer's global_step is n - 1 while update n runs
    assert values_at({"alpha": linear}, 2, 6) == {"alpha": pytest.approx(0.44)}


@pytest.mark.parametrize("text,option,message", [
    ("linear:0.2", "alpha", "expected linear:START:END, cosine:START:END or constant:VALUE, got 'linear:0.2'"),
    ("cosine:0.2:x", "alpha", "not a number in 'cosine:0.2:x'"),
    ("linear:0:1.5", "soft_weight", "soft_weight must be in [0, 1], got 1.5"),
    ("linear:2:0", "temperature", "temperature must be in (0, 100], got 0"),
    ("step:1:2", "alpha", "expected linear:START:END"),
])
def test_bad_schedules_name_their_option(text, option, message):
    with pytest.raises(ValueError) as error:
        parse_schedule(text, option)
    assert str(error.value).startswith(f"option --{option.replace('_', '-')}-schedule: ")
    assert message in str(error.value)


SCHEDULED = dict(alpha_schedule="cosine:0.8:0.2", soft_weight_schedule="linear:0:0.5", temperature_schedule="linear:4:1")


def _config(**overrides):
    settings = dict(model="tiny", method="step-by-step", max_steps=5, batch_size=16, learning_rate=3e-3,
                    eval_steps=5, logging_steps=1, max_target_length=16, seed=2, **SCHEDULED)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_scheduled_values_are_logged_at_every_logging_step_and_applied_to_the_loss(tmp_path):
    records = soft_records()
    results = run_training(toy_task(), records, records[:4], [], _config(), tmp_path / "run")
    log = [row for row in read_log(tmp_path / "run") if "loss" in row]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5]
    alpha = [round(0.8 - 0.6 * (1 - math.cos(math.pi * f)) / 2, 10) for f in (0, 0.25, 0.5, 0.75, 1)]
    assert [row["alpha"] for row in log] == alpha
    assert [row["soft_weight"] for row in log] == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert [row["temperature"] for row in log] == [4.0, 3.25, 2.5, 1.75, 1.0]
    # applied: one micro-batch, so the logged task means are the global ones
    for row in log:
        label_task = (1 - row["soft_weight"]) * row["label_loss"] + \
            row["soft_weight"] * row["temperature"] ** 2 * row["soft_loss"]
        expected = row["alpha"] * label_task + (1 - row["alpha"]) * row["rationale_loss"]
        assert row["loss"] == pytest.approx(expected, rel=1e-4), row
    # each is its schedule
    assert (results["alpha"], results["soft_weight"], results["temperature"]) == (None, None, None)
    assert results["schedules"] == {"alpha": "cosine:0.8:0.2", "soft_weight": "linear:0:0.5",
                                    "temperature": "linear:4:1"}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {name: config[name] for name in SCHEDULED} == SCHEDULED


def test_a_logging_window_logs_the_values_of_its_last_update(tmp_path):
    records = soft_records()
    run_training(toy_task(), records, records[:4], [],
                 _config(method="standard", alpha_schedule=None, max_steps=6, eval_steps=6, logging_steps=3,
                         batch_size=8), tmp_path / "run")
    log = [row for row in read_log(tmp_path / "run") if "loss" in row]
    assert [(row["step"], row["soft_weight"], row["temperature"]) for row in log] == [(3, 0.2, 2.8), (6, 0.5, 1.0)]
    assert all("alpha" not in row for row in log)  # alpha weighs nothing in a one-task method


def test_a_resumed_run_uses_the_same_scheduled_values(tmp_path):
    records = soft_records()
    config = _config(max_steps=6, eval_steps=2, batch_size=8)
    run_training(toy_task(), records, records[:4], [], config, tmp_path / "full")
    with pytest.raises(Crash):
        run_training(toy_task(), records, records[:4], [], config, tmp_path / "resumed",
                     callbacks=[CrashAfterStep(3)])
    resumed = run_training(toy_task(), records, records[:4], [], replace(config, resume_from_checkpoint="last"),
                           tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    rows = lambda run: {row["step"]: row for row in read_log(tmp_path / run) if "loss" in row}
    full, again = rows("full"), rows("resumed")
    for step in range(3, 7):
        assert {k: again[step][k] for k in ("alpha", "soft_weight", "temperature")} == \
            {k: full[step][k] for k in ("alpha", "soft_weight", "temperature")}
        assert again[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5), step
