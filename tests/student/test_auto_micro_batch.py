"""The default micro-batch (per_device_batch_size=None): a cap from the model's shape and the rows' lengths."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, T5Config

from stepdistill.student import arguments
from stepdistill.student.arguments import auto_micro_batch, batch_layout

from student_toy import toy_records, toy_task

# the shapes measured in docs/training.md ("Micro-batches"): e-SNLI rows of at most 264 tokens over both passes
BENCH_T5 = T5Config(d_model=256, num_layers=4, num_decoder_layers=4)
DEMO_T5 = T5Config(d_model=64, num_layers=2, num_decoder_layers=2)


def test_the_bench_shape_gets_micro_batches_of_16_and_the_demo_keeps_its_batch():
    assert auto_micro_batch(BENCH_T5, 264, "cpu") == 2 ** 24 // (264 * 256 * 8) == 31
    assert batch_layout(64, 1, auto_micro_batch(BENCH_T5, 264, "cpu")) == (16, 4)
    assert batch_layout(32, 1, auto_micro_batch(DEMO_T5, 84, "cpu")) == (32, 1)
    # decoder-only: hidden_size x num_hidden_layers
    llama = LlamaConfig(hidden_size=576, num_hidden_layers=30)
    assert auto_micro_batch(llama, 200, "cpu") == 2 ** 24 // (200 * 576 * 30) == 4
    # accelerators: no cap (their memory, not the CPU's caches, sets the size)
    assert auto_micro_batch(BENCH_T5, 264, "cuda") is None


def test_the_default_run_trains_in_the_derived_micro_batches(tmp_path, monkeypatch):
    import json

    from stepdistill.student.config import TrainConfig
    from stepdistill.student.trainer import run_training

    records = toy_records()
    config = TrainConfig(model="tiny", max_steps=2, batch_size=16, eval_steps=2, max_target_length=16)
    whole = run_training(toy_task(), records, records[:4], [], config, tmp_path / "whole")
    assert (whole["per_device_batch_size"], whole["gradient_accumulation_steps"]) == (16, 1)
    # a budget of 5 of these rows: micro-batches of 4 (the largest divisor of 16 under 5), accumulated 4 times
    from stepdistill.student.models import load_student

    shape = load_student(tmp_path / "whole" / "model")[0].config
    rows = arguments.row_tokens(_dataset(tmp_path), False)
    monkeypatch.setattr(arguments, "CPU_MICRO_BATCH_BUDGET", 5 * rows * shape.d_model * 6)
    micro = run_training(toy_task(), records, records[:4], [], config, tmp_path / "micro")
    assert (micro["per_device_batch_size"], micro["gradient_accumulation_steps"]) == (4, 4)
    saved = json.loads((tmp_path / "micro" / "config.json").read_text())
    assert saved["per_device_batch_size"] == 4 and saved["gradient_accumulation_steps"] == 4
    assert micro["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)  # the same update


def _dataset(tmp_path):
    from stepdistill.student.config import TrainConfig
    from stepdistill.student.examples import select_examples, tokenize_examples
    from stepdistill.student.models import load_student

    config = TrainConfig(model="tiny", max_target_length=16)
    _, tokenizer = load_student(tmp_path / "whole" / "model")
    return tokenize_examples(select_examples(toy_records(), config)[0], tokenizer, config)
