"""A toy task (16 colours, warm or cold), the bundled sentiment example's data options and a loopback server in a
background thread, for the serving tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from stepdistill.tasks import SpecTask

TOY_SPEC = {"name": "toy-colors", "input_template": "the color is {text}", "labels": ["warm", "cold"]}
WARM = ("red", "orange", "yellow", "pink", "gold", "amber", "crimson", "scarlet")
COLD = ("blue", "green", "cyan", "teal", "navy", "azure", "indigo", "violet")

DATA = Path(__file__).resolve().parents[2] / "data"
SENTIMENT_INPUTS = DATA / "sentiment_train.jsonl"  # the bundled example: 12 reviews, also the inputs tests predict
SENTIMENT_DATA = ["--task", str(DATA / "sentiment_task.json"), "--source", "jsonl", "--files",
                  f"{{train: {SENTIMENT_INPUTS}}}", "--teacher-field", "teacher"]  # `train`'s data options for it


def toy_task() -> SpecTask:
    return SpecTask(dict(TOY_SPEC))


def toy_records() -> list[dict]:
    """The 16 colours as the data layer's records, each with a usable teacher rationale."""
    task = toy_task()
    records = []
    for i, (word, label) in enumerate([(w, "warm") for w in WARM] + [(w, "cold") for w in COLD]):
        fields = {"id": i, "text": word, "label": label}
        records.append({"id": str(i), "input": task.format_input(fields), "label": label, "choices": list(task.labels),
                        "teacher_output": f"{word} is a {label} color. So the answer is {label}.",
                        "rationale": f"{word} is a {label} color", "teacher_label": label, "teacher_error": None,
                        "fields": fields})
    return records


@contextlib.contextmanager
def loopback_server(app):
    """Serve an aiohttp app on 127.0.0.1 at a free port in a thread of its own; yields the base URL."""
    from stepdistill.serving.server import start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start_server(app, "127.0.0.1", 0), loop).result(60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
