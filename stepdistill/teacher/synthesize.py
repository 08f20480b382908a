"""Synthetic examples (``generate --synthesize N``): the teacher, shown real training examples, writes new ones.

One synthesis slot per new example. Slot i shows the teacher ``shots`` real train examples (fields, rationale and
gold label in the task's answer format), rotated over a seeded order of the train examples whose teacher rationale
agrees with gold, and asks for one more (:mod:`.synthesis_prompts`). Each slot is one cache record with a
deterministic key (slot id, prompt hash, teacher, parameters), written by :class:`RationaleGenerator`'s crash-safe
writer: a rerun sends no request twice, a killed run resumes.

Every reply is validated and deduplicated; what fails is kept in the cache with ``status: dropped`` and its reason
in ``error`` (:data:`DROP_REASONS`):

- ``invalid_fields``: a field of the task missing, empty, too long, or (a list field) not ``(a) ... (b) ...``;
- ``unknown_label``: not one of the task's labels (CQA: of the new example's choices; SVAMP: an equation that the
  safe evaluator does not accept); ``unparsable_rationale``: no answer or an empty rationale (``task.parse_teacher``);
- ``duplicate_<split>`` / ``near_duplicate_<split>`` for test, valid, train (checked in that order), then
  ``duplicate_synthetic`` / ``near_duplicate_synthetic`` (an earlier synthetic example, in slot order): the input
  text equal after normalisation, or word-set Jaccard >= ``near_threshold`` (MinHash LSH, each candidate checked
  exactly). Nothing close to a test example is kept.

When the requests are done the whole cache is assessed again in slot order (pure: a rerun agrees) and rewritten
atomically, so the file ``train --rationales`` / ``--synthetic`` reads holds the final statuses. Request failures
stay ``status: failed`` (``--retry-failed`` asks again).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonlines

from ..data import _rank
from ..near_duplicates import NearDuplicateIndex
from ..rationales import CacheError, is_synthetic, read_cache  # noqa: F401 (is_synthetic: importable from here)
from ..tasks import Task, get_task
from .generator import RationaleGenerator, _Job, cache_key, lock_cache, prompt_hash
from .summary import spend_lines
from .synthesis_prompts import synthesis_template_for_task
from .teachers import GenerationParams, Reply, Teacher

REAL_SPLITS = ("test", "valid", "train")  # checked in this order: a leak into test is named as such
DROP_REASONS = ("invalid_fields", "unknown_label", "unparsable_rationale",
                *(f"{kind}_{split}" for split in (*REAL_SPLITS, "synthetic") for kind in ("duplicate", "near_duplicate")))


def demonstration_pool(task: Task, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train records that can be shown to the teacher: a usable rationale whose label agrees with gold."""
    return [record for record in train if record.get("teacher_error") is None and record.get("rationale")
            and record.get("teacher_label") is not None
            and task.is_correct(record["teacher_label"], record["label"], record["fields"])]


def rotation(pool: list[dict[str, Any]], seed: int, lap: int) -> list[dict[str, Any]]:
    """The pool in the seeded order of one lap (per-id hashes: the same on every machine); each lap over the pool
    has an order of its own, so that slots of later laps see other combinations of examples."""
    return sorted(pool, key=lambda record: _rank(seed, str(record["id"]), salt=f"synthesis-{lap}"))


@dataclass
class SynthesisSummary:
    slots: int = 0
    cached: int = 0
    generated: int = 0
    requests: int = 0
    accepted: int = 0
    dropped: Counter = field(default_factory=Counter)  # by reason, over this run's slots
    request_failures: Counter = field(default_factory=Counter)
    cache_records: int = 0  # synthesis records in the whole cache (earlier runs' slots included)
    cache_accepted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    partial_line_dropped: bool = False
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {name: (dict(sorted(value.items())) if isinstance(value, Counter) else value)
                for name, value in self.__dict__.items()}


def format_synthesis_summary(s: SynthesisSummary) -> str:
    lines = [f"{s.slots:,} synthesis slots: {s.cached:,} from the cache, {s.generated:,} generated "
             f"({s.requests:,} requests) in {s.elapsed_s:.1f}s",
             f"accepted: {s.accepted:,} new examples; dropped: {sum(s.dropped.values()):,}"
             + (" (" + ", ".join(f"{reason} {s.dropped[reason]:,}" for reason in DROP_REASONS if s.dropped[reason]) + ")"
                if s.dropped else "")]
    if s.request_failures:
        lines.append("request failures (after retries) by reason: "
                     + ", ".join(f"{k} {v:,}" for k, v in s.request_failures.most_common()))
    if s.cache_records != s.slots:
        lines.append(f"the cache holds {s.cache_records:,} synthesis records (earlier runs included), "
                     f"{s.cache_accepted:,} accepted")
    return "\n".join(lines + spend_lines(s))


