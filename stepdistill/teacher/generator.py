"""RationaleGenerator: prompt a teacher for every example and keep the answers in a crash-safe JSON Lines cache.

One record per example, keyed by (example id, prompt hash, teacher model, generation parameters):

    {"id", "key", "prompt_hash", "teacher", "model", "params", "gold",
     "status": "ok" | "parse_error" | "failed" | "filtered", "error", "error_detail",
     "raw_output", "finish_reason", "rationale", "label",
     "outputs", "votes", "rationales",          # only with self-consistency (n > 1)
     "label_logprobs", "label_logprobs_source", "label_logprob_rest",  # the teacher's label distribution, where
                                                 # it gives one (ok/filtered records; see label_scores.py)
     "token_topk",                               # --token-logprobs K: per generated token its top-K tokens and
                                                 # log-probabilities (ok/filtered records; see token_topk.py)
     "usage": {"prompt_tokens", "completion_tokens"}, "cost", "attempts", "attempt_errors", "gold_filter"}

- ``failed``: the request failed after every retry (``error`` says why: http_429, timeout, ...).
- ``parse_error``: the teacher answered but no usable rationale/label came out (no_answer, unknown_label,
  empty_rationale, truncated).
- ``filtered``: the voted label disagrees with gold and the gold filter is on (the rationale is dropped).

Crash safety: a single writer task appends records (flush + fsync), so lines never interleave and a SIGKILL leaves
at most one partial final line, which the next run detects and drops. Each worker waits until its record is on
disk before taking more work, so a crash loses at most the in-flight requests. A rerun sends nothing for keys
already in the cache. One process writes a cache at a time (``CACHE.lock``, see :func:`lock_cache`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonlines

from ..locks import exclusive_lock
from ..rationales import CacheError, attach_rationales, index_by_key, load_rationales, read_cache  # noqa: F401
from ..tasks import Task, get_task
from . import label_scores, token_topk
from .prompts import PromptTemplate, load_template, template_for_task
from .summary import Summary, format_summary  # noqa: F401  (importable from here, as before)
from .teachers import GenerationParams, Reply, Teacher

STATUSES = ("ok", "parse_error", "failed", "filtered")


# -- cache files (read by the data layer's one reader; this module appends and merges) ----------------------------

_index = index_by_key


def lock_cache(cache: str | Path):
    """One writer per cache: a second ``generate`` (or ``--merge``) on it stops at once, naming the holder.

    Two processes on one cache would request, pay for and record the same examples twice. The lock file
    ``CACHE.lock`` sits next to the cache; the OS releases it when its process dies, so a SIGKILL leaves no stale lock.
    """
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(cache.with_name(cache.name + ".lock"),
                          f"{cache}: another process is writing this cache; wait for it to end, or split the work "
                          "with --shard i/n (each shard writes its own --out)")


def merge_caches(inputs: Iterable[str | Path], out: str | Path) -> dict[str, int]:
    """Merge shard caches into ``out`` (written atomically): one record per key, a success preferred to a failure."""
    merged: dict[str, dict[str, Any]] = {}
    stats = Counter()
    for path in inputs:
        records, partial = read_cache(path)
        stats["files"] += 1
        stats["partial_lines_dropped"] += bool(partial)
        for record in _index(records).values():
            stats["read"] += 1
            previous = merged.get(record["key"])
            if previous is not None:
                stats["duplicates"] += 1
                if not (previous["status"] == "failed" and record["status"] != "failed"):
                    continue
            merged[record["key"]] = record
    out = Path(out)
    with lock_cache(out):
        temporary = out.with_name(out.name + ".merging")
        with jsonlines.open(temporary, mode="w", compact=True) as writer:
            writer.write_all(merged.values())
        os.replace(temporary, out)
    stats["records"] = len(merged)
    return dict(stats)


# -- shards ----------------------------------------------------------------------------------------------------

def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) -> (i, n)."""
    if shard is None or isinstance(shard, tuple):
        return shard
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return index, count


def shard_of(example_id: str, count: int) -> int:
    # sha256 rather than hash(): the same shard on every machine and Python process
    return int.from_bytes(hashlib.sha256(f"shard\x00{example_id}".encode()).digest()[:8], "big") % count


# -- records ---------------------------------------------------------------------------------------------------

