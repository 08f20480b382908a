"""`serve`: concurrent loopback requests batched into the same labels as `predict`; bad requests get 4xx JSON errors
and the server keeps serving; the openai client works against it."""

from __future__ import annotations

import asyncio
import json

import pytest

from stepdistill.serving.export import load_for_serving
from stepdistill.serving.server import StudentService, create_app
from stepdistill.student.predict import predict

from serving_toy import COLD, WARM, loopback_server, toy_task


@pytest.fixture(scope="module")
def student(toy_run):
    return load_for_serving(toy_run, toy_task())


@pytest.fixture(scope="module")
def server(student, toy_run):
    """A server that waits up to 500 ms for a batch to fill, so that concurrent requests really share batches."""
    service = StudentService(student, "toy-run", max_batch_size=8, max_wait_ms=500, max_inputs=4)
    with loopback_server(create_app(service, max_body_bytes=2000)) as url:
        yield url, service


async def _post_all(url: str, bodies: list) -> list[tuple[int, dict]]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(body):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(body) for body in bodies))


async def _post_chunked(url: str, data: bytes) -> tuple[int, dict]:
    """A body without Content-Length (chunked transfer encoding)."""
    import aiohttp

    async def chunks():
        for start in range(0, len(data), 500):
            yield data[start:start + 500]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(url, data=chunks()) as response:
            return response.status, await response.json()


def _get(url: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_concurrent_requests_get_the_labels_of_predict(server, student):
    url, service = server
    inputs = [{"text": w} for w in WARM[:6]] + [f"the color is {w}" for w in COLD[:6]]
    expected = predict(student, inputs)
    assert [row["prediction"] for row in expected] == ["warm"] * 6 + ["cold"] * 6
    before = service.batcher.stats.batches
    replies = asyncio.run(_post_all(url + "/predict", [{"inputs": [item]} for item in inputs]))
    assert all(status == 200 for status, _ in replies), replies
    rows = [body["predictions"][0] for _, body in replies]
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in expected]
    assert [row["input"] for row in rows] == [row["input"] for row in expected]
    for row, want in zip(rows, expected):  # the same scores up to padding in a differently composed batch
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-3)
    assert replies[0][1]["model"] == "toy-run" and replies[0][1]["task"] == "toy-colors"
    # 12 single-input requests, batches of at most 8: two model calls when they arrive together, never twelve
    assert 2 <= service.batcher.stats.batches - before <= 6
    status, health = _get(url + "/health")
    assert status == 200 and 4 <= health["batches"]["largest"] <= 8
    assert health["labels"] == ["warm", "cold"] and health["input_fields"] == ["text"]


def test_rationales_and_several_inputs_in_one_request(server, student):
    url, _ = server
    inputs = [{"text": "crimson", "id": "c1"}, "the color is teal"]
    expected = predict(student, inputs, rationales=True)
    [(status, body)] = asyncio.run(_post_all(url + "/predict", [{"inputs": inputs, "rationales": True}]))
    assert status == 200, body
    rows = body["predictions"]
    assert [row["id"] for row in rows] == ["c1", 1]
    assert [(r["prediction"], r["rationale"]) for r in rows] == [(r["prediction"], r["rationale"]) for r in expected]
    assert rows[1]["rationale"].endswith("is a cold color")


BAD_REQUESTS = [
    (b"{not json", 400, "body: invalid JSON at line 1 column 2: Expecting property name enclosed in double quotes"),
    (b"", 400, "body: empty; send a JSON object"),
    (b"[1, 2]", 400, "body: must be a JSON object, got list"),
    ({"input": ["red"]}, 400, "unknown field(s): input (expected inputs, rationales)"),
    ({"rationales": True}, 400, "inputs: missing (a list of task-field objects or strings)"),
    ({"inputs": "red"}, 400, "inputs: must be a list, got str"),
    ({"inputs": []}, 400, "inputs: must not be empty"),
    ({"inputs": ["red", 7]}, 400, "inputs[1]: must be an object with the task's fields or a string, got int"),
    ({"inputs": [{"colour": "red"}]}, 400, "inputs[0].text: missing (task toy-colors needs text)"),
    ({"inputs": [{"text": ["red"]}]}, 400, "inputs[0].text: must be a string, got list"),
    ({"inputs": ["red"], "rationales": "yes"}, 400, "rationales: must be true or false, got 'yes'"),
    ({"inputs": ["red"] * 5}, 413, "inputs: 5 inputs, at most 4 per request"),
    ({"inputs": ["red" * 1000]}, 413, "body: 3016 bytes, at most 2000 (--max-body-bytes)"),
]


