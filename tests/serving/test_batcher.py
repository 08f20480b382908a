"""The dynamic batcher on a fake predict function: batch sizes, the wait limit, one bad input failing alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stepdistill.serving.batcher import DynamicBatcher, PredictionError, QueueFull


class FakePredict:
    """Labels each input by its upper-cased text; rejects "bad" like predict rejects a missing field."""

    def __init__(self, seconds: float = 0.0):
        self.calls: list[tuple[list, bool]] = []
        self.seconds = seconds
        self.threads: set[str] = set()

    def __call__(self, inputs, rationales):
        self.calls.append((list(inputs), rationales))
        self.threads.add(threading.current_thread().name)
        if "bad" in inputs:
            raise ValueError("input 0: missing field(s) text")
        time.sleep(self.seconds)
        return [{"prediction": text.upper(), **({"rationale": f"because {text}"} if rationales else {})}
                for text in inputs]


def _run(fake, coroutine_factory, **options):
    async def main():
        batcher = DynamicBatcher(fake, **options)
        await batcher.start()
        try:
            return await coroutine_factory(batcher), batcher.stats
        finally:
            await batcher.stop()
    return asyncio.run(main())


def test_concurrent_submissions_share_batches_up_to_the_limit():
    fake = FakePredict()
    words = [f"w{i}" for i in range(10)]

    async def go(batcher):
        return await asyncio.gather(*(batcher.submit([w]) for w in words))

    results, stats = _run(fake, go, max_batch_size=4, max_wait_ms=200)
    assert [rows[0]["prediction"] for rows in results] == [w.upper() for w in words]
    assert [len(inputs) for inputs, _ in fake.calls] == [4, 4, 2]
    assert (stats.batches, stats.items, stats.largest_batch) == (3, 10, 4)
    assert "MainThread" not in fake.threads  # predict runs off the event loop


def test_a_lone_input_waits_at_most_max_wait_ms():
    fake = FakePredict()

    async def go(batcher):
        start = time.perf_counter()
        rows = await batcher.submit(["x"])
        return rows, time.perf_counter() - start

    (rows, seconds), _ = _run(fake, go, max_batch_size=64, max_wait_ms=50)
    assert rows == [{"prediction": "X"}]
    assert 0.04 <= seconds < 2.0


def test_one_bad_input_fails_alone_and_rationale_requests_are_grouped():
    fake = FakePredict()

    async def go(batcher):
        return await asyncio.gather(batcher.submit(["a", "bad"]), batcher.submit(["c"], rationales=True),
                                    batcher.submit(["d"]))

    (first, second, third), _ = _run(fake, go, max_batch_size=8, max_wait_ms=100)
    assert first[0] == {"prediction": "A"} and isinstance(first[1], PredictionError)
    assert str(first[1]) == "input 0: missing field(s) text"
    assert second == [{"prediction": "C", "rationale": "because c"}] and third == [{"prediction": "D"}]
    # one call without rationales for the batch (rejected), then each input alone; one call with rationales
    assert fake.calls == [(["a", "bad", "d"], False), (["a"], False), (["bad"], False), (["d"], False),
                          (["c"], True)]


def test_the_event_loop_stays_free_while_predict_runs():
    fake = FakePredict(seconds=0.5)

    async def go(batcher):
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(["slow"])
        task.cancel()
        return ticks

    ticks, _ = _run(fake, go, max_batch_size=2, max_wait_ms=0)
    assert ticks >= 10  # about 50 ticks of 10 ms ran during the 0.5 s predict


def test_a_full_queue_refuses_more_inputs():
    fake = FakePredict(seconds=0.2)

    async def go(batcher):
        first = asyncio.create_task(batcher.submit(["a", "b", "c"]))
        await asyncio.sleep(0)  # queued, not yet taken by the worker
        with pytest.raises(QueueFull, match=r"3 inputs already waiting \(at most 4\)"):
            await batcher.submit(["d", "e"])
        return await first

    rows, _ = _run(fake, go, max_batch_size=8, max_wait_ms=50, max_queue=4)
    assert [row["prediction"] for row in rows] == ["A", "B", "C"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, got 0"):
        DynamicBatcher(FakePredict(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0, got -1"):
        DynamicBatcher(FakePredict(), max_wait_ms=-1)
