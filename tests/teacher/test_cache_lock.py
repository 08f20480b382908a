"""One writer per cache: a second `generate` (or `--merge`) on a cache in use stops at once, naming the lock and
its holder; the lock goes with its process, however that ends."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from fake_batch_server import BatchScript, FakeBatchServer
from teacher_helpers import API_KEY, cache_lines, nli_examples, write_jsonl

from stepdistill.cli import main
from stepdistill.locks import LockHeldError
from stepdistill.teacher.generator import RationaleGenerator, lock_cache
from stepdistill.teacher.teachers import Teacher

REFUSAL = ("error: {out}: another process is writing this cache; wait for it to end, or split the work with --shard "
           "i/n (each shard writes its own --out) (lock {out}.lock held by pid {pid} on host {host} since {since})")


def _args(url, examples_path, out, teacher):
    return ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples_path)}),
            "--teacher", teacher, "--base-url", url, "--out", str(out), "--batch-poll-interval", "0.05",
            "--progress", "false"]


def test_a_second_generate_on_the_same_cache_stops_with_one_error_line(tmp_path):
    # the first process is a batch run held in progress by the server, so the second surely meets its lock
    with FakeBatchServer(batch=BatchScript(hold={"0"})) as server:
        examples_path = write_jsonl(tmp_path / "train.jsonl", nli_examples(8))
        out = tmp_path / "cache.jsonl"
        env = {**os.environ, "OPENAI_API_KEY": API_KEY}
        command = [sys.executable, "-m", "stepdistill.cli"]
        first = subprocess.Popen(command + _args(server.url, examples_path, out, "openai-batch:gpt-4o-mini"), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not server.polls or not any(server.polls.values()):  # polling: the first holds the lock
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        holder = json.loads((tmp_path / "cache.jsonl.lock").read_text())
        second = subprocess.run(command + _args(server.url, examples_path, out, "openai:gpt-4o-mini"), env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr == REFUSAL.format(out=out, pid=first.pid, host=socket.gethostname(),
                                               since=holder["since"]) + "\n"
        assert server.count("POST", "/v1/chat/completions") == 0  # the second sent nothing
        server.release()
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 0, stderr
    assert "8 examples: 0 from the cache, 8 generated" in stdout
    assert sorted(int(r["id"]) for r in cache_lines(out)) == list(range(8))  # one record per example
    assert not (tmp_path / "cache.jsonl.lock").exists()


def test_merge_refuses_a_locked_cache_and_the_lock_goes_on_error_and_ctrl_c(serve, tmp_path, monkeypatch):
    shard = write_jsonl(tmp_path / "shard.jsonl", [{"id": "0", "key": "k0", "status": "ok"}])
    out = tmp_path / "all.jsonl"
    out.write_text("")
    with lock_cache(out):  # as a running generate holds it
        holder = json.loads((tmp_path / "all.jsonl.lock").read_text())
        with pytest.raises(SystemExit) as stop:
            main(["generate", "--merge", str(shard), "--out", str(out)])
        assert str(stop.value) == REFUSAL.format(out=out, pid=os.getpid(), host=socket.gethostname(),
                                                 since=holder["since"])
        assert out.read_text() == ""
    main(["generate", "--merge", str(shard), "--out", str(out)])  # released: now it merges
    assert cache_lines(out) == [{"id": "0", "key": "k0", "status": "ok"}]

    class Interrupted(Teacher):
        kind, model = "test", "interrupted"

        async def generate(self, prompts, ids, params):
            assert (tmp_path / "c.jsonl.lock").exists()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RationaleGenerator("esnli", Interrupted(), tmp_path / "c.jsonl", progress=False).run(nli_examples(2))
    assert not (tmp_path / "c.jsonl.lock").exists()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples_path = write_jsonl(tmp_path / "train.jsonl", nli_examples(2))
    with pytest.raises(SystemExit, match="error: the teacher refused every request"):
        main(_args(serve(status=401).url, examples_path, tmp_path / "c.jsonl", "openai:gpt-4o-mini"))
    assert not (tmp_path / "c.jsonl.lock").exists()


def test_lock_error_names_an_unknown_holder_and_a_stale_file_is_taken_over(tmp_path):
    import fcntl

    lock = tmp_path / "c.jsonl.lock"
    with open(lock, "w") as held:  # locked, but the holder has not written itself in (yet)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockHeldError, match=r"\(lock .*c\.jsonl\.lock held by an unknown process\)$"):
            with lock_cache(tmp_path / "c.jsonl"):
                pass
    lock.write_text(json.dumps({"pid": 999999, "host": "gone", "since": "then"}))  # left by a killed process
    with lock_cache(tmp_path / "c.jsonl"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
