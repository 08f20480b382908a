"""A LoRA run folder (adapters in model/, the base in student-init/) through the commands a user types: `export`
merges it into a plain model, `predict` on the export gives the run's labels and scores, `serve` answers them."""

from __future__ import annotations

import asyncio
import json

import pytest

from stepdistill.cli import main
from stepdistill.serving.export import load_for_serving
from stepdistill.serving.server import StudentService, create_app

from serving_toy import SENTIMENT_INPUTS, loopback_server


def predict_rows(folder, out_file) -> list[dict]:
    main(["predict", str(folder), "--input-file", str(SENTIMENT_INPUTS), "--output-file", str(out_file)])
    return [json.loads(line) for line in out_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_export(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-export") / "out"
    main(["export", str(lora_run), str(out)])
    return out


def test_export_merges_a_lora_run_and_predicts_its_labels(lora_run, lora_export, tmp_path):
    from transformers import AutoConfig

    files = {p.name for p in lora_export.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and not any("adapter" in f for f in files)
    meta = json.loads((lora_export / "stepdistill.json").read_text())
    assert meta["export"]["lora_merged"] is True and "lora" not in meta
    assert meta["family"] == ("causal" if "llama" in lora_run.parent.name else "seq2seq")
    assert AutoConfig.from_pretrained(lora_export).model_type == ("llama" if meta["family"] == "causal" else "t5")
    on_run = predict_rows(lora_run, tmp_path / "run.jsonl")
    on_export = predict_rows(lora_export, tmp_path / "export.jsonl")
    assert len(on_run) == 12
    assert [row["prediction"] for row in on_export] == [row["prediction"] for row in on_run]
    for row, want in zip(on_export, on_run):  # merged weights: the same scores up to float rounding
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-4)


def test_serve_loads_a_lora_run_and_answers_its_labels(lora_run, tmp_path):
    import aiohttp

    on_run = predict_rows(lora_run, tmp_path / "run.jsonl")
    student = load_for_serving(lora_run)  # what `serve RUN` loads: the adapters merged
    assert "Peft" not in type(student.model).__name__
    inputs = [json.loads(line) for line in SENTIMENT_INPUTS.read_text().splitlines()]

    async def post(url):
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/predict", json={"inputs": inputs}) as response:
                return response.status, await response.json()

    with loopback_server(create_app(StudentService(student, lora_run.name, max_wait_ms=1))) as url:
        status, body = asyncio.run(post(url))
    assert status == 200, body
    assert [row["prediction"] for row in body["predictions"]] == [row["prediction"] for row in on_run]
    assert [row["id"] for row in body["predictions"]] == [f"s{i}" for i in range(12)]
