"""`export --format onnx`: T5 and Llama LoRA runs (merged) as ONNX graphs that `predict` and `serve` run through
onnxruntime with the PyTorch student's labels, scores and rationales; int8 through onnxruntime's quantiser; the bad
cases as one error line."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from stepdistill.cli import main
from stepdistill.serving.export import export_student, load_for_serving
from stepdistill.serving.server import StudentService, create_app
from stepdistill.student.onnx_student import OnnxStudentModel
from stepdistill.student.predict import load_trained_student, predict

from serving_toy import SENTIMENT_DATA, SENTIMENT_INPUTS, loopback_server

REVIEWS = [json.loads(line) for line in SENTIMENT_INPUTS.read_text().splitlines()]
INPUTS = [{"text": review["text"]} for review in REVIEWS]
GOLD = [review["sentiment"] for review in REVIEWS]


def _family(run) -> str:
    return json.loads((run / "model" / "stepdistill.json").read_text())["family"]


@pytest.fixture(scope="module")
def onnx_export(lora_run, tmp_path_factory):
    """The LoRA run merged and exported as fp32 ONNX, checked against PyTorch on the 12 reviews."""
    return export_student(lora_run, tmp_path_factory.mktemp("onnx") / "out", format="onnx", check_inputs=INPUTS,
                          check_gold=GOLD)


@pytest.fixture(scope="module")
def pytorch_rows(lora_run):
    return predict(load_trained_student(lora_run), INPUTS, rationales=True)


def test_onnx_export_predicts_the_labels_scores_and_rationales_of_pytorch(lora_run, onnx_export, pytorch_rows):
    family = _family(lora_run)
    graphs = ["decoder.onnx", "encoder.onnx"] if family == "seq2seq" else ["model.onnx"]
    files = sorted(p.name for p in onnx_export.iterdir())
    assert [name for name in files if name.endswith(".onnx")] == graphs
    assert not any(name.endswith((".safetensors", ".bin", ".data")) or name == "config.json" for name in files)
    meta = json.loads((onnx_export / "stepdistill.json").read_text())
    assert meta["format"] == "onnx" and meta["quantize"] is None and meta["export"]["lora_merged"] is True
    assert meta["onnx"]["family"] == family and meta["onnx"]["graphs"] == {name[:-5]: name for name in graphs}
    student = load_trained_student(onnx_export)
    assert isinstance(student.model, OnnxStudentModel)
    rows = predict(student, INPUTS, rationales=True)
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in pytorch_rows]
    assert [row["rationale"] for row in rows] == [row["rationale"] for row in pytorch_rows]
    assert all(row["rationale"] for row in rows)  # generation really ran (the student writes words)
    for row, want in zip(rows, pytorch_rows):
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-4)
    # other batch compositions pad differently: the same labels still
    assert [row["prediction"] for row in predict(student, INPUTS, batch_size=5)] == [r["prediction"] for r in rows]
    check = meta["export"]["check"]
    accuracy = sum(row["prediction"] == gold for row, gold in zip(rows, GOLD)) / 12
    assert check["reference"] == "PyTorch student" and check["examples"] == check["same_label"] == 12
    assert check["max_score_difference"] < 1e-4
    assert check["accuracy_reference"] == check["accuracy_export"] == accuracy


def test_predict_and_serve_commands_run_an_onnx_export(onnx_export, pytorch_rows, tmp_path):
    import aiohttp

    out_file = tmp_path / "rows.jsonl"
    main(["predict", str(onnx_export), "--input-file", str(SENTIMENT_INPUTS), "--output-file", str(out_file)])
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in pytorch_rows]

    async def post(url, route, body):
        async with aiohttp.ClientSession() as session:
            method = session.post(url + route, json=body) if body else session.get(url + route)
            async with method as response:
                return response.status, await response.json()

    student = load_for_serving(onnx_export)
    with loopback_server(create_app(StudentService(student, "onnx-student", max_wait_ms=1))) as url:
        status, body = asyncio.run(post(url, "/predict", {"inputs": REVIEWS[:3] + ["review: Cold soup."]}))
        assert status == 200, body
        assert [row["prediction"] for row in body["predictions"][:3]] == [r["prediction"] for r in pytorch_rows[:3]]
        status, health = asyncio.run(post(url, "/health", None))
        assert (status, health["runtime"], health["quantize"]) == (200, "onnxruntime", None)
    with pytest.raises(ValueError, match="an ONNX export is quantised when it is exported"):
        load_for_serving(onnx_export, quantize="int8")


@pytest.mark.parametrize("lora_run", ["tiny-llama"], indirect=True)  # once: int8 is not family-specific
def test_int8_onnx_export_through_the_command(lora_run, onnx_export, tmp_path, capsys):
    """An int8 copy of the fp32 export (onnxruntime's quantiser; no second torch export), checked against it."""
    import onnx

    out = tmp_path / "int8"
    main(["export", str(onnx_export), str(out), "--format", "onnx", "--quantize", "int8", "--check-split", "train",
          *SENTIMENT_DATA])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    meta = json.loads((out / "stepdistill.json").read_text())
    assert meta["quantize"] == meta["onnx"]["quantize"] == "int8" and meta["export"]["lora_merged"] is True
    graph = onnx.load(str(out / "model.onnx"))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.graph.node}
    int8 = sum(t.dims[0] * t.dims[1] for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) == 2)
    assert int8 > 30_000  # the attention and MLP weights are stored as int8
    assert (out / "model.onnx").stat().st_size < 0.7 * (onnx_export / "model.onnx").stat().st_size
    # the check ran on the file's 12 reviews (the train split: nothing is carved when only train is read)
    check = meta["export"]["check"]
    int8_rows = predict(load_trained_student(out), INPUTS)
    fp32_rows = predict(load_trained_student(onnx_export), INPUTS)
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(int8_rows, fp32_rows))
    assert (check["reference"], check["examples"], check["same_label"]) == ("fp32 ONNX export", 12, same)
    assert same >= 9
    assert line == (f"exported {onnx_export} to {out} (onnx int8, "
                    f"{sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB); the same label as the fp32 ONNX "
                    f"export on {same}/12 train examples ({100 * check['agreement']:.1f}%), scores "
                    f"within {check['max_score_difference']:.2g}, accuracy {check['accuracy_reference']:.3f} "
                    f"reference, {check['accuracy_export']:.3f} export")
    assert 0 < check["max_score_difference"] < 1.0  # int8 moves the scores a little, not wholesale
    assert _error(["export", str(out), str(tmp_path / "again"), "--format", "onnx", "--quantize", "int8"]) == (
        f"error: {out}: already an ONNX export; export the run folder it came from (an fp32 ONNX export can only "
        f"be quantised: --format onnx --quantize int8)")


