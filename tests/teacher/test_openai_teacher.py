"""The API teacher against a real loopback HTTP server, driven by the real openai client."""

import asyncio
import importlib.util
import logging

import pytest
from teacher_helpers import API_KEY, cache_lines, nli_examples

from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.teachers import (GenerationParams, OpenAITeacher, RateLimiter, TeacherFatalError,
                                          parse_retry_after)


def _teacher(server, **options):
    defaults = dict(base_url=server.url, api_key=API_KEY, timeout=0.4, backoff_base=0.01, backoff_max=0.05,
                    max_attempts=4)
    return OpenAITeacher("gpt-4o-mini", **{**defaults, **options})


def _run(server, tmp_path, examples, concurrency=4, **options):
    generator = RationaleGenerator("esnli", _teacher(server, **options), tmp_path / "cache.jsonl",
                                   concurrency=concurrency, progress=False)
    return generator.run(examples)


HAVE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None


@pytest.mark.parametrize("http_backend", [
    pytest.param("aiohttp", marks=pytest.mark.skipif(not HAVE_AIOHTTP, reason="aiohttp not installed (openai[aiohttp])")),
    "httpx"])
def test_every_fault_is_retried_and_counted(serve, tmp_path, caplog, http_backend):
    faults = {"0": ["429"], "1": ["500", "500"], "2": ["timeout"], "3": ["malformed"], "4": ["drop"],
              "5": ["truncate"], "6": ["429", "drop", "500"]}
    server = serve(faults=faults, hang_seconds=3.0)
    caplog.set_level(logging.DEBUG)
    # 1 s per attempt: a fault hangs for 3 s, and an answer comes in time even while another test worker trains
    result = _run(server, tmp_path, nli_examples(8), http_backend=http_backend, timeout=1.0)
    by_id = {r["id"]: r for r in result.records}
    assert [by_id[str(i)]["attempt_errors"] for i in range(8)] == [
        ["http_429"], ["http_500", "http_500"], ["timeout"], ["malformed_response"], ["connection"], [], 
        ["http_429", "connection", "http_500"], []]
    assert [by_id[str(i)]["attempts"] for i in range(8)] == [2, 3, 2, 2, 2, 1, 4, 1]
    assert server.requests == 17 == result.summary.requests
    # a truncated answer is not retried (same prompt, same limit): it is recorded as a parse failure
    assert by_id["5"]["status"] == "parse_error" and by_id["5"]["error"] == "truncated"
    assert by_id["5"]["finish_reason"] == "length" and by_id["5"]["raw_output"] == "The hypothesis resta"
    assert all(by_id[str(i)]["status"] == "ok" and by_id[str(i)]["label"] == "entailment" for i in (0, 1, 2, 3, 4, 6, 7))
    s = result.summary
    assert (s.ok, dict(s.parse_failures), dict(s.request_failures)) == (7, {"truncated": 1}, {})
    assert dict(s.retried) == {"http_429": 2, "http_500": 3, "timeout": 1, "malformed_response": 1, "connection": 2}
    # the key reached the server, and nowhere else
    assert server.auth_headers == {f"Bearer {API_KEY}"}
    assert API_KEY not in (tmp_path / "cache.jsonl").read_text()
    assert API_KEY not in caplog.text and "retrying" in caplog.text
    assert API_KEY not in repr(result.summary.as_dict()) and API_KEY not in repr(_teacher(server))


def test_retries_run_out_into_a_recorded_failure(serve, tmp_path):
    server = serve(faults={"0": ["500"] * 9, "1": ["timeout"] * 9}, hang_seconds=1.0)
    result = _run(server, tmp_path, nli_examples(3), max_attempts=3, timeout=0.2)
    records = {r["id"]: r for r in cache_lines(tmp_path / "cache.jsonl")}
    assert records["0"]["status"] == "failed" and records["0"]["error"] == "http_500"
    assert records["0"]["attempt_errors"] == ["http_500"] * 3 and records["0"]["raw_output"] is None
    assert "internal error" in records["0"]["error_detail"]
    assert records["1"]["error"] == "timeout" and records["1"]["attempts"] == 3
    assert records["2"]["status"] == "ok"
    assert dict(result.summary.request_failures) == {"http_500": 1, "timeout": 1}
    assert server.per_marker["0"] == 3 and server.per_marker["1"] == 3


