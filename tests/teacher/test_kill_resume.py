"""SIGKILL the real `stepdistill generate` process mid-run, then resume: nothing lost twice, nothing duplicated."""

import json
import os
import signal
import subprocess
import sys
import time

from teacher_helpers import API_KEY, cache_lines, nli_examples, write_jsonl

EXAMPLES = 240
CONCURRENCY = 8


def _command(server, examples_path, out):
    return [sys.executable, "-m", "stepdistill.cli", "generate", "--task", "esnli", "--source", "jsonl",
            "--files", json.dumps({"train": str(examples_path)}), "--split", "train",
            "--teacher", "openai:gpt-4o-mini", "--base-url", server.url, "--out", str(out),
            "--concurrency", str(CONCURRENCY), "--timeout", "5", "--progress", "false"]


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_resume_gives_one_record_per_example(serve, tmp_path):
    server = serve(latency=0.03)
    examples_path = write_jsonl(tmp_path / "train.jsonl", nli_examples(EXAMPLES))
    out = tmp_path / "cache.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    kills = 0
    for kill_after_lines in (30, 110):  # two runs killed at different points
        process = subprocess.Popen(_command(server, examples_path, out), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while _lines(out) < kill_after_lines and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        assert process.returncode == -signal.SIGKILL
        assert kill_after_lines <= _lines(out) < EXAMPLES
    partial_requests = server.requests
    done = subprocess.run(_command(server, examples_path, out), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = cache_lines(out)  # every line is a whole record
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == EXAMPLES and set(ids) == {str(i) for i in range(EXAMPLES)}
    assert all(r["status"] == "ok" for r in records)
    assert EXAMPLES <= server.requests <= EXAMPLES + kills * CONCURRENCY
    assert partial_requests < server.requests
    assert f"{EXAMPLES} examples:" in done.stdout and "from the cache" in done.stdout
    assert "teacher-label agreement with gold: 100.0%" in done.stdout
    assert API_KEY not in done.stdout + done.stderr + out.read_text()