def test_bad_requests_get_4xx_naming_the_field_and_the_server_stays_up(server):
    url, _ = server
    replies = asyncio.run(_post_all(url + "/predict", [body for body, _, _ in BAD_REQUESTS]))
    got = [(status, body["error"]["message"]) for status, body in replies]
    assert got == [(status, message) for _, status, message in BAD_REQUESTS], "\n".join(map(repr, got))
    status, got = asyncio.run(_post_chunked(url + "/predict", b'{"inputs": ["' + b"red" * 1000 + b'"]}'))
    assert (status, got["error"]["message"]) == (413, "body: more than 2000 bytes (--max-body-bytes)")
    status, got = _get(url + "/nowhere")
    assert status == 404 and got["error"]["message"] == "GET /nowhere: Not Found"
    status, got = _get(url + "/predict")
    assert status == 405 and got["error"]["message"] == "GET /predict: Method Not Allowed"
    chat = [{"messages": []}, {"messages": [{"role": "system", "content": "hi"}]},
            {"messages": [{"role": "user", "content": 3}]}, {"model": "x"}]
    replies = asyncio.run(_post_all(url + "/v1/chat/completions", chat))
    assert [(s, b["error"]["param"]) for s, b in replies] == [
        (400, "messages"), (400, "messages"), (400, "messages[0].content"), (400, "messages")]
    # still serving, and right
    [(status, body)] = asyncio.run(_post_all(url + "/predict", [{"inputs": ["the color is gold"]}]))
    assert status == 200 and body["predictions"][0]["prediction"] == "warm"


def test_openai_client_switches_to_the_student_by_base_url(server, student):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=60)
    completion = client.completions.create(model="anything", prompt=["the color is crimson", "the color is navy"],
                                           max_tokens=16)
    assert [choice.text for choice in completion.choices] == ["warm", "cold"]
    assert completion.model == "toy-run"
    tokenizer = student.tokenizer
    prompt_tokens = sum(len(tokenizer("[label] the color is " + w)["input_ids"]) for w in ("crimson", "navy"))
    completion_tokens = sum(len(tokenizer(label)["input_ids"]) for label in ("warm", "cold"))
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert completion.usage.total_tokens == prompt_tokens + completion_tokens
    chat = client.chat.completions.create(model="anything", messages=[
        {"role": "system", "content": "You are a teacher."}, {"role": "user", "content": "the color is red"},
        {"role": "assistant", "content": "warm"}, {"role": "user", "content": "the color is azure"}])
    assert chat.choices[0].message.content == "cold" and chat.choices[0].finish_reason == "stop"
    assert chat.model == "toy-run" and chat.usage.completion_tokens == len(tokenizer("cold")["input_ids"])
    assert [model.id for model in client.models.list()] == ["toy-run"]
    with pytest.raises(openai.BadRequestError, match="stream: streaming is not supported"):
        client.completions.create(model="anything", prompt="the color is red", stream=True)


def test_deeply_nested_bodies_get_400_on_every_route(student):
    """100,000 nested arrays (under --max-body-bytes) would overflow json's recursion: a 400 naming the body."""
    service = StudentService(student, "toy-run", max_wait_ms=1)
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = {"/predict": b'{"inputs": ' + deep + b"}", "/v1/completions": b'{"prompt": ' + deep + b"}",
              "/v1/chat/completions": b'{"messages": [{"role": "user", "content": ' + deep + b"}]}"}
    message = "body: JSON nested deeper than 32 levels of arrays and objects"
    with loopback_server(create_app(service, max_body_bytes=1_048_576)) as url:
        for route, body in bodies.items():
            [(status, reply)] = asyncio.run(_post_all(url + route, [body]))
            assert (status, reply) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                                       "param": "body", "code": 400}}), route
        # 33 levels are refused, 32 reach the ordinary checks; brackets inside a string are text, not nesting
        replies = asyncio.run(_post_all(url + "/predict", [
            b'{"inputs": ' + b"[" * 32 + b"]" * 32 + b"}", b'{"inputs": ' + b"[" * 31 + b"]" * 31 + b"}",
            {"inputs": ["the color is red" + "[" * 1000]}, {"inputs": ["the color is gold"]}]))
        assert [(status, body.get("error", {}).get("message")) for status, body in replies[:2]] == [
            (400, message), (400, "inputs[0]: must be an object with the task's fields or a string, got list")]
        assert [status for status, _ in replies[2:]] == [200, 200]
        assert replies[3][1]["predictions"][0]["prediction"] == "warm"  # still serving, and right
