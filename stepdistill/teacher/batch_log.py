"""The Batch API teacher's state log, ``CACHE.batches.jsonl``: what was submitted, so that a rerun never pays twice.

One line per event, appended and fsynced before the teacher goes on: ``uploaded`` (an input file's id and the
custom ids in it, with the reasons of their earlier failed rounds) once the file is uploaded, and ``created`` (its
batch id) once the batch exists. An append-only log rather than a rewritten JSON file: a crash can cost at most its
last, partial line (dropped on read, as the cache's is), never an earlier submission.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..rationales import CacheError


@dataclass
class Submission:
    """One uploaded input file and, once created, its batch."""

    input_file_id: str
    custom_ids: list[str]
    prior_errors: dict[str, list[str]]  # custom id -> reasons of its earlier failed rounds (re-queued examples)
    uploaded_at: float
    batch_id: str | None = None
    resumed: bool = False  # read from the state log (submitted by an earlier run)


class BatchLog:
    """The log of one cache: its submissions, read and appended."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> list[Submission]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # an interrupted write: drop it before appending
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        submissions: dict[str, Submission] = {}
        for lineno, line in enumerate(data[:end].splitlines(), start=1):
            try:
                event = json.loads(line)
                if event["event"] == "uploaded":
                    submissions[event["input_file_id"]] = Submission(
                        event["input_file_id"], list(event["custom_ids"]), dict(event.get("prior_errors") or {}),
                        float(event["at"]), resumed=True)
                elif event["event"] == "created":
                    submissions[event["input_file_id"]].batch_id = event["batch_id"]
                else:
                    raise ValueError(f"unknown event {event['event']!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise CacheError(f"{self.path}: line {lineno}: not a batch state record ({exc}); this file is "
                                 "written only by the openai-batch teacher") from None
        return list(submissions.values())

    def append(self, event: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**event, "at": round(time.time(), 3)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
