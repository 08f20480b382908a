"""A trained toy student shared by the serving tests (tiny: seconds on 2 cores)."""

from __future__ import annotations

import pytest

from serving_toy import SENTIMENT_DATA, toy_records, toy_task


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The run folder of a tiny step-by-step student trained until it knows the 16 toy colours."""
    from stepdistill.student.trainer import TrainConfig, run_training

    records = toy_records()
    run_dir = tmp_path_factory.mktemp("toy-serve-run")
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=80, batch_size=8, learning_rate=2e-3,
                         eval_steps=40, logging_steps=10, max_target_length=16, group_by_length=True)
    results = run_training(toy_task(), records, records, records, config, run_dir)
    assert results["valid_accuracy"] == 1.0, results  # the tests below compare labels the student really knows
    return run_dir


@pytest.fixture(scope="session", params=["tiny", "tiny-llama"])
def lora_run(request, tmp_path_factory):
    """A LoRA run folder (model/ holds adapters only, the base is student-init/) trained by the `train` command on
    the bundled sentiment example: a T5 (``tiny``) and a Llama (``tiny-llama``) student of one layer (the ONNX
    export's cost grows with depth), 30 steps (a few seconds)."""
    from stepdistill.cli import main

    run_dir = tmp_path_factory.mktemp(f"lora-{request.param}") / "run"
    one_layer = "{num_layers: 1, num_decoder_layers: 1}" if request.param == "tiny" else "{num_hidden_layers: 1}"
    main(["train", *SENTIMENT_DATA, "--model", request.param, "--method", "step-by-step", "--lora-r", "8",
          "--max-steps", "30", "--eval-steps", "30", "--batch-size", "4", "--learning-rate", "3e-2",
          "--tiny-overrides", one_layer, "--output-dir", str(run_dir)])
    assert sorted(p.name for p in (run_dir / "model").glob("adapter_*")) == ["adapter_config.json",
                                                                              "adapter_model.safetensors"]
    assert not (run_dir / "model" / "config.json").exists() and (run_dir / "student-init" / "config.json").exists()
    return run_dir
