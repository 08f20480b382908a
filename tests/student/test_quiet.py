"""Reloads stay quiet about tied weights and progress bars, and still warn about weights that are really missing."""

import logging
from types import SimpleNamespace

import pytest

from stepdistill.student.trainer import StepByStepTrainer, TrainConfig, run_training

from student_toy import toy_records, toy_task

TIED_T5_KEYS = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]


@pytest.fixture
def transformers_logs(caplog):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()  # transformers' own handler bypasses caplog
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="transformers")  # whatever verbosity an earlier test left behind
    yield caplog
    hf_logging.disable_propagation()


def _warnings_after_load(model, missing):
    trainer = StepByStepTrainer.__new__(StepByStepTrainer)  # only the model is read
    trainer.model = model
    trainer._issue_warnings_after_load(SimpleNamespace(missing_keys=missing, unexpected_keys=[]))


def test_missing_tied_weights_are_silent_really_missing_ones_warn(trained_toy, transformers_logs):
    from stepdistill.student.models import load_student

    model, _ = load_student(trained_toy[0] / "model")
    _warnings_after_load(model, list(TIED_T5_KEYS))
    assert "missing keys" not in transformers_logs.text
    real = "encoder.block.0.layer.0.SelfAttention.q.weight"
    _warnings_after_load(model, TIED_T5_KEYS + [real])
    warned = [r.getMessage() for r in transformers_logs.records if "missing keys" in r.getMessage()]
    assert warned == [f"There were missing keys in the checkpoint model loaded: {[real]}."]
    assert transformers_logs.records[-1].levelno == logging.WARNING


def test_training_with_best_checkpoint_reload_prints_no_noise(tmp_path, transformers_logs, capfd):
    records = toy_records()
    config = TrainConfig(model="tiny", method="standard", max_steps=3, batch_size=8, learning_rate=3e-3,
                         eval_steps=1, logging_steps=1, save_total_limit=2)
    results = run_training(toy_task(), records, records[:4], [], config, tmp_path)
    assert results["best_step"] in (1, 2, 3)  # the best checkpoint was reloaded at the end
    err = capfd.readouterr().err
    for noise in ("Loading weights", "Writing model shards"):
        assert noise not in err
    for noise in ("missing keys", "mtime"):
        assert noise not in transformers_logs.text, transformers_logs.text
