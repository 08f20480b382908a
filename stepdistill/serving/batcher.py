"""Dynamic batching: concurrent requests share one ``predict`` call, run in a thread so the event loop stays free.

aiohttp has no batching of its own, and the student's ``predict`` is a blocking batched call, so this is a small
asyncio queue: a worker takes the first waiting input, collects more until ``max_batch_size`` or ``max_wait_ms``,
and answers every input's future from one ``predict`` per ``rationales`` setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("stepdistill.serving")

PredictFn = Callable[[list[Any], bool], list[dict[str, Any]]]  # (inputs, rationales) -> one row per input


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.largest_batch = max(self.largest_batch, size)
        self.busy_seconds += seconds
        self.sizes[size] = self.sizes.get(size, 0) + 1


class QueueFull(Exception):
    """More inputs are waiting than ``max_queue``: the caller should answer 503 rather than queue without bound."""


class PredictionError(Exception):
    """``predict`` rejected this one input (e.g. a field the task cannot format); the others were answered."""


@dataclass
class _Item:
    value: Any
    rationales: bool
    future: asyncio.Future


class DynamicBatcher:
    """Queue of single inputs answered in batches by one worker task (start it inside the running loop)."""

    def __init__(self, predict_fn: PredictFn, max_batch_size: int = 64, max_wait_ms: float = 10.0,
                 max_queue: int = 8192):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predict_fn = predict_fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="stepdistill-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    async def submit(self, inputs: list[Any], rationales: bool = False) -> list[dict[str, Any] | PredictionError]:
        """One row per input, in order (a :class:`PredictionError` in place of an input ``predict`` rejected)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        if self._queue.qsize() + len(inputs) > self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} inputs already waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(value, rationales, loop.create_future()) for value in inputs]
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items), return_exceptions=True))

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                # whatever is already queued still joins: waiting costs nothing then
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                continue
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            start = time.perf_counter()
            for rationales in (False, True):
                group = [item for item in batch if item.rationales == rationales and not item.future.done()]
                if group:
                    await self._answer(group, rationales)
            self.stats.record(len(batch), time.perf_counter() - start)

    async def _answer(self, group: list[_Item], rationales: bool) -> None:
        try:
            rows = await asyncio.to_thread(self.predict_fn, [item.value for item in group], rationales)
        except ValueError as exc:
            if len(group) == 1:
                _settle(group[0], PredictionError(str(exc)))
                return
            # one bad input must not fail the requests it was batched with: answer each alone (bounded by the batch)
            for item in group:
                await self._answer([item], rationales)
            return
        except Exception as exc:  # a real bug: every waiting request gets a 500, the worker keeps serving
            log.exception("predict failed")
            for item in group:
                _settle(item, exc)
            return
        for item, row in zip(group, rows):
            _settle(item, row)


def _settle(item: _Item, result: Any) -> None:
    if item.future.done():  # the client went away and its request was cancelled
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)