def _error(args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return str(exc.value)


@pytest.mark.parametrize("lora_run", ["tiny"], indirect=True)
def test_bad_onnx_cases_are_one_error_line(lora_run, onnx_export, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    graph = "decoder.onnx"
    broken = tmp_path / "broken"
    shutil.copytree(onnx_export, broken)
    (broken / graph).unlink()
    message = f"error: {broken}: ONNX export without its {graph[:-5]} graph ({graph} is missing)"
    assert _error(["predict", str(broken), "--input", "review: fine."]) == message
    assert _error(["predict", str(onnx_export), "--input", "review: fine.", "--bf16", "true"]) == (
        "error: bf16 autocast applies to PyTorch students; an ONNX export runs as exported (fp32, or int8 with "
        "export --quantize int8)")
    assert _error(["export", str(onnx_export), str(tmp_path / "again")]) == (
        f"error: {onnx_export}: already an ONNX export; export the run folder it came from (an fp32 ONNX export "
        f"can only be quantised: --format onnx --quantize int8)")
    # a model type nobody has checked: refused before any work, nothing written
    gpt2 = tmp_path / "gpt2-run" / "model"
    shutil.copytree(lora_run / "model", gpt2, ignore=shutil.ignore_patterns("adapter_*"))
    meta = json.loads((gpt2 / "stepdistill.json").read_text())
    meta.pop("lora")
    (gpt2 / "stepdistill.json").write_text(json.dumps(meta))
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=1000)).save_pretrained(gpt2)
    assert _error(["export", str(gpt2.parent), str(tmp_path / "out"), "--format", "onnx"]) == (
        "error: --format onnx: model type 'gpt2' is not supported (supported: encoder-decoder, llama, mt5, t5); "
        "export it with --format safetensors")
    assert not (tmp_path / "out").exists()
