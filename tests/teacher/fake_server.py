"""A loopback OpenAI-compatible HTTP server with scripted completions, latency and injected faults.

Used by the teacher tests (in a thread) and by experiments/bench_generate.py (as a separate process:
``python tests/teacher/fake_server.py --latency 0.25``, which prints its URL and serves ``GET /_stats``).
Built on the standard library's ThreadingHTTPServer (one thread per keep-alive connection), so it needs nothing
beyond Python.

The example a request belongs to is found from a marker ``[ex:ID]`` in the prompt (the last one wins, so few-shot
demonstrations cannot confuse it). Faults per request are either scripted (``faults={"ID": ["429", "500"]}``:
first attempt 429, second 500, then normal) or random (``fault_rate``), drawn from a seeded hash of
(marker, attempt) so that a run is reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULTS = ("429", "500", "timeout", "malformed", "drop", "truncate")
SYNTHESIS_SEPARATOR = "\n###\n"  # between the examples of a synthesis prompt (stepdistill.teacher.synthesis_prompts)
MARKER = re.compile(r"\[ex:([^\]\s]+)\]")


def default_output(marker: str) -> str:
    return f"The hypothesis restates part of example {marker}.\nAnswer: entailment"


_NOUNS = ("violin", "harbor", "lantern", "glacier", "bakery", "orchard", "subway", "canyon", "market", "library",
          "tractor", "balloon", "meadow", "castle", "ferry", "garage")
_ADJECTIVES = ("red", "quiet", "tall", "muddy", "bright", "narrow", "wooden", "frozen", "crowded", "tiny", "golden",
               "noisy", "empty", "ancient", "sunny", "windy")


def default_synthesis(prompt: str) -> str:
    """A new e-SNLI-shaped example, different for every prompt (synthesis mode: the prompt ends with "Premise:" after
    a "###" line): words picked by a hash of the prompt, so that examples of different prompts are not near
    duplicates of each other."""
    digest = hashlib.sha256(prompt.encode()).digest()
    adjective = [_ADJECTIVES[b % 16] for b in digest[:4]]
    noun = [_NOUNS[b >> 4] for b in digest[:4]]
    return (f" A {adjective[0]} {noun[0]} and a {adjective[1]} {noun[1]} wait by the {adjective[2]} {noun[2]} with "
            f"{digest[4] % 90 + 2} {noun[3]}s.\nHypothesis: A {noun[1]} is {adjective[3]}.\nReasonings: Nothing says "
            f"whether the {noun[1]} is {adjective[3]}.\nAnswer: neutral")


@dataclass
class Script:
    latency: float = 0.0  # seconds before every answer
    outputs: dict[str, str | list[str]] = field(default_factory=dict)  # marker -> output, or outputs for n samples
    output_fn: Callable[[str], str] = default_output  # output for markers not in `outputs`
    faults: dict[str, list[str]] = field(default_factory=dict)  # marker -> fault for attempt 0, 1, ...
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULTS
    seed: int = 0
    retry_after: str = "0.05"  # Retry-After header value sent with 429
    hang_seconds: float = 3.0  # how long a "timeout" fault stalls before answering
    status: int | None = None  # answer every request with this HTTP error status (e.g. 400, 401)
    # marker -> the answer's tokens, [(token, logprob, [(alternative, logprob), ...]), ...], sent when a request
    # asks for logprobs (default: the text cut before each space, logprob -0.01, no alternatives)
    logprobs: dict[str, list] = field(default_factory=dict)
    # synthesis mode: the output for a whole prompt (None: not scripted); prompts that are synthesis prompts and
    # have no scripted output get default_synthesis(prompt)
    prompt_fn: Callable[[str], str | list[str] | None] | None = None


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 resets bursts of connections
    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # clients killed mid-request: expected
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0):
        self.script = script or Script()
        self.lock = threading.Lock()
        self.requests = 0
        self.per_marker: Counter = Counter()
        self.faults: Counter = Counter()
        self.auth_headers: set[str] = set()
        self.bodies: list[dict] = []
        self.times: dict[str, list[float]] = {}  # marker -> arrival times (monotonic)
        self.in_flight = 0
        self.max_in_flight = 0
        self.httpd = _Server((host, port), self._handler_class())
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "faults": dict(self.faults), "examples": len(self.per_marker),
                    "max_requests_per_example": max(self.per_marker.values(), default=0),
                    "max_in_flight": self.max_in_flight}

    # -- decisions --------------------------------------------------------------------------------------------
    def _fault_for(self, marker: str, attempt: int) -> str | None:
        script = self.script
        if marker in script.faults:
            planned = script.faults[marker]
            return planned[attempt] if attempt < len(planned) else None
        if script.fault_rate > 0:
            digest = hashlib.sha256(f"{script.seed}:{marker}:{attempt}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < script.fault_rate:
                return script.fault_kinds[digest[8] % len(script.fault_kinds)]
        return None

    def _outputs_for(self, marker: str, n: int, prompt: str = "") -> list[str]:
        scripted = self.script.prompt_fn(prompt) if self.script.prompt_fn else None
        if scripted is None:
            scripted = self.script.outputs.get(marker)
        if scripted is None and SYNTHESIS_SEPARATOR in prompt and prompt.rstrip().endswith("Premise:"):
            scripted = default_synthesis(prompt)
        if scripted is None:
            scripted = self.script.output_fn(marker)
        if isinstance(scripted, str):
            scripted = [scripted]
        return [scripted[i % len(scripted)] for i in range(n)]

    def _tokens_for(self, marker: str, text: str, top: int) -> list[tuple[str, float, list]]:
        scripted = self.script.logprobs.get(marker)
        if scripted is None:
            return [(token, -0.01, []) for token in re.findall(r"\s*\S+|\s+", text)]
        return [(token, logprob, list(alternatives)[:top]) for token, logprob, alternatives in scripted]

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real API
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.endswith("/_stats"):
                    self._send(200, json.dumps(server.stats()).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer()
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                chat = self.path.endswith("/chat/completions")
                if not chat and not self.path.endswith("/completions"):
                    self._send(404, b'{"error": {"message": "unknown endpoint"}}')
                    return
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                markers = MARKER.findall(prompt)
                marker = markers[-1] if markers else hashlib.sha256(prompt.encode()).hexdigest()[:12]
                with server.lock:
                    attempt = server.per_marker[marker]
                    server.per_marker[marker] += 1
                    server.requests += 1
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                    server.bodies.append(body)
                    server.times.setdefault(marker, []).append(time.monotonic())
                    fault = server._fault_for(marker, attempt)
                    if fault:
                        server.faults[fault] += 1
                if server.script.latency:
                    time.sleep(server.script.latency)
                if server.script.status:
                    self._send(server.script.status, b'{"error": {"message": "refused by script"}}')
                    return
                if fault == "429":
                    self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                               {"Retry-After": server.script.retry_after})
                    return
                if fault == "500":
                    self._send(500, b'{"error": {"message": "internal error"}}')
                    return
                if fault == "timeout":
                    time.sleep(server.script.hang_seconds)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "malformed":
                    self._send(200, b'{"id": "cmpl-1", "object": "chat.completion", "choices": [{"index": 0, "mess')
                    return
                n = int(body.get("n") or 1)
                texts = server._outputs_for(marker, n, prompt)
                finish = "stop"
                if fault == "truncate":
                    texts = [text[: max(1, len(text) // 3)] for text in texts]
                    finish = "length"
                choices = []
                for index, text in enumerate(texts):
                    # OpenAI's two formats: chat (content entries) and completions (parallel lists)
                    tokens = server._tokens_for(marker, text, int(body.get("top_logprobs") or body.get("logprobs") or 0)
                                                ) if body.get("logprobs") else None
                    if chat:
                        logprobs = None if tokens is None else {"content": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode()),
                             "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())} for a, v in alts]}
                            for t, lp, alts in tokens], "refusal": None}
                        choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                        "finish_reason": finish, "logprobs": logprobs})
                    else:
                        logprobs = None if tokens is None else {
                            "tokens": [t for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
                            "top_logprobs": [dict(alts) for _, _, alts in tokens],
                            "text_offset": [sum(len(t) for t, _, _ in tokens[:k]) for k in range(len(tokens))]}
                        choices.append({"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs})
                prompt_tokens = len(prompt.split())
                completion_tokens = sum(len(text.split()) for text in texts)
                payload = {
                    "id": f"cmpl-{marker}-{attempt}", "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model", "fake"), "choices": choices,
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }
                try:
                    self._send(200, json.dumps(payload).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=3.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(Script(latency=args.latency, fault_rate=args.fault_rate, seed=args.seed,
                                     hang_seconds=args.hang_seconds), port=args.port)
    print(server.url, flush=True)
    server.httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
