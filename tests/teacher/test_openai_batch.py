"""The Batch API teacher against the loopback files + batches server: the online backend's requests and records,
half the cost, faults re-queued within bounds, limits, and never a second batch for submitted examples."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fake_batch_server import BatchScript, FakeBatchServer
from fake_server import Script
from teacher_helpers import API_KEY, cache_lines, nli_examples, write_jsonl

from stepdistill.cli import main
from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.openai_batch import OpenAIBatchTeacher
from stepdistill.teacher.teachers import OpenAITeacher

VOLATILE = ("teacher", "cost", "created")  # what may differ between an online and a batch record


@pytest.fixture
def batch_server():
    servers = []

    def start(script: Script | None = None, **batch) -> FakeBatchServer:
        server = FakeBatchServer(script, BatchScript(**batch)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _batch(server, path, examples, retry_failed=False, concurrency=4, **options):
    teacher = OpenAIBatchTeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, poll_interval=0.01,
                                 progress=False, **options)
    generator = RationaleGenerator("esnli", teacher, path, concurrency=concurrency, retry_failed=retry_failed,
                                   progress=False)
    return generator.run(examples), teacher


def _by_id(records):
    return {record["id"]: record for record in records}


def _state(path):
    return [json.loads(line) for line in path.with_name(path.name + ".batches.jsonl").read_text().splitlines()]


def test_batch_records_are_the_online_records_at_half_the_cost(serve, batch_server, tmp_path):
    outputs = {"1": "A dog is not a cat.\nAnswer: contradiction", "2": "No answer given."}
    online_server, server = serve(outputs=outputs), batch_server(Script(outputs=outputs))
    examples = nli_examples(5)
    online = RationaleGenerator("esnli", OpenAITeacher("gpt-4o-mini", base_url=online_server.url, api_key=API_KEY),
                                tmp_path / "online.jsonl", progress=False).run(examples)
    path = tmp_path / "batch.jsonl"
    result, teacher = _batch(server, path, examples, max_requests=2)

    strip = lambda record: {k: v for k, v in record.items() if k not in VOLATILE}  # noqa: E731
    assert [strip(r) for r in result.records] == [strip(r) for r in online.records]  # keys, outputs, usage, status
    assert [r["teacher"] for r in cache_lines(path)] == ["openai-batch"] * 5
    assert [r["cost"] for r in result.records] == pytest.approx([r["cost"] / 2 for r in online.records], rel=1e-12)
    assert result.summary.cost == pytest.approx(online.summary.cost / 2) and online.summary.cost > 0
    assert (result.summary.requests, result.summary.ok, dict(result.summary.parse_failures)) == (5, 4, {"no_answer": 1})
    # the request lines: the online bodies, custom_id = the cache key, at most 2 per batch
    lines = [line for batch_id in server.batches for line in server.request_lines(batch_id)]
    assert sorted(len(server.request_lines(b)) for b in server.batches) == [1, 2, 2]
    by_key = {record["key"]: record for record in result.records}
    assert sorted(line["custom_id"] for line in lines) == sorted(by_key)
    online_bodies = {body["messages"][-1]["content"]: body for body in online_server.bodies}
    for line in lines:
        assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
        assert line["body"] == online_bodies[line["body"]["messages"][-1]["content"]]
        assert f"[ex:{by_key[line['custom_id']]['id']}]" in line["body"]["messages"][-1]["content"]
    assert {b["endpoint"] for b in server.batches.values()} == {"/v1/chat/completions"}
    assert {b["completion_window"] for b in server.batches.values()} == {"24h"}
    assert (server.count("POST", "/v1/files"), server.count("POST", "/v1/batches"),
            server.count("GET", "/v1/files/{id}/content"), server.count("POST", "/v1/chat/completions")) == (3, 3, 3, 0)
    assert [event["event"] for event in _state(path)].count("created") == 3
    assert API_KEY not in path.read_text() + json.dumps(_state(path))
    assert teacher.summary_line() == ("batch API calls: 3 uploads, 3 batches created, 0 resumed, 3 polls, "
                                      "3 downloads, 0 batch lists")

    calls = len(server.log)
    again, teacher = _batch(server, path, examples, max_requests=2)  # a rerun sends nothing
    assert len(server.log) == calls and again.summary.cached == 5 and len(cache_lines(path)) == 5
    completions, _ = _batch(server, tmp_path / "completions.jsonl", examples[:1], endpoint="completions")
    (line,) = server.request_lines(list(server.batches)[-1])
    assert line["url"] == "/v1/completions" and "[ex:0]" in line["body"]["prompt"] and "messages" not in line["body"]
    assert completions.records[0]["status"] == "ok"


def test_upload_failure_retried_then_persistent_is_one_error_line(batch_server, tmp_path, monkeypatch, capsys):
    server = batch_server(upload_errors=[500])
    result, _ = _batch(server, tmp_path / "c.jsonl", nli_examples(2))
    assert server.uploads_tried == 2 and len(server.batches) == 1 and result.summary.ok == 2

    server = batch_server(upload_errors=[500] * 10)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(2))
    out = tmp_path / "failed.jsonl"
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples)}),
              "--teacher", "openai-batch:gpt-4o-mini", "--base-url", server.url, "--out", str(out),
              "--max-attempts", "2", "--progress", "false"])
    assert str(stop.value) == ("error: Batch API: uploading the batch input file failed after 2 attempts: Error code: "
                               "500 - upload failed (scripted)")
    assert server.uploads_tried == 2 and not server.batches
    assert out.read_text() == "" and not (tmp_path / "failed.jsonl.batches.jsonl").exists()
    assert not (tmp_path / "failed.jsonl.lock").exists()


def test_expired_batch_requeues_only_its_missing_examples(batch_server, tmp_path):
    server = batch_server(expire={"1", "2"}, polls_in_progress=1)
    path = tmp_path / "c.jsonl"
    result, teacher = _batch(server, path, nli_examples(4))
    first, second = server.batches.values()
    assert (first["status"], second["status"]) == ("expired", "completed")
    keys = {r["id"]: r["key"] for r in result.records}
    assert [line["custom_id"] for line in server.request_lines(second["id"])] == [keys["1"], keys["2"]]
    assert {r["id"]: (r["status"], r["attempts"], r["attempt_errors"]) for r in cache_lines(path)} == {
        "0": ("ok", 1, []), "1": ("ok", 2, ["batch_expired"]), "2": ("ok", 2, ["batch_expired"]), "3": ("ok", 1, [])}
    assert result.summary.requests == 6 and dict(result.summary.retried) == {"batch_expired": 2}
    assert _state(path)[-2]["prior_errors"] == {keys["1"]: ["batch_expired"], keys["2"]: ["batch_expired"]}
    assert teacher.calls["poll"] == 4  # one in progress and one ended, per batch


def test_partial_errors_retry_what_can_succeed_within_the_round_limit(batch_server, tmp_path):
    script = Script(faults={"0": ["500"], "1": ["500"] * 3, "3": ["malformed"], "4": ["truncate"]})
    server = batch_server(script, bad_request={"2"})
    path = tmp_path / "c.jsonl"
    result, _ = _batch(server, path, nli_examples(6), max_rounds=2)
    records = _by_id(cache_lines(path))
    assert len(cache_lines(path)) == 6 and len(server.batches) == 2
    assert {i: (r["status"], r["error"], r["attempts"], r["attempt_errors"]) for i, r in records.items()} == {
        "0": ("ok", None, 2, ["http_500"]),
        "1": ("failed", "http_500", 2, ["http_500", "http_500"]),
        "2": ("failed", "http_400", 1, ["http_400"]),  # a bad request stays bad: not re-queued
        "3": ("ok", None, 2, ["malformed_response"]),
        "4": ("parse_error", "truncated", 1, []),
        "5": ("ok", None, 1, [])}
    assert records["1"]["error_detail"] == "Error code: 500 - internal error (after 2 batches)"
    assert records["2"]["error_detail"] == "Error code: 400 - max_tokens is too large (scripted)"
    assert records["1"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0} and records["1"]["cost"] == 0.0
    assert records["4"]["finish_reason"] == "length"
    second = list(server.batches)[1]
    assert sorted(records[str(i)]["key"] for i in (0, 1, 3)) == sorted(l["custom_id"] for l in server.request_lines(second))
    assert dict(result.summary.request_failures) == {"http_500": 1, "http_400": 1}


def test_cancelled_and_failed_batches_end_as_failed_records_after_max_rounds(batch_server, tmp_path):
    server = batch_server(end_status={1: "cancelled", 2: "failed", 3: "failed"})
    result, _ = _batch(server, tmp_path / "c.jsonl", nli_examples(2), max_rounds=3)
    assert len(server.batches) == 3
    for record in result.records:
        assert (record["status"], record["error"], record["attempts"], record["attempt_errors"]) == (
            "failed", "batch_failed", 3, ["batch_cancelled", "batch_failed", "batch_failed"])
        assert record["error_detail"] == ("batch batch_3 ended failed without an answer for this request: "
                                          "token_limit_exceeded: Enqueued token limit reached. (after 3 batches)")


def test_batches_split_at_the_request_and_size_limits(batch_server, tmp_path):
    server = batch_server()
    examples = nli_examples(5) + [{"id": 5, "premise": "long " * 2000 + "[ex:5].", "hypothesis": "x", "label": "entailment"}]
    line_bytes = 1722  # one request line of nli_examples (checked below)
    result, _ = _batch(server, tmp_path / "c.jsonl", examples, max_requests=3, max_bytes=2 * line_bytes + 100)
    files = [server.files[b["input_file_id"]]["content"] for b in server.batches.values()]
    assert {len(line) + 1 for content in files for line in content.splitlines()} == {line_bytes}
    # chunks of 3: [0, 1, 2] cut at 2 lines by size; [3, 4, 5] without 5, which no file can hold
    assert sorted(content.count(b"\n") for content in files) == [1, 2, 2]
    assert all(len(content) <= 2 * line_bytes + 100 for content in files)
    sent = sorted(json.loads(line)["custom_id"] for content in files for line in content.splitlines())
    assert sent == sorted(r["key"] for r in result.records if r["id"] != "5")
    too_large = _by_id(result.records)["5"]
    assert (too_large["status"], too_large["error"], too_large["attempts"]) == ("failed", "request_too_large", 0)
    assert too_large["error_detail"].startswith("the request line is 11,") and "over the batch input file limit of 3,544" in too_large["error_detail"]


def test_a_created_batch_whose_id_was_not_recorded_is_found_not_made_again(batch_server, tmp_path):
    server = batch_server(lose_create_answer={1})
    path = tmp_path / "c.jsonl"
    result, teacher = _batch(server, path, nli_examples(3))
    assert len(server.batches) == 1 and server.count("POST", "/v1/batches") == 1 and teacher.calls["list"] == 1
    assert result.summary.ok == 3 and _state(path)[-1] == {**_state(path)[-1], "batch_id": "batch_1", "adopted": True}
    # a crash between creating the batch and recording it: the log has the upload only
    state = path.with_name(path.name + ".batches.jsonl")
    state.write_text(state.read_text().splitlines(keepends=True)[0])
    path.unlink()
    again, teacher = _batch(server, path, nli_examples(3))
    assert server.count("POST", "/v1/batches") == 1 and server.count("POST", "/v1/files") == 1
    assert teacher.calls["list"] == 1 and teacher.calls["resume"] == 1
    assert [r["raw_output"] for r in again.records] == [r["raw_output"] for r in result.records]


def test_when_it_cannot_tell_whether_a_batch_exists_it_stops_instead_of_creating_another(batch_server, tmp_path):
    from stepdistill.teacher.openai_batch import BatchAPIError

    server = batch_server(lose_create_answer={1}, list_status=500)
    path = tmp_path / "c.jsonl"
    with pytest.raises(BatchAPIError, match=r"^Batch API: could not check whether input file file-1 already has a "
                                            r"batch \(listing batches failed: Error code: 500 - listing failed "
                                            r"\(scripted\)\); run the same command again$"):
        _batch(server, path, nli_examples(2), max_attempts=2)
    assert len(server.batches) == 1 and server.count("GET", "/v1/batches") == 2  # the client retried the list once
    server.batch_script.list_status = None
    result, teacher = _batch(server, path, nli_examples(2))  # the rerun finds the batch
    assert len(server.batches) == 1 and teacher.calls["resume"] == 1 and result.summary.ok == 2


def test_retry_failed_sends_a_failed_example_again_once(batch_server, tmp_path):
    server = batch_server(Script(faults={"0": ["500"]}))
    path = tmp_path / "c.jsonl"
    first, _ = _batch(server, path, nli_examples(2), max_rounds=1)
    assert [r["status"] for r in first.records] == ["failed", "ok"]
    retried, _ = _batch(server, path, nli_examples(2), max_rounds=1, retry_failed=True)
    assert [r["status"] for r in retried.records] == ["ok", "ok"] and len(server.batches) == 2
    assert [line["custom_id"] for line in server.request_lines("batch_2")] == [first.records[0]["key"]]
    calls = len(server.log)
    _batch(server, path, nli_examples(2), retry_failed=True)
    assert len(server.log) == calls  # nothing failed any more: nothing sent


def _generate_args(server, examples_path, out, *extra):
    return ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples_path)}),
            "--teacher", "openai-batch:gpt-4o-mini", "--base-url", server.url, "--out", str(out),
            "--batch-poll-interval", "0.05", "--batch-max-requests", "3", "--concurrency", "2", "--progress", "false",
            *extra]


def _wait_for(condition, process, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_while_polling_resumes_the_same_batch_and_never_resubmits(batch_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = batch_server(hold={"4"})  # the batch of examples 3-5 runs until released; that of 0-2 ends at once
    examples_path = write_jsonl(tmp_path / "train.jsonl", nli_examples(6))
    out = tmp_path / "cache.jsonl"
    command = [sys.executable, "-m", "stepdistill.cli", *_generate_args(server, examples_path, out)]
    process = subprocess.Popen(command, env={**os.environ, "OPENAI_API_KEY": API_KEY}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    held = lambda: [b for b in server.batches.values() if b["status"] == "in_progress"]  # noqa: E731
    _wait_for(lambda: out.exists() and len(cache_lines(out)) == 3 and held() and server.polls[held()[0]["id"]] >= 2,
              process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    (running,) = held()
    assert sorted(r["id"] for r in cache_lines(out)) == ["0", "1", "2"]
    assert [e["event"] for e in _state(out)].count("created") == 2  # both batch ids on disk before any poll
    stale = json.loads((tmp_path / "cache.jsonl.lock").read_text())  # left by the killed process, but not held
    assert stale["pid"] == process.pid
    log_at_kill = len(server.log)

    server.release()
    main(_generate_args(server, examples_path, out))  # the same command again
    printed = capsys.readouterr().out
    assert "6 examples: 3 from the cache, 3 generated (3 requests)" in printed
    assert "batch API calls: 0 uploads, 0 batches created, 1 resumed, 1 polls, 1 downloads, 0 batch lists" in printed
    assert server.log[log_at_kill:] == [("GET", f"/v1/batches/{running['id']}"),
                                        ("GET", f"/v1/files/{running['output_file_id']}/content")]
    assert len(server.batches) == 2 and server.count("POST", "/v1/batches") == 2 and server.count("POST", "/v1/files") == 2
    records = cache_lines(out)
    assert sorted(r["id"] for r in records) == [str(i) for i in range(6)] and {r["status"] for r in records} == {"ok"}
    assert not (tmp_path / "cache.jsonl.lock").exists()
