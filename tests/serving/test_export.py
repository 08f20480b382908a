"""`export`: a standalone folder (safetensors, tokenizer, meta) that reloads and predicts the same labels; int8 at
load time; LoRA merged; the commands' error lines."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from stepdistill.serving.export import export_student, load_for_serving, merge_lora
from stepdistill.student.predict import load_trained_student, predict

from serving_toy import COLD, WARM, TOY_SPEC, toy_task

INPUTS = [{"text": w} for w in WARM + COLD]
LABELS = ["warm"] * 8 + ["cold"] * 8


@pytest.fixture(scope="module")
def exported(toy_run, tmp_path_factory):
    return export_student(toy_run, tmp_path_factory.mktemp("export") / "toy-export", task=toy_task())


def test_export_reloads_and_predicts_the_same(toy_run, exported):
    files = sorted(p.name for p in exported.iterdir())
    assert "model.safetensors" in files and "stepdistill.json" in files and "tokenizer_config.json" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    meta = json.loads((exported / "stepdistill.json").read_text())
    assert meta["task"] == "toy-colors" and meta["quantize"] is None and meta["export"]["lora_merged"] is False
    assert meta["export"]["run_name"] == toy_run.name and meta["export"]["results"]["valid_accuracy"] == 1.0
    original = predict(load_trained_student(toy_run, toy_task()), INPUTS, rationales=True)
    again = predict(load_trained_student(exported, toy_task()), INPUTS, rationales=True)
    assert [row["prediction"] for row in again] == [row["prediction"] for row in original] == LABELS
    assert [row["rationale"] for row in again] == [row["rationale"] for row in original]
    for row, want in zip(again, original):
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-5)
    with pytest.raises(ValueError, match="already exists and is not empty"):
        export_student(toy_run, exported, task=toy_task())


def test_int8_export_quantises_at_load_time(toy_run, exported, tmp_path):
    import torch

    out = export_student(exported, tmp_path / "int8", quantize="int8", task=toy_task())
    assert json.loads((out / "stepdistill.json").read_text())["quantize"] == "int8"
    plain = load_trained_student(out, toy_task())  # the folder holds fp32 weights: loadable by predict as is
    assert isinstance(plain.model.lm_head, torch.nn.Linear)
    student = load_for_serving(out, toy_task())
    linear = student.model.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(linear, torch.ao.nn.quantized.dynamic.Linear) and linear.weight().dtype == torch.qint8
    rows = predict(student, INPUTS)
    assert [row["prediction"] for row in rows] == LABELS
    with pytest.raises(ValueError, match="--quantize must be one of int8, got 'int4'"):
        export_student(toy_run, tmp_path / "int4", quantize="int4", task=toy_task())


def test_lora_adapters_are_merged(toy_run):
    import torch
    from peft import LoraConfig, get_peft_model

    student = load_trained_student(toy_run, toy_task())
    lora = get_peft_model(student.model, LoraConfig(r=4, target_modules=["q", "v"], init_lora_weights=False))
    batch = student.tokenizer(["[label] the color is red"], return_tensors="pt")
    decoder_input_ids = torch.zeros((1, 1), dtype=torch.long)
    with torch.no_grad():
        with_adapters = lora(**batch, decoder_input_ids=decoder_input_ids).logits
        merged, was_lora = merge_lora(lora)
        after = merged(**batch, decoder_input_ids=decoder_input_ids).logits
    assert was_lora and type(merged).__name__ == "T5ForConditionalGeneration"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(after, with_adapters, atol=1e-4)
    assert merge_lora(merged) == (merged, False)


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "stepdistill.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_commands_fail_with_one_error_line(tmp_path):
    done = _cli("serve", "--run-dir", str(tmp_path / "missing"))
    assert done.returncode != 0 and done.stderr.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    done = _cli("export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode != 0
    assert done.stderr.strip() == (f"error: {tmp_path}: not a run folder or exported student (no stepdistill.json "
                                   f"beside config.json or adapter_config.json (LoRA) in it or in its model/ folder)")


def test_serve_command_serves_an_export(exported, tmp_path):
    spec = tmp_path / "toy.json"
    spec.write_text(json.dumps(TOY_SPEC))
    process = subprocess.Popen([sys.executable, "-m", "stepdistill.cli", "serve", "--run-dir", str(exported),
                                "--port", "0", "--task", str(spec), "--max-wait-ms", "1"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once the port is bound
        assert line.startswith(f"serving {exported.name} on http://127.0.0.1:"), line
        url = line.split()[3]
        request = urllib.request.Request(url + "/predict", data=json.dumps({"inputs": ["the color is amber"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["predictions"][0]["prediction"] == "warm"
        with urllib.request.urlopen(url + "/health", timeout=60) as response:
            assert json.loads(response.read())["model"] == exported.name
    finally:
        process.terminate()
        assert process.wait(30) == 0  # SIGTERM stops it cleanly