def test_retry_after_is_honoured(serve, tmp_path):
    server = serve(faults={"0": ["429", "429"]}, retry_after="0.4")
    _run(server, tmp_path, nli_examples(1), backoff_base=0.001)
    first, second, third = server.times["0"]
    assert second - first >= 0.4 and third - second >= 0.4


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_bad_request_is_not_retried_and_bad_key_stops_the_run(serve, tmp_path):
    server = serve(status=400)
    result = _run(server, tmp_path, nli_examples(2))
    assert [(r["status"], r["error"], r["attempts"]) for r in result.records] == [("failed", "http_400", 1)] * 2
    assert "refused by script" in result.records[0]["error_detail"] and server.requests == 2
    server = serve(status=401)
    with pytest.raises(TeacherFatalError, match="401") as info:
        _run(server, tmp_path / "other", nli_examples(20), concurrency=2)
    assert API_KEY not in str(info.value)
    assert server.requests <= 2  # the run stops instead of failing every example


def test_completions_endpoint_usage_and_cost(serve, tmp_path):
    server = serve(outputs={"0": "Dogs are animals and running is moving.\nAnswer: entailment"})
    result = _run(server, tmp_path, nli_examples(2), endpoint="completions")
    body = server.bodies[0]
    assert "prompt" in body and "messages" not in body and body["stop"] == ["\nPremise:"] and body["max_tokens"] == 256
    record = result.records[0]
    assert record["rationale"] == "Dogs are animals and running is moving." and record["params"]["endpoint"] == "completions"
    prompt_tokens = len(body["prompt"].split())
    assert record["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 9}
    assert record["cost"] == pytest.approx((prompt_tokens * 0.15 + 9 * 0.60) / 1e6)
    s = result.summary
    assert s.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in result.records)
    assert s.cost == pytest.approx(sum(r["cost"] for r in result.records))
    # unknown model: tokens counted, cost unknown; prices can be supplied
    teacher = OpenAITeacher("my-model", base_url=server.url, api_key=API_KEY, prices={"my-model": (1.0, 2.0)})
    assert teacher.cost(1000, 500) == pytest.approx(0.002)
    assert OpenAITeacher("my-model", base_url=server.url, api_key=API_KEY).cost(1000, 500) is None


def test_concurrency_is_bounded(serve, tmp_path):
    server = serve(latency=0.05)
    _run(server, tmp_path, nli_examples(24), concurrency=5)
    assert server.max_in_flight == 5 and server.requests == 24


def test_key_from_environment_and_missing_key(serve, monkeypatch):
    server = serve()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    teacher = OpenAITeacher("m")

    async def ask():
        try:
            return await teacher.generate(["hi [ex:7]"], ["7"], GenerationParams())
        finally:
            await teacher.aclose()

    replies = asyncio.run(ask())
    assert replies[0].outputs == ["The hypothesis restates part of example 7.\nAnswer: entailment"]
    assert server.auth_headers == {"Bearer sk-env-key"}
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAITeacher("m")


def test_rate_limiters():
    async def timed(limiter, amounts):
        loop = asyncio.get_running_loop()
        start = loop.time()
        for amount in amounts:
            await limiter.acquire(amount)
        return loop.time() - start

    # 20 per second with a burst of 1: ten acquisitions need about 9 / 20 s
    assert asyncio.run(timed(RateLimiter(20.0, burst=1.0), [1] * 10)) >= 0.4
    # token bucket: an overdraft (real usage above the estimate) delays the next caller
    limiter = RateLimiter(100.0, burst=100.0)

    async def overdraft():
        await limiter.acquire(50)
        limiter.settle(100)  # used 150, not 50
        return await timed(limiter, [10])

    assert asyncio.run(overdraft()) >= 0.5
