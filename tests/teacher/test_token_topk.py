"""token_topk in the cache (issue 24, item 3, offline token KD): every generated token's top-K from an API's
top_logprobs on the loopback server (chat and completions), bounded, keyed only when on; the refusals."""

import json

import pytest
from cli_helpers import error_line
from teacher_helpers import API_KEY, batch_api_records, cache_lines, nli_examples, write_jsonl

from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.teachers import GenerationParams, OpenAITeacher

OUTPUTS = {"0": "The dog moves.\nAnswer: entailment", "1": "No answer."}
LOGPROBS = {
    "0": [("The", -0.5, [("The", -0.5), ("A", -1.25), ("Dogs", -3.0)]),
          (" dog moves.", -0.1, [(" cat", -2.5), (" dog moves.", -0.1)]),  # alternatives out of order: sorted
          ("\nAnswer:", -0.01, [("\nAnswer:", -0.01)]),
          (" entailment", -0.2, [(" entailment", -0.2), (" neutral", -2.0), (" contradiction", -3.5)])],
}


def _generate(server, tmp_path, params, endpoint="chat", count=2):
    teacher = OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, timeout=2, endpoint=endpoint)
    generator = RationaleGenerator("esnli", teacher, tmp_path / f"{endpoint}.jsonl", params=params, progress=False)
    return generator.run(nli_examples(count))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_every_token_top_k_is_cached_exactly(serve, tmp_path, endpoint):
    server = serve(outputs=OUTPUTS, logprobs=LOGPROBS)
    result = _generate(server, tmp_path, GenerationParams(token_logprobs=2, max_new_tokens=3), endpoint)
    body = server.bodies[0]
    assert (body["logprobs"], body.get("top_logprobs")) == ((True, 2) if endpoint == "chat" else (2, None))
    by_id = {record["id"]: record for record in cache_lines(tmp_path / f"{endpoint}.jsonl")}
    # 3 positions (max_new_tokens) of the 4 the server gave; 2 alternatives each, most likely first
    assert by_id["0"]["token_topk"] == {
        "tokenizer": "gpt-4o-mini", "k": 2,
        "chosen": ["The", " dog moves.", "\nAnswer:"], "chosen_logprobs": [-0.5, -0.1, -0.01],
        "tokens": [["The", "A"], [" dog moves.", " cat"], ["\nAnswer:"]],
        "logprobs": [[-0.5, -1.25], [-0.1, -2.5], [-0.01]]}
    assert by_id["0"]["params"]["token_logprobs"] == 2
    # token log-probabilities alone are no label distribution
    assert "label_logprobs" not in by_id["0"]
    # a parse error keeps none (the student never trains on it)
    assert by_id["1"]["status"] == "parse_error" and "token_topk" not in by_id["1"]
    assert [r.get("token_topk") for r in result.records] == [by_id["0"]["token_topk"], None]


def test_off_keeps_the_old_key_and_on_is_a_new_one(serve, tmp_path):
    server = serve(outputs=OUTPUTS, logprobs=LOGPROBS)
    plain = _generate(server, tmp_path, GenerationParams(), count=1).records[0]
    assert "logprobs" not in server.bodies[0] and "token_topk" not in plain and "token_logprobs" not in plain["params"]
    topk = _generate(server, tmp_path, GenerationParams(token_logprobs=3), count=1).records[0]
    assert topk["key"] != plain["key"] and server.requests == 2
    assert topk["token_topk"]["tokens"][0] == ["The", "A", "Dogs"] and len(topk["token_topk"]["chosen"]) == 4
    # with --label-logprobs too: one request asking the larger K, both fields recorded
    both = _generate(server, tmp_path, GenerationParams(token_logprobs=2, label_logprobs=True, top_logprobs=3),
                     count=1).records[0]
    assert server.bodies[-1]["top_logprobs"] == 3 and both["token_topk"]["k"] == 2
    assert both["label_logprobs_source"] == "top_logprobs"


