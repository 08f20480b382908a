"""`stepdistill serve`: the trained student behind aiohttp, with dynamic batching and OpenAI-compatible routes.

Routes: ``POST /predict`` (labels, rationales on request), ``GET /health``, ``GET /v1/models``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` (the prompt / last user message is the student's input,
the answer is its label, ``usage`` counts student tokens), so an OpenAI client switches from teacher to student by
changing its base URL. Bad requests get a 4xx JSON error naming the field; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from typing import Any, Literal

from .batcher import DynamicBatcher, PredictionError, QueueFull
from .protocol import RequestError, chat_body, completion_body, parse_chat, parse_completion, parse_predict

log = logging.getLogger("stepdistill.serving")

DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_MAX_INPUTS = 256
MAX_JSON_DEPTH = 32  # a request needs 4 levels (a chat message's content parts); OpenAI extras a few more

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENERS = frozenset(b"[{")


class StudentService:
    """One loaded student, its batcher and its token counting; the handlers' shared state."""

    def __init__(self, student: Any, name: str, max_batch_size: int = 64, max_wait_ms: float = 10.0,
                 max_inputs: int = DEFAULT_MAX_INPUTS):
        from ..student.predict import predict

        self.student, self.name, self.max_inputs = student, name, max_inputs
        self.task = student.task
        self._predict = predict
        self.batcher = DynamicBatcher(self._run_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    def _run_batch(self, inputs: list[Any], rationales: bool) -> list[dict[str, Any]]:
        return self._predict(self.student, inputs, rationales=rationales, batch_size=len(inputs))

    async def predict(self, inputs: list[Any], rationales: bool = False) -> list[dict[str, Any]]:
        """``predict``'s rows for these inputs (ids as ``predict`` gives them for this list), via the batcher."""
        try:
            rows = await self.batcher.submit(inputs, rationales)
        except QueueFull as exc:
            raise RequestError(f"server busy: {exc}; retry later", None, 503) from None
        for i, row in enumerate(rows):
            if isinstance(row, PredictionError):
                raise RequestError(f"inputs[{i}]: {row}", f"inputs[{i}]")
            if isinstance(row, BaseException):
                raise row
        out = []
        for i, (item, row) in enumerate(zip(inputs, rows)):
            row = dict(row)
            row["id"] = item.get(self.task.id_field, i) if isinstance(item, dict) else i
            out.append(row)
        return out

    def token_counts(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """(prompt, completion) tokens as the student sees them: prefixed input (truncated) and label + end token."""
        tokenizer, meta = self.student.tokenizer, self.student.meta
        prefix = meta.get("label_prefix", "[label] ")
        prompts = tokenizer([prefix + row["input"] for row in rows], truncation=True,
                            max_length=meta.get("max_input_length", 512))["input_ids"]
        answers = tokenizer([row["prediction"] for row in rows])["input_ids"]
        return sum(map(len, prompts)), sum(map(len, answers))

    def health(self) -> dict[str, Any]:
        task, meta, stats = self.task, self.student.meta, self.batcher.stats
        return {"status": "ok", "model": self.name, "task": task.name,
                "labels": None if task.free_form else list(task.labels), "free_form": task.free_form,
                "input_fields": list(task.input_fields), "method": meta.get("method"),
                "quantize": meta.get("quantize"),
                "runtime": "onnxruntime" if meta.get("format") == "onnx" else "pytorch",
                "max_batch_size": self.batcher.max_batch_size, "max_wait_ms": self.batcher.max_wait * 1000,
                "max_inputs": self.max_inputs,
                "batches": {"count": stats.batches, "items": stats.items, "largest": stats.largest_batch}}


def nested_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than ``limit`` deep (brackets inside strings do not count).

    ``json.loads`` recurses once per level, so a body of 100,000 ``[`` under --max-body-bytes would end in a
    RecursionError. The json module has no depth option, so the brackets are counted here: C-speed passes drop the
    strings and everything but brackets, and the loop over what is left stops at the first level past ``limit``.
    Text that is not valid JSON may count too deep, never too shallow for the prefix that the parser accepts.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, delete=_NOT_BRACKETS):
        depth += 1 if byte in _OPENERS else -1
        if depth > limit:
            return True
    return False


def _json(body: Any, status: int = 200):
    from aiohttp import web

    return web.json_response(body, status=status, dumps=lambda obj: json.dumps(obj, ensure_ascii=False))


async def _read_json(request) -> Any:
    from aiohttp import web

    limit = request.app["max_body_bytes"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(f"body: {request.content_length} bytes, at most {limit} (--max-body-bytes)", "body", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = None
    if raw is None or len(raw) > limit:  # a chunked body has no Content-Length to check first
        raise RequestError(f"body: more than {limit} bytes (--max-body-bytes)", "body", 413)
    if not raw:
        raise RequestError("body: empty; send a JSON object", "body")
    too_deep = RequestError(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects", "body")
    if nested_deeper_than(raw, MAX_JSON_DEPTH):
        raise too_deep
    try:
        return json.loads(raw)
    except RecursionError:  # not reached after the check above; kept so that no parse can end as a 500
        raise too_deep from None
    except UnicodeDecodeError:
        raise RequestError("body: not UTF-8", "body") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"body: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", "body") from None


def create_app(service: StudentService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The aiohttp application; the batcher starts and stops with it."""
    from aiohttp import web

    @web.middleware
    async def json_errors(request, handler):
        try:
            return await handler(request)
        except RequestError as exc:
            return _json(exc.body(), exc.status)
        except web.HTTPException as exc:  # unknown route, wrong method: JSON too
            if exc.status < 400:
                raise
            return _json(RequestError(f"{request.method} {request.path}: {exc.reason}", None, exc.status).body(),
                         exc.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _json(RequestError("internal error (logged by the server)", None, 500).body(), 500)

    async def predict(request):
        parsed = parse_predict(await _read_json(request), service.task, service.max_inputs)
        rows = await service.predict(parsed.inputs, parsed.rationales)
        return _json({"model": service.name, "task": service.task.name, "predictions": rows})

    async def completions(request):
        parsed = parse_completion(await _read_json(request), service.max_inputs)
        rows = await service.predict(parsed.inputs)
        return _json(completion_body(service.name, [row["prediction"] for row in rows], *service.token_counts(rows)))

    async def chat_completions(request):
        parsed = parse_chat(await _read_json(request))
        rows = await service.predict(parsed.inputs)
        return _json(chat_body(service.name, rows[0]["prediction"], *service.token_counts(rows)))

    async def health(request):
        return _json(service.health())

    async def models(request):
        return _json({"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                                  "owned_by": "stepdistill"}]})

    async def batcher_lifetime(app):
        await service.batcher.start()
        yield
        await service.batcher.stop()

    app = web.Application(middlewares=[json_errors], client_max_size=max_body_bytes)
    app["max_body_bytes"] = max_body_bytes
    app.cleanup_ctx.append(batcher_lifetime)
    app.add_routes([web.post("/predict", predict), web.get("/health", health), web.get("/v1/models", models),
                    web.post("/v1/completions", completions), web.post("/v1/chat/completions", chat_completions)])
    return app


async def start_server(app, host: str, port: int):
    """Start ``app`` on host:port (0: a free port); returns (runner, the port bound)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


async def _serve_until_signal(app, host: str, port: int, name: str) -> None:
    try:
        runner, bound = await start_server(app, host, port)
    except OSError as exc:
        raise SystemExit(f"error: --host {host} --port {port}: cannot listen: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {name} on http://{host}:{bound} (POST /predict, /v1/completions, /v1/chat/completions; "
          f"GET /health)", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_command(run_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 64,
                  max_wait_ms: float = 10.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  max_inputs: int = DEFAULT_MAX_INPUTS, task: str | None = None, quantize: Literal["int8"] | None = None,
                  model_name: str | None = None) -> None:
    """Serve a trained student over HTTP, concurrent requests batched dynamically.

    Routes: POST /predict, OpenAI-compatible POST /v1/completions and /v1/chat/completions, GET /health,
    GET /v1/models. Bad requests get a 4xx JSON error naming the field. The folder may come first without its
    option: `stepdistill serve RUN_DIR`.

    Args:
        run_dir: A run folder from `stepdistill train`, its model/ subfolder, or a `stepdistill export` folder.
        host: Interface to listen on.
        port: Port (0: any free port; the line printed at startup gives it).
        max_batch_size: Most inputs per model call.
        max_wait_ms: How long the first input of a batch waits for others to join it.
        max_body_bytes: Largest request body accepted (413 beyond).
        max_inputs: Most inputs in one request (413 beyond).
        task: Override the task saved with the model (name, spec.json or file.py:Class).
        quantize: int8: dynamic int8 quantisation at load (an export made with --quantize int8 asks for it itself).
        model_name: Name echoed in responses' model field (default: the run folder's name).
    """
    from .export import load_for_serving, run_name

    for option, value, least in (("--max-batch-size", max_batch_size, 1), ("--max-wait-ms", max_wait_ms, 0),
                                 ("--max-body-bytes", max_body_bytes, 1), ("--max-inputs", max_inputs, 1),
                                 ("--port", port, 0)):
        if value < least:
            raise SystemExit(f"error: {option} must be at least {least}, got {value}")
    try:
        student = load_for_serving(run_dir, task, quantize)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    name = model_name or run_name(run_dir)
    service = StudentService(student, name, max_batch_size, max_wait_ms, max_inputs)
    asyncio.run(_serve_until_signal(create_app(service, max_body_bytes), host, port, name))
