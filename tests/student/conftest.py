"""A trained toy student shared by the student tests (tiny: seconds on 2 cores)."""

from __future__ import annotations

import pytest

from student_toy import toy_records, toy_task


@pytest.fixture(scope="session")
def trained_toy(tmp_path_factory):
    """A tiny step-by-step student trained until it knows the 16 toy colours (run folder, results)."""
    from stepdistill.student.trainer import TrainConfig, run_training

    records = toy_records()
    run_dir = tmp_path_factory.mktemp("toy-run")
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=80, batch_size=8, learning_rate=2e-3,
                         eval_steps=40, logging_steps=10, max_target_length=16, group_by_length=True)
    results = run_training(toy_task(), records, records, records, config, run_dir)
    return run_dir, results


@pytest.fixture(scope="session")
def trained_llama_toy(tmp_path_factory):
    """A tiny decoder-only (Llama) step-by-step student trained on the 16 toy colours (run folder, results)."""
    from stepdistill.student.trainer import TrainConfig, run_training

    records = toy_records()
    run_dir = tmp_path_factory.mktemp("llama-toy-run")
    config = TrainConfig(model="tiny-llama", method="step-by-step", max_steps=120, batch_size=8, learning_rate=3e-3,
                         eval_steps=120, logging_steps=10, max_target_length=16)
    results = run_training(toy_task(), records, records, records, config, run_dir)
    return run_dir, results