def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def cache_key(example_id: str, prompt_hash: str, model_id: str, params: dict[str, Any]) -> str:
    blob = json.dumps([example_id, prompt_hash, model_id, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _group_label(task: Task, label: str, groups: list[str], fields: dict[str, Any]) -> str:
    """The existing vote group ``label`` belongs to (labels compare with the task's rule, e.g. by value)."""
    for group in groups:
        if task.is_correct(label, group, fields):
            return group
    groups.append(label)
    return label


def finalize(record: dict[str, Any], task: Task, fields: dict[str, Any], filter_gold: bool) -> dict[str, Any]:
    """Fill the derived fields (status, rationale, label, votes, label_logprobs) from the raw outputs. Pure."""
    return token_topk.settle(label_scores.settle(_finalize(record, task, fields, filter_gold), task, fields))


def _finalize(record: dict[str, Any], task: Task, fields: dict[str, Any], filter_gold: bool) -> dict[str, Any]:
    record = dict(record)
    record["gold_filter"] = filter_gold
    if record["status"] == "failed" and not record.get("raw_output") and not record.get("outputs"):
        record.update(rationale=None, label=None)
        return record
    outputs = record.get("outputs") or [record["raw_output"]]
    finish = record.get("finish_reasons") or [record.get("finish_reason")] * len(outputs)
    samples = []
    for text, reason in zip(outputs, finish):
        parsed = task.parse_teacher(text, fields)
        error = parsed.error
        if error is not None and reason == "length":
            error = "truncated"  # the token limit cut the answer off: more precise than the parser's reason
        samples.append((parsed.rationale, parsed.label, error))
    usable = [(rationale, label) for rationale, label, error in samples if error is None]
    multi = len(outputs) > 1
    if not usable:
        rationale, label, error = samples[0]
        record.update(status="parse_error", error=error, rationale=rationale, label=label)
        if multi:
            record.update(votes={}, rationales=[])
        return record
    groups: list[str] = []
    votes = Counter(_group_label(task, label, groups, fields) for _, label in usable)
    winner = max(groups, key=lambda group: votes[group])  # ties: the label seen first
    agreeing = [rationale for rationale, label in usable if task.is_correct(label, winner, fields)]
    record.update(status="ok", error=None, label=winner, rationale=agreeing[0])
    if multi:
        record.update(votes=dict(votes), rationales=agreeing)
    gold = record.get("gold")
    if filter_gold and gold is not None and not task.is_correct(winner, gold, fields):
        record.update(status="filtered", error="disagrees_with_gold", rationale=None)
        if multi:
            record["rationales"] = []
    return record


# -- the generator ---------------------------------------------------------------------------------------------

@dataclass
class GenerationResult:
    records: list[dict[str, Any]]  # one per example, in example order
    summary: Summary


@dataclass
class _Job:
    example_id: str
    fields: dict[str, Any]
    gold: str | None
    prompt: str | None
    prompt_hash: str
    key: str


class RationaleGenerator:
    """Prompt ``teacher`` for a rationale and label for every example, caching one record per example.

    Args:
        task: A Task or a registered name / spec path.
        teacher: An :class:`~stepdistill.teacher.teachers.Teacher`.
        cache_path: The JSON Lines cache (created if missing; appended to; resumable).
        template: A PromptTemplate, a template path or built-in name; default: the task's template.
        params: Generation parameters; ``stop`` defaults to the template's stop strings.
        concurrency: Requests in flight at once (a local model runs one batch at a time).
        filter_gold: Drop rationales whose (voted) label disagrees with the gold label (status ``filtered``).
        retry_failed: Ask again for examples whose cached record is a request failure.
        shard: ``"i/n"``: only the examples whose id hashes to shard i of n.
        progress: Show a tqdm progress bar.
    """

    def __init__(self, task: Task | str, teacher: Teacher, cache_path: str | Path,
                 template: PromptTemplate | str | Path | None = None, params: GenerationParams | None = None,
                 concurrency: int = 16, filter_gold: bool = False, retry_failed: bool = False,
                 shard: str | tuple[int, int] | None = None, progress: bool = True):
        self.task = get_task(task)
        self.teacher = teacher
        self.cache_path = Path(cache_path)
        uses_prompt = teacher.uses_prompt
        if isinstance(template, PromptTemplate) or template is None and not uses_prompt:
            self.template = template
        else:
            self.template = load_template(template) if template is not None else template_for_task(self.task)
        params = params or GenerationParams()
        if not params.stop and self.template is not None and self.template.stop:
            params = GenerationParams(**{**params.__dict__, "stop": self.template.stop})
        if teacher.kind == "replay" and params.n > 1:
            raise ValueError("the replay teacher has one output per example: self-consistency needs n = 1")
        teacher.check(params)
        label_scores.check_supported(self.task, teacher, params)
        token_topk.check_supported(teacher, params)
        self.params = params
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.filter_gold = filter_gold
        self.retry_failed = retry_failed
        self.shard = parse_shard(shard)
        self.progress = progress

    # -- planning ---------------------------------------------------------------------------------------------
    def _view(self, position: int, example: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        """(id, raw fields, gold label) of a data-layer record or of a raw example dict."""
        if isinstance(example.get("fields"), dict) and "id" in example:
            return str(example["id"]), example["fields"], example.get("label")
        if self.task.id_field not in example:
            raise ValueError(f"example {position}: missing field '{self.task.id_field}'")
        raw_label = example.get(self.task.label_field)
        gold = self.task.canonical_label(str(raw_label), example) if raw_label is not None else None
        return str(example[self.task.id_field]), example, gold

    def plan(self, examples: Iterable[dict[str, Any]], limit: int | None = None) -> list[_Job]:
        model_id = self.teacher.model_id
        key_params = self.teacher.key_params(self.params)
        jobs, seen = [], set()
        for position, example in enumerate(examples):
            example_id, fields, gold = self._view(position, example)
            if example_id in seen:
                raise ValueError(f"example {position}: duplicate id {example_id}")
            seen.add(example_id)
            if self.shard and shard_of(example_id, self.shard[1]) != self.shard[0]:
                continue
            if self.template is None:
                # a recording: its prompt is the one it was made with; a teacher reading the example: its input
                prompt = None
                hashed = prompt_hash(self.task.format_input(fields)) if self.teacher.uses_fields else "released"
            else:
                try:
                    prompt = self.template.render(self.task.prompt_fields(fields))
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"example {example_id}: {exc}") from None
                hashed = prompt_hash(prompt)
            jobs.append(_Job(example_id, fields, gold, prompt, hashed, cache_key(example_id, hashed, model_id, key_params)))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def _reply_record(self, job: _Job, reply: Reply, **about: Any) -> dict[str, Any]:
        """The fields every record of a reply has (``about``: what the job was, e.g. its gold label), in file order."""
        return {
            "id": job.example_id, "key": job.key, "prompt_hash": job.prompt_hash, "teacher": self.teacher.kind,
            "model": self.teacher.model, "params": self.teacher.key_params(self.params), **about,
            "status": "failed" if reply.error else "ok", "error": reply.error, "error_detail": reply.error_detail,
            "raw_output": reply.outputs[0] if reply.outputs else None,
            "finish_reason": reply.finish_reasons[0] if reply.finish_reasons else None,
        }

    def _accounting(self, reply: Reply) -> dict[str, Any]:
        """Tokens, cost and attempts of a reply: the last fields of its record."""
        return dict(usage={"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
                    cost=self.teacher.cost(reply.prompt_tokens, reply.completion_tokens),
                    attempts=reply.attempts, attempt_errors=reply.attempt_errors, created=round(time.time(), 3))

    def _record(self, job: _Job, reply: Reply) -> dict[str, Any]:
        record = self._reply_record(job, reply, gold=job.gold)
        if len(reply.outputs) > 1:
            record.update(outputs=reply.outputs, finish_reasons=reply.finish_reasons)
        # token log-probabilities asked for token_topk alone are no label distribution (scores of a student:
        # teacher, which come without --label-logprobs, still are)
        if self.params.label_logprobs or not self.params.token_logprobs:
            record.update(label_scores.record_fields(self.task, job.fields, reply))
        record.update(token_topk.record_fields(self.teacher, self.params, reply))
        record.update(self._accounting(reply))
        return finalize(record, self.task, job.fields, self.filter_gold)

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, examples: Iterable[dict[str, Any]], limit: int | None = None) -> GenerationResult:
        return asyncio.run(self.arun(examples, limit))

    async def arun(self, examples: Iterable[dict[str, Any]], limit: int | None = None) -> GenerationResult:
        jobs = self.plan(examples, limit)
        with lock_cache(self.cache_path):  # held until the cache is complete; released by any exit
            return await self._generate(jobs)

    async def _generate(self, jobs: list[_Job]) -> GenerationResult:
        from tqdm.auto import tqdm

        started = time.monotonic()
        records, partial = read_cache(self.cache_path)
        if partial:  # an interrupted write: drop it before appending
            with open(self.cache_path, "r+b") as handle:
                handle.truncate(self.cache_path.stat().st_size - partial)
        cached = _index(records)
        self.teacher.attach_cache(self.cache_path, cached)
        summary = Summary(examples=len(jobs), partial_line_dropped=bool(partial))
        todo = deque(job for job in jobs if job.key not in cached
                     or self.retry_failed and cached[job.key]["status"] == "failed")
        summary.cached = len(jobs) - len(todo)
        fresh: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=len(jobs), initial=summary.cached, desc=f"generate {self.task.name}", unit="ex",
                   disable=not self.progress, dynamic_ncols=True)
        cost = [0.0, False]  # this run's cost, and whether any record had a price

        def show() -> None:
            bar.set_postfix(done=summary.generated, cached=summary.cached, failed=summary.failed_this_run,
                            tokens=summary.prompt_tokens + summary.completion_tokens,
                            cost=f"${cost[0]:.4f}" if cost[1] else "n/a", refresh=False)

        show()
        queue: asyncio.Queue = asyncio.Queue()
        handle = open(self.cache_path, "a", encoding="utf-8")
        writer = jsonlines.Writer(handle, compact=True, flush=True)

        async def write_records() -> None:
            # the only writer: lines never interleave. Group commit: write what is queued, then one fsync.
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                items = [item for item in batch if item is not None]
                for record, _ in items:
                    writer.write(record)
                if items:
                    await asyncio.to_thread(os.fsync, handle.fileno())
                for _, done in items:
                    if not done.done():
                        done.set_result(None)
                if len(items) < len(batch):
                    return

        async def work() -> None:
            loop = asyncio.get_running_loop()
            while todo:
                batch = [todo.popleft() for _ in range(min(self.teacher.batch_size, len(todo)))]
                extra = {"fields": [job.fields for job in batch]} if self.teacher.uses_fields else {}
                replies = await self.teacher.generate([job.prompt for job in batch], [job.example_id for job in batch],
                                                      self.params, **extra)
                if self.params.label_logprobs and self.params.n == 1 and hasattr(self.teacher, "score_candidates"):
                    await label_scores.score_after_rationales(self.task, self.teacher, batch, replies)
                waits = []
                for job, reply in zip(batch, replies):
                    record = self._record(job, reply)
                    done = loop.create_future()
                    await queue.put((record, done))
                    waits.append(done)
                    fresh[job.key] = record
                    self._count_new(summary, record, reply)
                    if record.get("cost") is not None:
                        cost[0] += record["cost"]
                        cost[1] = True
                await asyncio.gather(*waits)  # on disk before taking more work: a crash loses only in-flight requests
                bar.update(len(batch))
                show()

        workers = max(1, min(self.concurrency, self.teacher.max_concurrency or self.concurrency,
                             -(-len(todo) // self.teacher.batch_size)))
        writer_task = asyncio.create_task(write_records())
        try:
            if todo:
                try:
                    async with asyncio.TaskGroup() as group:
                        for _ in range(workers):
                            group.create_task(work())
                except BaseExceptionGroup as errors:  # e.g. TeacherFatalError: report the cause, not the group
                    raise errors.exceptions[0] from None
        finally:
            await queue.put(None)
            await writer_task
            writer.close()
            handle.close()
            bar.close()
            await self.teacher.aclose()
        summary.cost = cost[0] if cost[1] else None

        results = []
        for job in jobs:
            record = fresh.get(job.key)
            if record is None:
                record = self._cached_record(cached[job.key], job)
            results.append(record)
            self._count_outcome(summary, record, job)
        summary.elapsed_s = time.monotonic() - started
        return GenerationResult(results, summary)

    def _cached_record(self, record: dict[str, Any], job: _Job) -> dict[str, Any]:
        """A cached record as this run reports it: its derived fields redone with the current filter setting."""
        return finalize(record, self.task, job.fields, self.filter_gold)

    def _count_new(self, summary: Summary, record: dict[str, Any], reply: Reply) -> None:
        summary.generated += 1
        summary.requests += reply.attempts
        summary.prompt_tokens += reply.prompt_tokens
        summary.completion_tokens += reply.completion_tokens
        retried = reply.attempt_errors[:-1] if reply.error else reply.attempt_errors
        summary.retried.update(retried)
        if record["status"] in ("failed", "parse_error"):
            summary.failed_this_run += 1

    def _count_outcome(self, summary: Summary, record: dict[str, Any], job: _Job) -> None:
        if record["status"] == "ok":
            summary.ok += 1
        elif record["status"] == "failed":
            summary.request_failures[record["error"]] += 1
        elif record["status"] == "parse_error":
            summary.parse_failures[record["error"]] += 1
        if record["status"] == "filtered":
            summary.filtered += 1
            outputs = record.get("outputs")
            summary.rationales_dropped += record.get("votes", {}).get(record["label"], 1) if outputs else 1
        if record.get("label") is not None and job.gold is not None and self.task.is_correct(record["label"], job.gold, job.fields):
            summary.agree += 1