def test_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(2))
    base = ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples)}),
            "--out", str(tmp_path / "o.jsonl"), "--progress", "false"]
    (tmp_path / "released" / "esnli").mkdir(parents=True)
    (tmp_path / "released" / "esnli" / "palm_train.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "output": "x\nAnswer: entailment"}) + "\n" for i in range(2)))
    line = error_line(capsys, base + ["--teacher", f"replay:{tmp_path / 'released'}", "--token-logprobs", "5"])
    assert line == ("error: --token-logprobs: the replay teacher gives no per-token log-probabilities; they come "
                    "from openai:MODEL or openai-batch:MODEL (top_logprobs)")
    line = error_line(capsys, base + ["--teacher", "openai:gpt-4o-mini", "--token-logprobs", "21"])
    assert line == "error: --token-logprobs: at most 20 for an API teacher (its top_logprobs limit), got 21"
    line = error_line(capsys, base + ["--teacher", "openai:gpt-4o-mini", "--token-logprobs", "2", "--n", "3",
                                      "--temperature", "0.7"])
    assert line.startswith("error: --token-logprobs: needs --n 1")
    line = error_line(capsys, base + ["--teacher", "openai:gpt-4o-mini", "--token-logprobs", "101"])
    assert line == "error: --token-logprobs must be between 1 and 100 (0: off), got 101"


def test_the_batch_api_records_the_same_token_topk(serve, tmp_path):
    params = GenerationParams(token_logprobs=3)
    online = _generate(serve(outputs=OUTPUTS, logprobs=LOGPROBS), tmp_path, params).records
    batch = batch_api_records(tmp_path, params, OUTPUTS, LOGPROBS, 2)
    assert batch[0]["token_topk"] == online[0]["token_topk"] and len(batch[0]["token_topk"]["chosen"]) == 4
    assert "token_topk" not in batch[1]


def test_generate_then_train_from_the_cache_on_the_command_line(serve, tmp_path, monkeypatch, capsys):
    """The whole offline chain: an API whose tokens are the student's own (a server speaking its vocabulary),
    generate --token-logprobs into a cache, train --token-kd-source cache from it: every rationale token aligns."""
    from stepdistill.cli import main
    from stepdistill.student.models import build_tiny_student, load_student

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples = nli_examples(8)
    outputs = {str(e["id"]): "The dog moves.\nAnswer: entailment" for e in examples}
    texts = [f"{e['premise']} {e['hypothesis']}" for e in examples] + list(outputs.values()) + ["entailment neutral"]
    student_dir = build_tiny_student(texts * 10, tmp_path / "student", d_model=32, num_layers=1, num_decoder_layers=1,
                                     d_kv=8, d_ff=32, num_heads=2)
    tokenizer = load_student(student_dir)[1]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("The dog moves.\nAnswer: entailment").input_ids[:-1])
    logprobs = [(token, -0.1, [(token, -0.1), (tokens[0] if token != tokens[0] else tokens[1], -2.5)])
                for token in tokens]
    server = serve(outputs=outputs, logprobs={key: logprobs for key in outputs})
    files = {split: str(write_jsonl(tmp_path / f"{split}.jsonl", examples)) for split in ("train", "valid", "test")}
    data = ["--task", "esnli", "--source", "jsonl", "--files", json.dumps(files)]
    cache = tmp_path / "topk.jsonl"
    main(["generate", *data, "--teacher", "openai:gpt-4o-mini", "--base-url", server.url, "--token-logprobs", "2",
          "--out", str(cache), "--progress", "false"])
    assert all(record["token_topk"]["chosen"] == tokens for record in cache_lines(cache))
    main(["train", *data, "--rationales", str(cache), "--model", str(student_dir), "--method", "step-by-step",
          "--token-kd-source", "cache", "--token-kd-weight", "0.5", "--max-steps", "2", "--eval-steps", "2",
          "--batch-size", "4", "--output-dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rationale = tokenizer("The dog moves.").input_ids  # the parsed rationale and its </s>
    assert results["token_kd_alignment"] == {
        "rationale_tokens": 8 * len(rationale), "aligned": 8 * (len(rationale) - 1), "skipped_unaligned": 8,
        "skipped_short_top_k": 0, "skipped_no_token_topk": 0, "examples_without_token_topk": 0}
    assert results["kd"]["source"] == "cache"