class SyntheticGenerator(RationaleGenerator):
    """Ask ``teacher`` for new examples of ``task``, one cache record per synthesis slot.

    Args:
        task: A Task or a registered name / spec path.
        teacher: A model teacher (not replay: a recording has no new examples).
        cache_path: The JSON Lines cache (created if missing; resumable; rewritten with final statuses at the end).
        splits: The task's real records by split (``train`` for the demonstrations; train, valid and test are
            deduplicated against).
        template: A synthesis template path; default: the task's built-in template (``prompts/synthesize/<task>.txt``).
        params: Generation parameters (one sample per slot); ``stop`` defaults to the template's.
        shots: Real examples shown per slot.
        seed: Seed of the demonstrations' order (part of every slot's id).
        near_threshold: Word-set Jaccard at or above which a new example is a near duplicate.
    """

    def __init__(self, task: Task | str, teacher: Teacher, cache_path: str | Path, splits: dict[str, list[dict]],
                 template: str | Path | None = None, params: GenerationParams | None = None, shots: int = 4,
                 seed: int = 0, near_threshold: float = 0.8, concurrency: int = 16, retry_failed: bool = False,
                 progress: bool = True):
        task = get_task(task)
        if teacher.kind == "replay":
            raise ValueError("--synthesize needs a model teacher (openai:, openai-batch:, hf:): a replayed recording "
                             "holds no new examples")
        if params is not None and params.n > 1:
            raise ValueError("option --n: synthesis takes one sample per slot (--n 1)")
        if shots < 1:
            raise ValueError(f"option --shots: must be at least 1, got {shots}")
        if not 0 < near_threshold <= 1:
            raise ValueError(f"option --near-threshold: must be in (0, 1], got {near_threshold}")
        if not splits.get("train"):
            raise ValueError(f"task {task.name}: no train examples to show the teacher")
        self.pool = demonstration_pool(task, splits["train"])
        if not self.pool:
            raise ValueError(f"task {task.name}: none of the {len(splits['train']):,} train examples has a teacher "
                             "rationale that agrees with its gold label, to show the teacher (generate rationales for "
                             "train first and pass the data with them)")
        list_fields = tuple(name for name in task.input_fields if isinstance(self.pool[0]["fields"].get(name), list))
        self.synthesis = synthesis_template_for_task(task, template, list_fields)
        super().__init__(task, teacher, cache_path, template=self.synthesis.prompt, params=params,
                         concurrency=concurrency, retry_failed=retry_failed, progress=progress)
        self.splits = splits
        self.shots, self.seed, self.near_threshold = shots, seed, near_threshold
        self._real: list[tuple[str, NearDuplicateIndex]] | None = None

    # -- planning ---------------------------------------------------------------------------------------------
    def plan_slots(self, count: int) -> list[_Job]:
        if count < 1:
            raise ValueError(f"option --synthesize: must be at least 1, got {count}")
        model_id, key_params = self.teacher.model_id, self.teacher.key_params(self.params)
        size, shown = len(self.pool), min(self.shots, len(self.pool))
        laps: dict[int, list[dict[str, Any]]] = {}
        jobs = []
        for slot in range(count):
            positions = range(slot * shown, (slot + 1) * shown)  # consecutive examples of the rotation
            demos = [laps.setdefault(p // size, rotation(self.pool, self.seed, p // size))[p % size] for p in positions]
            prompt = self.synthesis.render([(demo["fields"], self.task.answer_text(demo["rationale"], demo["label"],
                                                                                  demo["fields"])) for demo in demos])
            example_id, hashed = f"synth-{self.seed}-{slot}", prompt_hash(prompt)
            info = {"task": self.task.name, "slot": slot, "seed": self.seed, "demonstrations": [str(d["id"]) for d in demos]}
            jobs.append(_Job(example_id, info, None, prompt, hashed, cache_key(example_id, hashed, model_id, key_params)))
        return jobs

    # -- records ----------------------------------------------------------------------------------------------
    def _record(self, job: _Job, reply: Reply) -> dict[str, Any]:
        record = {**self._reply_record(job, reply, synthetic=job.fields), **self._accounting(reply)}
        return self.assess(record, None)  # provisional: the final pass also checks the synthetic examples

    def _cached_record(self, record, job):
        return record  # the final pass assesses every record

    def _count_outcome(self, summary, record, job):
        pass  # counted by the final pass

    def _real_indexes(self) -> list[tuple[str, NearDuplicateIndex]]:
        if self._real is None:
            self._real = []
            for split in REAL_SPLITS:
                index = NearDuplicateIndex(self.near_threshold)
                index.add_many([(str(r["id"]), r["input"]) for r in self.splits.get(split) or []])
                self._real.append((split, index))
        return self._real

    def assess(self, record: dict[str, Any], synthetic: NearDuplicateIndex | None) -> dict[str, Any]:
        """The record with its parsed example and final status (``ok``, ``dropped`` with a reason, or ``failed``).
        Pure but for ``synthetic``: an accepted example is added to it."""
        record = {**record, "fields": None, "input": None, "rationale": None, "label": None, "gold": None}
        if record["status"] == "failed" and record.get("raw_output") is None:
            return record
        task = self.task

        def drop(reason: str, detail: str | None) -> dict[str, Any]:
            truncated = " (the answer was cut off at the token limit)" if record.get("finish_reason") == "length" else ""
            return {**record, "status": "dropped", "error": reason, "error_detail": (detail or "") + truncated or None}

        fields, answer, problem = self.synthesis.parse_reply(record.get("raw_output") or "")
        if fields is None:
            return drop("invalid_fields", problem)
        example = {**fields, task.id_field: record["id"]}
        parsed = task.parse_teacher(answer, example)
        if parsed.error == "unknown_label":
            return {**drop("unknown_label", f"label {parsed.raw_label!r}"), "fields": example}
        if parsed.error is not None:
            return {**drop("unparsable_rationale", parsed.error), "fields": example}
        example[task.label_field] = parsed.label
        text = task.format_input(example)
        record.update(fields=example, input=text, rationale=parsed.rationale, label=parsed.label, gold=parsed.label)
        for split, index in [*self._real_indexes(), ("synthetic", synthetic)]:
            found = index.find(text) if index is not None else None
            if found is not None:
                kind, name = found
                reason = f"{'duplicate' if kind == 'exact' else 'near_duplicate'}_{split}"
                return drop(reason, f"{'equal to' if kind == 'exact' else 'close to'} {split} example {name}")
        if synthetic is not None:
            synthetic.add(record["id"], text)
        return {**record, "status": "ok", "error": None, "error_detail": None}

    # -- running ----------------------------------------------------------------------------------------------
    def synthesize(self, count: int) -> tuple[list[dict[str, Any]], SynthesisSummary]:
        """Fill ``count`` slots (cached ones send nothing); (this run's records in slot order, the summary)."""
        return asyncio.run(self.asynthesize(count))

    async def asynthesize(self, count: int) -> tuple[list[dict[str, Any]], SynthesisSummary]:
        jobs = self.plan_slots(count)
        with lock_cache(self.cache_path):
            records, _ = read_cache(self.cache_path)
            for lineno, record in enumerate(records, start=1):
                if not is_synthetic(record):
                    raise CacheError(f"{self.cache_path}: record {lineno} (id {record['id']}) is not a synthetic "
                                     "example: write synthetic examples to a cache of their own (option --out)")
                if record["synthetic"].get("task") != self.task.name:
                    raise CacheError(f"{self.cache_path}: record {lineno} is a synthetic example of task "
                                     f"{record['synthetic'].get('task')!r}, not {self.task.name!r}")
            self._real_indexes()  # built before the first request, not inside a worker on the event loop
            result = await self._generate(jobs)
            final = self._finalize_cache()
        base = result.summary
        summary = SynthesisSummary(slots=len(jobs), cached=base.cached, generated=base.generated, requests=base.requests,
                                   prompt_tokens=base.prompt_tokens, completion_tokens=base.completion_tokens,
                                   cost=base.cost, partial_line_dropped=base.partial_line_dropped,
                                   elapsed_s=base.elapsed_s, cache_records=len(final),
                                   cache_accepted=sum(r["status"] == "ok" for r in final.values()))
        ours = [final[job.key] for job in jobs]
        for record in ours:
            if record["status"] == "ok":
                summary.accepted += 1
            elif record["status"] == "failed":
                summary.request_failures[record["error"]] += 1
            else:
                summary.dropped[record["error"]] += 1
        return ours, summary

    def _finalize_cache(self) -> dict[str, dict[str, Any]]:
        """Assess every record of the cache in slot order and rewrite it atomically; key -> final record."""
        records, _ = read_cache(self.cache_path)
        latest = {record["key"]: record for record in records}
        order = sorted(latest.values(), key=lambda r: (r["synthetic"].get("seed", 0), r["synthetic"].get("slot", 0),
                                                       r["key"]))
        synthetic = NearDuplicateIndex(self.near_threshold)
        final = {record["key"]: self.assess(record, synthetic) for record in order}
        temporary = self.cache_path.with_name(self.cache_path.name + ".finalizing")
        with jsonlines.open(temporary, mode="w", compact=True) as writer:
            writer.write_all(final.values())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.cache_path)
        return final
