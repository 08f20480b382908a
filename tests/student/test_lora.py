"""LoRA (peft) students, seq2seq and causal: only adapters train and are saved; reloaded adapters and the merged
export predict exactly what the trained run scored."""

import json

import pytest
import torch

from stepdistill.student.trainer import TrainConfig, run_training

from student_toy import toy_records, toy_task


@pytest.mark.parametrize("model,targets", [("tiny", ["q", "v"]), ("tiny-llama", ["q_proj", "v_proj"])])
def test_lora_adapters_save_reload_and_predict_identically(tmp_path, model, targets):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from stepdistill.student.evaluate import rank_scores
    from stepdistill.student.predict import load_trained_student, merged_model, predict

    records = toy_records()
    config = TrainConfig(model=model, method="step-by-step", max_steps=12, batch_size=8, learning_rate=1e-2,
                         eval_steps=6, logging_steps=6, max_target_length=16, lora_r=4, lora_alpha=8)
    results = run_training(toy_task(), records, records[:6], records[:6], config, tmp_path)
    assert results["lora_r"] == 4
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved and "model.safetensors" not in saved
    meta = json.loads((tmp_path / "model" / "stepdistill.json").read_text())
    assert meta["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets,
                            "base_model": "../student-init"}

    student = load_trained_student(tmp_path, task=toy_task())
    assert type(student.model).__name__.startswith("PeftModel")
    rows = predict(student, [r["fields"] for r in records[:6]])
    ran = [json.loads(line) for line in (tmp_path / "predictions_test.jsonl").read_text().splitlines()]
    for row, done in zip(rows, ran):
        assert row["prediction"] == done["prediction"]
        for label in ("warm", "cold"):
            assert row["scores"][label] == pytest.approx(done["scores"][label], rel=1e-5, abs=1e-5)

    merged, tokenizer = merged_model(student)
    assert "Peft" not in type(merged).__name__
    inputs = ["[label] " + r["input"] for r in records[:6]]
    merged_scores = rank_scores(merged, tokenizer, inputs, [["warm", "cold"]] * 6)
    for row, scores in zip(rows, merged_scores):
        assert scores == pytest.approx([row["scores"]["warm"], row["scores"]["cold"]], rel=1e-4, abs=1e-4)
    # the adapters moved the attention weights they target and nothing else
    loader = AutoModelForCausalLM if model == "tiny-llama" else AutoModelForSeq2SeqLM
    initial = loader.from_pretrained(tmp_path / "student-init").state_dict()
    changed = {name for name, weight in merged.state_dict().items() if not torch.equal(weight, initial[name])}
    assert changed and all(name.split(".")[-2] in targets for name in changed), changed
