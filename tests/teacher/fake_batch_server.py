"""The loopback server of fake_server.py plus the OpenAI Batch API's files and batches endpoints, with faults.

Endpoints: ``POST /v1/files`` (multipart, purpose "batch"), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``limit``/``after``), beside the online
``/v1/chat/completions`` and ``/v1/completions`` of :class:`FakeOpenAIServer`.

A batch ends (``completed``, or as scripted: ``expired`` with some lines unanswered, ``cancelled`` with none
answered, ``failed`` at validation) at the poll after ``BatchScript.polls_in_progress`` polls, and not while it
holds a marker of ``BatchScript.hold``. Each of its lines is then answered by POSTing its body to this server's own
online endpoint, so a batch answer is exactly the online answer (the same outputs, usage and scripted per-request
faults: a ``500`` fault becomes an error-file line).
``log`` holds every request from outside, ``(method, path)``, in order: tests assert on it.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs, urlparse

from fake_server import MARKER, FakeOpenAIServer, Script

INTERNAL = "X-Fake-Batch-Internal"  # marks the server's calls to itself (kept out of the log)


@dataclass
class BatchScript:
    upload_errors: list[int] = field(default_factory=list)  # HTTP status of the first uploads, in order, then success
    polls_in_progress: int = 0  # polls that see a batch running before the one that sees it end
    hold: set[str] = field(default_factory=set)  # markers: a batch holding one stays in progress until release()
    bad_request: set[str] = field(default_factory=set)  # markers whose lines get a 400 error line
    # markers of examples that a batch leaves unanswered, once each: a batch holding one expires, its others answered
    expire: set[str] = field(default_factory=set)
    end_status: dict[int, str] = field(default_factory=dict)  # batch number (1, 2, ...) -> "cancelled" or "failed"
    lose_create_answer: set[int] = field(default_factory=set)  # batch numbers created but answered with a 500
    list_status: int | None = None  # answer every batch list with this HTTP error status


class FakeBatchServer(FakeOpenAIServer):
    def __init__(self, script: Script | None = None, batch: BatchScript | None = None, host: str = "127.0.0.1",
                 port: int = 0):
        self.batch_script = batch or BatchScript()
        self.log: list[tuple[str, str]] = []
        self.files: dict[str, dict] = {}  # id -> {"content": bytes, "purpose", "filename"}
        self.batches: dict[str, dict] = {}  # id -> the batch object (in creation order)
        self.polls: dict[str, int] = {}
        self.uploads_tried = 0
        self.expired: set[str] = set()
        self.batch_lock = threading.Lock()
        super().__init__(script, host, port)

    def release(self) -> None:
        self.batch_script.hold = set()

    def count(self, method: str, path: str) -> int:
        """Requests from outside to ``path``; ``{id}`` stands for any file or batch id."""
        return sum(1 for m, p in self.log
                   if m == method and path in (p, re.sub(r"^/v1/(files|batches)/[^/]+", r"/v1/\1/{id}", p)))

    def request_lines(self, batch_id: str) -> list[dict]:
        content = self.files[self.batches[batch_id]["input_file_id"]]["content"]
        return [json.loads(line) for line in content.splitlines()]

    # -- the batch's life -----------------------------------------------------------------------------------------
    def _answer_line(self, line: dict) -> tuple[int, object]:
        host, port = self.httpd.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("POST", line["url"], body=json.dumps(line["body"]),
                               headers={"Content-Type": "application/json", INTERNAL: "1"})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")  # a "malformed" fault: not JSON

    def _end(self, batch: dict) -> None:
        number = list(self.batches).index(batch["id"]) + 1
        status = self.batch_script.end_status.get(number, "completed")
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]]["content"].splitlines()]
        markers = [self._marker(line) for line in lines]
        unanswered = {marker for marker in markers if marker in self.batch_script.expire - self.expired}
        if unanswered:
            status = "expired"
            self.expired |= unanswered
        outputs, errors = [], []
        for index, line in enumerate(lines):
            request_id = f"batch_req_{batch['id']}_{index}"
            if status in ("completed", "expired") and markers[index] not in unanswered:
                if markers[index] in self.batch_script.bad_request:
                    code, body = 400, {"error": {"message": "max_tokens is too large (scripted)", "type": "invalid"}}
                else:
                    code, body = self._answer_line(line)
                target = outputs if code == 200 else errors
                target.append({"id": request_id, "custom_id": line["custom_id"],
                               "response": {"status_code": code, "request_id": f"req_{index}", "body": body},
                               "error": None})
            elif status in ("expired", "cancelled"):
                errors.append({"id": request_id, "custom_id": line["custom_id"], "response": None,
                               "error": {"code": f"batch_{status}", "message": "This request could not be executed "
                                         f"before the batch was {status}."}})
        now = int(time.time())
        batch.update(status=status, request_counts={"total": len(lines), "completed": len(outputs),
                                                    "failed": len(errors)}, **{f"{status}_at": now})
        if status == "failed":
            batch["errors"] = {"object": "list", "data": [{"code": "token_limit_exceeded", "line": None, "param": None,
                                                           "message": "Enqueued token limit reached."}]}
            return
        for kind, rows in (("output", outputs), ("error", errors)):
            if rows:
                file_id = self._store(b"".join(json.dumps(row).encode() + b"\n" for row in rows), f"batch_{kind}",
                                      f"{batch['id']}_{kind}.jsonl")
                batch[f"{kind}_file_id"] = file_id

    @staticmethod
    def _marker(line: dict) -> str:
        body = line["body"]
        found = MARKER.findall(body["messages"][-1]["content"] if "messages" in body else body["prompt"])
        return found[-1] if found else ""

    def _store(self, content: bytes, purpose: str, filename: str) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = {"content": content, "purpose": purpose, "filename": filename}
        return file_id

    # -- HTTP -------------------------------------------------------------------------------------------------------
    def _handler_class(self):
        online = super()._handler_class()
        server = self

        class Handler(online):
            def _json(self, status: int, payload: dict, headers: dict | None = None):
                self._send(status, json.dumps(payload).encode(), headers)

            def _error(self, status: int, message: str):
                # retry-after-ms: the client's retries wait 10 ms, not its 0.5-8 s backoff
                self._json(status, {"error": {"message": message, "type": "fake"}}, {"retry-after-ms": "10"})

            def _route(self, method: str) -> bool:
                url = urlparse(self.path)
                path = url.path.removeprefix("/v1")
                if self.headers.get(INTERNAL) is None:
                    with server.lock:
                        server.log.append((method, url.path))
                if not path.startswith(("/files", "/batches")):
                    return False
                with server.batch_lock:  # not server.lock: ending a batch calls the online endpoint, which takes it
                    if method == "POST" and path == "/files":
                        self._upload()
                    elif method == "GET" and path.startswith("/files/") and path.endswith("/content"):
                        stored = server.files.get(path.split("/")[2])
                        if stored is None:
                            self._error(404, "no such file")
                        else:
                            self._send(200, stored["content"], {"Content-Type": "application/octet-stream"})
                    elif method == "POST" and path == "/batches":
                        self._create()
                    elif method == "GET" and path == "/batches" and server.batch_script.list_status:
                        self._error(server.batch_script.list_status, "listing failed (scripted)")
                    elif method == "GET" and path == "/batches":
                        self._list(parse_qs(url.query))
                    elif method == "GET" and path.startswith("/batches/"):
                        self._retrieve(path.split("/")[2])
                    else:
                        self._error(404, "unknown endpoint")
                return True

            def do_GET(self):
                if not self._route("GET"):
                    super().do_GET()

            def do_POST(self):
                if not self._route("POST"):
                    super().do_POST()

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _upload(self):
                raw = self._body()
                server.uploads_tried += 1
                planned = server.batch_script.upload_errors
                if server.uploads_tried <= len(planned):
                    self._error(planned[server.uploads_tried - 1], "upload failed (scripted)")
                    return
                message = BytesParser(policy=HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
                purpose = parts["purpose"].get_content().strip()
                content = parts["file"].get_payload(decode=True)
                filename = parts["file"].get_filename()
                if purpose != "batch":
                    self._error(400, f"purpose must be batch, got {purpose!r}")
                    return
                file_id = server._store(content, purpose, filename)
                self._json(200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                 "filename": filename, "purpose": purpose, "status": "processed"})

            def _create(self):
                request = json.loads(self._body())
                stored = server.files.get(request.get("input_file_id"))
                if stored is None or stored["purpose"] != "batch":
                    self._error(400, "input_file_id is not a batch input file")
                    return
                if request.get("completion_window") != "24h":
                    self._error(400, "completion_window must be 24h")
                    return
                lines = [json.loads(line) for line in stored["content"].splitlines()]
                ids = [line["custom_id"] for line in lines]
                if len(set(ids)) != len(ids) or any(line["url"] != request["endpoint"] or line["method"] != "POST"
                                                    for line in lines):
                    self._error(400, "invalid batch input file: duplicate custom_id, or a url other than the endpoint")
                    return
                batch_id = f"batch_{len(server.batches) + 1}"
                batch = {"id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                         "input_file_id": request["input_file_id"], "completion_window": "24h", "status": "validating",
                         "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                         "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                         "metadata": request.get("metadata")}
                server.batches[batch_id] = batch
                server.polls[batch_id] = 0
                if len(server.batches) in server.batch_script.lose_create_answer:
                    self._error(500, "the batch was created, but this answer is lost (scripted)")
                    return
                self._json(200, batch)

            def _retrieve(self, batch_id: str):
                batch = server.batches.get(batch_id)
                if batch is None:
                    self._error(404, f"no batch {batch_id}")
                    return
                if batch["status"] in ("validating", "in_progress"):
                    server.polls[batch_id] += 1
                    held = server.batch_script.hold & set(map(server._marker, server.request_lines(batch_id)))
                    if held or server.polls[batch_id] <= server.batch_script.polls_in_progress:
                        batch["status"] = "in_progress"
                    else:
                        server._end(batch)
                self._json(200, batch)

            def _list(self, query: dict):
                limit = int(query.get("limit", ["20"])[0])
                newest_first = list(reversed(server.batches.values()))
                after = query.get("after", [None])[0]
                if after is not None:
                    newest_first = newest_first[[b["id"] for b in newest_first].index(after) + 1:]
                page = newest_first[:limit]
                self._json(200, {"object": "list", "data": page, "has_more": len(newest_first) > limit,
                                 "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

        return Handler

