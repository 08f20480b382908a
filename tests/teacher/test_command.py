"""`stepdistill generate` end to end (in process) against the loopback server."""

import json

import pytest
from teacher_helpers import API_KEY, cache_lines, nli_examples, write_jsonl

from stepdistill.cli import main


def _args(server, examples_path, out, *extra):
    return ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples_path)}),
            "--teacher", "openai:gpt-4o-mini", "--base-url", server.url, "--out", str(out), "--progress", "false",
            "--timeout", "2", *extra]


def test_generate_limit_summary_and_rerun(serve, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    outputs = {"1": "A dog is not a cat.\nAnswer: contradiction", "2": "No answer given."}
    server = serve(outputs=outputs, faults={"3": ["500"] * 2})
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(6))
    out = tmp_path / "rationales.jsonl"
    main(_args(server, examples, out, "--limit", "5", "--max-attempts", "2", "--summary-json", str(tmp_path / "s.json")))
    printed = capsys.readouterr().out
    assert "5 examples: 0 from the cache, 5 generated (6 requests)" in printed
    assert "usable rationales: 3; teacher-label agreement with gold: 40.0% (2/5)" in printed
    assert "parse failures by reason: no_answer 1" in printed
    assert "request failures (after retries) by reason: http_500 1" in printed
    assert "retried attempts by reason: http_500 1" in printed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["teacher"] == "openai:gpt-4o-mini" and summary["agreement"] == 0.4 and summary["requests"] == 6
    assert len(cache_lines(out)) == 5 and server.requests == 6
    main(_args(server, examples, out))  # all 6: five from the cache
    printed = capsys.readouterr().out
    assert "6 examples: 5 from the cache, 1 generated (1 requests)" in printed and server.requests == 7
    everything = printed + out.read_text() + (tmp_path / "s.json").read_text()
    assert API_KEY not in everything


def test_generate_shards_then_merge(serve, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = serve()
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(12))
    for i in range(2):
        main(_args(server, examples, tmp_path / "shards" / f"part{i}.jsonl", "--shard", f"{i}/2"))
    capsys.readouterr()
    main(["generate", "--merge", str(tmp_path / "shards" / "*.jsonl"), "--out", str(tmp_path / "all.jsonl")])
    assert "merged 2 caches into" in capsys.readouterr().out
    assert sorted(int(r["id"]) for r in cache_lines(tmp_path / "all.jsonl")) == list(range(12))
    assert server.requests == 12


def test_generate_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(2))
    base = ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples)}),
            "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit, match="error: teacher 'gpt-4o': expected openai:MODEL, openai-batch:MODEL, hf:PATH, replay:DIR or student:RUN_DIR"):
        main(base + ["--teacher", "gpt-4o"])
    with pytest.raises(SystemExit, match="error: no built-in prompt template|error: prompt template not found"):
        main(base + ["--teacher", "openai:m", "--prompt", str(tmp_path / "nope.txt")])
    with pytest.raises(SystemExit, match="error: no such cache file"):
        main(["generate", "--merge", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "m.jsonl")])
    (tmp_path / "o.jsonl").write_text("garbage\n")
    with pytest.raises(SystemExit, match=r"o\.jsonl: line 1: not a JSON record"):
        main(base + ["--teacher", "openai:m", "--base-url", "http://127.0.0.1:9/v1"])
