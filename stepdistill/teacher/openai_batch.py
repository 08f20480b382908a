"""The OpenAI Batch API as a teacher (``openai-batch:MODEL``): the online backend's requests, sent as batch files.

For each chunk of examples the generator hands over (up to ``max_requests`` at a time):

1. one request line per example, built by the online backend's own code (the same body: model, messages or prompt,
   max_tokens, temperature, top_p, n, stop, seed), ``custom_id`` = the example's cache key;
2. split at the API's limits (``max_requests`` lines, ``max_bytes`` per input file); each file is uploaded
   (purpose ``batch``) and gets a batch (completion window 24h);
3. each batch is polled until it ends; its output and error files are read into one :class:`Reply` per example,
   which the generator records exactly as it records an online answer;
4. what did not come back (an expired, cancelled or failed batch; a retryable error line) goes into a new batch, up
   to ``max_rounds`` batches per example; after that the example is recorded as failed with the last reason.

Never paying twice: the state log ``CACHE.batches.jsonl`` next to the cache records each input file (with its
custom ids) once it is uploaded and its batch id once the batch exists, both before any polling. A rerun of the
same command (the cache lock makes it the only writer) polls the batches of the examples it still needs instead of
submitting them again; an input file whose batch id is not in the log (a crash right after creating the batch, or
a lost answer to the create call) is first looked up in the API's batch list by its input file id. The log's
format: :mod:`stepdistill.teacher.batch_log`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..rationales import BATCH_LOG_SUFFIX
from .batch_log import BatchLog, Submission
from .teachers import GenerationParams, OpenAITeacher, Reply, TeacherFatalError

BATCH_DISCOUNT = 0.5  # the Batch API's price is 50% of the online one for every model in DEFAULT_PRICES (when written)
MAX_REQUESTS = 50_000  # requests per batch: the API's limit
MAX_BYTES = 200_000_000  # bytes per batch input file: the API's limit is 200 MB
COMPLETION_WINDOW = "24h"  # the only window the API offers
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
ENDED = ("completed", "failed", "expired", "cancelled")
RETRYABLE_STATUS = (408, 409, 429)  # and >= 500: what the online backend retries


class BatchAPIError(RuntimeError):
    """A Batch API call failed after its retries; the same command, run again, resumes where this one stopped."""


class _Built(Exception):
    """Raised by :class:`_StandIn` once the online backend has built its request body."""


class _StandIn:
    """Stands in for the openai client in ``OpenAITeacher._call``, so that the online backend's code builds every
    batch request body and reads every batch answer: the two backends cannot drift apart."""

    def __init__(self, answer: Any = None):
        self.answer = answer
        self.request: tuple[str, dict[str, Any]] | None = None

    async def post(self, path: str, *, body: dict[str, Any], cast_to: Any, **_: Any) -> Any:
        self.request = (path, body)
        if self.answer is None:
            raise _Built
        if not isinstance(self.answer, dict):
            raise ValueError("the response body is not a JSON object")
        return cast_to.construct(**self.answer)  # as the client builds response objects (no validation)


class OpenAIBatchTeacher(OpenAITeacher):
    """The OpenAI Batch API: the online backend's requests, answered within 24 hours at ``batch_discount`` of the
    online price.

    Args (beyond :class:`~stepdistill.teacher.teachers.OpenAITeacher`'s model, base_url, api_key, endpoint,
    timeout and prices):
        max_attempts: Attempts per API call (upload, create, poll, download) before the run stops with an error
            (rerun to resume); polls tolerate as many failed calls in a row.
        poll_interval: Seconds between polls of a running batch.
        max_rounds: Batches an example may go through before it is recorded as failed.
        max_requests, max_bytes: Limits per batch input file (the API's: 50,000 requests, 200 MB).
        batch_discount: Batch price over online price (cost = online price x this).
        progress: Print a line when a batch is submitted and whenever its status or counts change.
    """

    kind = "openai-batch"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, endpoint: str = "chat",
                 timeout: float = 60.0, max_attempts: int = 6, prices: dict[str, tuple[float, float]] | None = None,
                 poll_interval: float = 60.0, max_rounds: int = 3, max_requests: int = MAX_REQUESTS,
                 max_bytes: int = MAX_BYTES, batch_discount: float = BATCH_DISCOUNT, progress: bool = True):
        super().__init__(model, base_url=base_url, api_key=api_key, endpoint=endpoint, timeout=timeout,
                         max_attempts=max_attempts, prices=prices, http_backend="httpx")
        for name, value, low in (("poll_interval", poll_interval, 0), ("max_rounds", max_rounds, 1),
                                 ("max_requests", max_requests, 1), ("max_bytes", max_bytes, 1)):
            if not value >= low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 <= batch_discount <= 1:
            raise ValueError(f"batch_discount must be between 0 and 1, got {batch_discount}")
        if max_requests > MAX_REQUESTS or max_bytes > MAX_BYTES:
            raise ValueError(f"the Batch API takes at most {MAX_REQUESTS:,} requests and {MAX_BYTES:,} bytes per file")
        self.poll_interval, self.max_rounds = poll_interval, max_rounds
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.batch_discount, self.progress = batch_discount, progress
        self.batch_size = max_requests  # the generator hands each generate() call at most one batch's worth
        self.calls: Counter = Counter()  # API calls this run by kind: upload, create, list, poll, download
        self._log: BatchLog | None = None
        self._live: dict[str, Submission] = {}  # custom id -> its latest submission not yet in the cache
        self._results: dict[str, asyncio.Task] = {}  # input file id -> the task polling its batch, reading its files

    def __repr__(self) -> str:  # no key
        return f"OpenAIBatchTeacher(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r})"

    @property
    def model_id(self) -> str:
        # the online backend's cache keys: the same requests to the same model, so a cache started online goes on
        # in batch (and back) without paying twice; the record's "teacher" field says which backend answered
        return f"openai:{self.model}"

    def cost(self, prompt_tokens, completion_tokens):
        online = super().cost(prompt_tokens, completion_tokens)
        return None if online is None else online * self.batch_discount

    def attach_cache(self, cache_path, cached):
        self._log = BatchLog(Path(cache_path).with_name(Path(cache_path).name + BATCH_LOG_SUFFIX))
        self._live, self._results, self.calls = {}, {}, Counter()
        for submission in self._log.load():
            for custom_id in submission.custom_ids:
                record = cached.get(custom_id)
                # a record written after this submission was made holds its answer (settled); an older one is a
                # failure that --retry-failed asked again for, in this submission
                if record is None or record.get("created", 0) < submission.uploaded_at:
                    self._live[custom_id] = submission

    def summary_line(self) -> str:
        c = self.calls
        return (f"batch API calls: {c['upload']} uploads, {c['create']} batches created, {c['resume']} resumed, "
                f"{c['poll']} polls, {c['download']} downloads, {c['list']} batch lists")

    # -- one generate() call: a chunk of examples ------------------------------------------------------------
    async def generate(self, prompts, ids, params):
        from .generator import cache_key, prompt_hash

        if self._log is None:
            raise ValueError("the openai-batch teacher runs through RationaleGenerator (its state log sits beside "
                             "the cache)")
        key_params = self.key_params(params)
        keys = [cache_key(str(i), prompt_hash(p), self.model_id, key_params) for p, i in zip(prompts, ids)]
        prompt_of = dict(zip(keys, prompts))
        errors = {key: [] for key in keys}  # reasons of each example's failed rounds
        replies: dict[str, Reply] = {}

        async def settle(submission: Submission, wanted: list[str]) -> None:
            outcome = await self._outcome(submission)
            again = []
            for key in wanted:
                result = outcome[key]
                if isinstance(result, Reply):
                    result.attempts = len(errors[key]) + 1
                    result.attempt_errors = errors[key] + ([result.error] if result.error else [])
                    replies[key] = result
                    continue
                reason, detail = result
                errors[key].append(reason)
                if len(errors[key]) >= self.max_rounds:
                    replies[key] = Reply(attempts=len(errors[key]), attempt_errors=errors[key], error=reason,
                                         error_detail=f"{detail} (after {len(errors[key])} batches)"[:500])
                else:
                    again.append(key)
            if again:
                await submit(again)

        async def submit(wanted: list[str]) -> None:
            submissions = await self._submit(wanted, prompt_of, params, errors, replies)
            await asyncio.gather(*(settle(submission, part) for submission, part in submissions))

        by_submission: dict[str, tuple[Submission, list[str]]] = {}
        fresh = []
        for key in keys:
            submission = self._live.get(key)
            if submission is None:
                fresh.append(key)
                continue
            errors[key] = list(submission.prior_errors.get(key, []))
            by_submission.setdefault(submission.input_file_id, (submission, []))[1].append(key)
        await asyncio.gather(*(settle(submission, part) for submission, part in by_submission.values()),
                             *([submit(fresh)] if fresh else []))
        return [replies[key] for key in keys]

    async def _request_line(self, key: str, prompt: str, params: GenerationParams) -> bytes:
        stand_in = _StandIn()
        try:
            await self._call(stand_in, prompt, params)
        except _Built:
            pass
        path, body = stand_in.request
        return (json.dumps({"custom_id": key, "method": "POST", "url": "/v1" + path, "body": body},
                           ensure_ascii=False) + "\n").encode()

    def _api_client(self, **options):
        return self._ensure_client().with_options(**{"max_retries": self.max_attempts - 1, **options})

    async def _api(self, kind: str, what: str, call) -> Any:
        """One API call with the client's retries; a failure after them stops the run (a bad key at once)."""
        import openai

        self.calls[kind] += 1
        try:
            return await call
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise TeacherFatalError(f"{self!r}: {self._redact(str(exc))}") from None
            retried = exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
            how = f"failed after {self.max_attempts} attempts" if retried else "was refused"
            raise BatchAPIError(f"Batch API: {what} {how}: {self._redact(str(exc))[:300]}") from None
        except openai.APIError as exc:  # connection errors and timeouts
            raise BatchAPIError(f"Batch API: {what} failed after {self.max_attempts} attempts: "
                                f"{type(exc).__name__}: {self._redact(str(exc))[:300]}") from None

    # -- submitting ----------------------------------------------------------------------------------------------
    async def _submit(self, keys, prompt_of, params, errors, replies) -> list[tuple[Submission, list[str]]]:
        """Upload ``keys`` in files within the limits and create a batch for each, recording both first."""
        # built here, dropped once uploaded (a re-queue builds them again): chunks in flight hold prompts only
        lines = {key: await self._request_line(key, prompt_of[key], params) for key in keys}
        files: list[list[str]] = []
        size = 0
        for key in keys:
            length = len(lines[key])
            if length > self.max_bytes:  # can never be sent: record it, do not block the others
                errors[key].append("request_too_large")
                replies[key] = Reply(attempts=0, attempt_errors=errors[key], error="request_too_large",
                                     error_detail=f"the request line is {length:,} bytes, over the batch input "
                                                  f"file limit of {self.max_bytes:,}")
                continue
            if not files or len(files[-1]) >= self.max_requests or size + length > self.max_bytes:
                files.append([])
                size = 0
            files[-1].append(key)
            size += length
        return list(await asyncio.gather(*(self._submit_file(part, lines, errors) for part in files)))

    async def _submit_file(self, keys, lines, errors) -> tuple[Submission, list[str]]:
        content = b"".join(lines[key] for key in keys)
        client = self._api_client(timeout=max(self.timeout, 600.0))  # up to 200 MB
        uploaded = await self._api("upload", "uploading the batch input file",
                                   client.files.create(file=("stepdistill-batch.jsonl", content), purpose="batch"))
        prior = {key: list(errors[key]) for key in keys if errors[key]}
        submission = Submission(uploaded.id, list(keys), prior, time.time())
        self._log.append({"event": "uploaded", "input_file_id": uploaded.id, "custom_ids": keys, "prior_errors": prior,
                          "bytes": len(content)})
        for key in keys:
            self._live[key] = submission
        await self._ensure_batch(submission)
        rounds = 1 + max(map(len, prior.values()), default=0)
        self._say(f"batch {submission.batch_id}: {len(keys):,} request{'s' * (len(keys) != 1)} submitted "
                  f"({len(content):,} bytes, round {rounds})")
        return submission, keys

    async def _ensure_batch(self, submission: Submission) -> None:
        """Give ``submission`` its batch: the one the API already made for its file, else a new one."""
        import openai

        if submission.batch_id is not None:
            return
        if submission.resumed and await self._adopt(submission):
            return
        client = self._api_client(max_retries=0)  # a retried create could make a second batch: look before retrying
        for attempt in range(self.max_attempts):
            self.calls["create"] += 1
            try:
                batch = await client.batches.create(input_file_id=submission.input_file_id,
                                                    endpoint=ENDPOINTS[self.endpoint],
                                                    completion_window=COMPLETION_WINDOW)
            except openai.APIStatusError as exc:
                if exc.status_code in (401, 403):
                    raise TeacherFatalError(f"{self!r}: {self._redact(str(exc))}") from None
                if exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500:
                    raise BatchAPIError(f"Batch API: creating the batch for {submission.input_file_id} was refused: "
                                        f"{self._redact(str(exc))[:300]}") from None
                failure = str(exc)
            except openai.APIError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                submission.batch_id = batch.id
                self._log.append({"event": "created", "input_file_id": submission.input_file_id, "batch_id": batch.id})
                return
            if await self._adopt(submission):  # the failed call may have created it
                return
            if attempt + 1 < self.max_attempts:
                await asyncio.sleep(self._backoff(attempt, None))
        raise BatchAPIError(f"Batch API: creating the batch for {submission.input_file_id} failed after "
                            f"{self.max_attempts} attempts: {self._redact(failure)[:300]}")

    async def _adopt(self, submission: Submission) -> bool:
        """Find a batch made from ``submission``'s input file in the API's batch list (newest first)."""
        import openai

        client = self._api_client()
        self.calls["list"] += 1
        try:
            async for batch in client.batches.list(limit=100):
                if batch.input_file_id == submission.input_file_id:
                    submission.batch_id = batch.id
                    self._log.append({"event": "created", "input_file_id": batch.input_file_id, "batch_id": batch.id,
                                      "adopted": True})
                    return True
                if batch.created_at < submission.uploaded_at - 600:  # older than our file (10 min of clock skew)
                    return False
        except openai.APIError as exc:  # not knowing, creating a batch might pay twice: stop instead
            raise BatchAPIError(f"Batch API: could not check whether input file {submission.input_file_id} already "
                                f"has a batch (listing batches failed: {self._redact(str(exc))[:300]}); run the same "
                                "command again") from None
        return False

    # -- polling and reading --------------------------------------------------------------------------------------
    def _outcome(self, submission: Submission) -> asyncio.Task:
        """custom id -> a final Reply, or (reason, detail) to re-queue; one task per submission, shared by the
        generate() calls whose chunks hold its examples."""
        if submission.input_file_id not in self._results:
            self._results[submission.input_file_id] = asyncio.ensure_future(self._watch(submission))
        return self._results[submission.input_file_id]

    async def _watch(self, submission: Submission) -> dict[str, Any]:
        import openai

        await self._ensure_batch(submission)
        if submission.resumed:
            self.calls["resume"] += 1
            self._say(f"batch {submission.batch_id}: resuming ({len(submission.custom_ids):,} requests, submitted "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(submission.uploaded_at))})")
        client, failures, shown = self._api_client(), 0, None
        while True:
            self.calls["poll"] += 1
            try:
                batch = await client.batches.retrieve(submission.batch_id)
            except openai.APIStatusError as exc:
                if exc.status_code in (401, 403, 404):
                    raise TeacherFatalError(
                        f"{self!r}: batch {submission.batch_id}: {self._redact(str(exc))} (a batch of another account "
                        f"or base URL? then move {self._log.path} away to submit its examples anew)") from None
                failures, failure = failures + 1, str(exc)
            except openai.APIError as exc:
                failures, failure = failures + 1, f"{type(exc).__name__}: {exc}"
            else:
                failures = 0
                counts = batch.request_counts
                now = (batch.status, counts.completed if counts else 0, counts.failed if counts else 0)
                if now != shown:
                    shown = now
                    self._say(f"batch {batch.id}: {now[0]}, {now[1]:,}/{len(submission.custom_ids):,} done, "
                              f"{now[2]:,} failed ({max(0.0, time.time() - batch.created_at):.0f}s since created)")
                if batch.status in ENDED:
                    break
            if failures >= self.max_attempts:
                raise BatchAPIError(f"Batch API: polling batch {submission.batch_id} failed {failures} times in a row "
                                    f"({self._redact(failure)[:300]}); run the same command again to resume polling it")
            await asyncio.sleep(self.poll_interval)
        return await self._read(submission, batch)

    async def _read(self, submission: Submission, batch) -> dict[str, Any]:
        wanted = set(submission.custom_ids)
        outcome: dict[str, Any] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            client = self._api_client(timeout=max(self.timeout, 600.0))
            content = await self._api("download", f"downloading {file_id}", client.files.content(file_id))
            for line in content.content.splitlines():
                try:
                    item = json.loads(line)
                except (ValueError, RecursionError):  # an unreadable line: its example counts as missing
                    continue
                custom_id = item.get("custom_id") if isinstance(item, dict) else None
                if custom_id in wanted and custom_id not in outcome:
                    outcome[custom_id] = await self._line_outcome(custom_id, item)
        missing = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}.get(
            batch.status, "missing_output")
        detail = f"batch {batch.id} ended {batch.status} without an answer for this request"
        if batch.status == "failed" and batch.errors and batch.errors.data:
            detail += ": " + "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data[:3])
        for custom_id in wanted - set(outcome):
            outcome[custom_id] = (missing, detail)
        return outcome

    async def _line_outcome(self, custom_id: str, item: dict[str, Any]):
        response, error = item.get("response"), item.get("error")
        status = response.get("status_code") if isinstance(response, dict) else None
        if status == 200:
            stand_in = _StandIn(response.get("body"))
            try:
                texts, finish, prompt_tokens, completion_tokens, logprobs = await self._call(stand_in, "", GenerationParams())
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                return "malformed_response", f"{type(exc).__name__}: {exc}"[:500]
            return Reply(outputs=texts, finish_reasons=finish, prompt_tokens=prompt_tokens,
                         completion_tokens=completion_tokens, token_logprobs=logprobs)
        if isinstance(status, int):
            body = response.get("body")
            error_object = body.get("error") if isinstance(body, dict) else None
            message = error_object.get("message") if isinstance(error_object, dict) else body
            reason, detail = f"http_{status}", f"Error code: {status} - {message}"[:500]
            if status in RETRYABLE_STATUS or status >= 500:
                return reason, detail
            return Reply(error=reason, error_detail=self._redact(detail))  # a bad request stays bad
        if isinstance(error, dict):
            return str(error.get("code") or "batch_error"), str(error.get("message"))[:500]
        return "malformed_response", "a batch line without a response or an error"

    def _say(self, line: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)
