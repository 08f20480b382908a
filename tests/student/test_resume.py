"""A run interrupted after a checkpoint and resumed ends exactly like an uninterrupted run with the same seeds."""

from dataclasses import replace

import pytest
from transformers import TrainerCallback

from stepdistill.student.trainer import TrainConfig, read_log, run_training

from student_toy import toy_records, toy_task


class Crash(RuntimeError):
    pass


class CrashAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated crash at step {state.global_step}")


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, model):
    records = toy_records(without_rationale=(3,))
    config = TrainConfig(model=model, method="step-by-step", max_steps=8, batch_size=4, learning_rate=3e-3,
                         eval_steps=2, logging_steps=1, seed=7, max_target_length=16)
    full = run_training(toy_task(), records, records, records[:4], config, tmp_path / "full")

    with pytest.raises(Crash):
        run_training(toy_task(), records, records, records[:4], config, tmp_path / "resumed",
                     callbacks=[CrashAfterStep(5)])
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())[-1] == "checkpoint-4"
    assert not (tmp_path / "resumed" / "results.json").exists()

    resumed = run_training(toy_task(), records, records, records[:4], replace(config, resume_from_checkpoint="last"),
                           tmp_path / "resumed")
    assert resumed["steps"] == full["steps"] == 8
    assert resumed["valid_accuracy"] == full["valid_accuracy"]
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["best_step"] == full["best_step"]
    # same data order, optimizer state and RNG after the resume: the logged losses of steps 5..8 agree
    losses = lambda run: {row["step"]: row["loss"] for row in read_log(tmp_path / run) if "loss" in row}
    full_losses, resumed_losses = losses("full"), losses("resumed")
    for step in range(5, 9):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5), step
    evals = lambda run: [row["eval_accuracy"] for row in read_log(tmp_path / run) if "eval_accuracy" in row]
    assert evals("resumed") == evals("full")
    # the reported training loss is the whole run's, not the mean over the 4 steps after the resume
    assert resumed["resumed_from_step"] == 4 and full["resumed_from_step"] is None
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    assert full["train_loss"] == pytest.approx(sum(full_losses.values()) / 8, rel=1e-6)
    assert resumed["train_loss"] != pytest.approx(sum(resumed_losses[s] for s in range(5, 9)) / 4, rel=1e-3)


def test_resuming_a_finished_run_leaves_it_as_it_is(tmp_path, capsys):
    records = toy_records()
    config = TrainConfig(model="tiny", method="standard", max_steps=3, batch_size=4, learning_rate=3e-3,
                         eval_steps=3, seed=7, max_target_length=16, keep_checkpoints=True)
    first = run_training(toy_task(), records, records, records[:4], config, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in tmp_path.joinpath("run").iterdir() if p.is_file()}
    again = run_training(toy_task(), records, records, records[:4], replace(config, resume_from_checkpoint="last"),
                         tmp_path / "run")
    assert again == first
    assert again["steps"] == 3 and again["valid_curve"] == first["valid_curve"]
    assert {p.name: p.read_bytes() for p in tmp_path.joinpath("run").iterdir() if p.is_file()} == before
    assert f"{tmp_path / 'run'}: already finished (3 of 3 steps, results.json); nothing to resume" in capsys.readouterr().out
