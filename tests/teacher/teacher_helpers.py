"""Helpers shared by the teacher tests (not in conftest.py: several test folders have one, and a
`from conftest import` would pick whichever was imported last)."""

import json
from pathlib import Path

API_KEY = "sk-test-DO-NOT-LEAK-7f3a9c"


def nli_examples(count: int, label: str = "entailment", start: int = 0) -> list[dict]:
    """Raw e-SNLI-shaped examples; the [ex:ID] marker tells the fake server which example a prompt is for."""
    return [{"id": i, "premise": f"A dog runs through a park [ex:{i}].", "hypothesis": "An animal is moving.",
             "label": label} for i in range(start, start + count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cache_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch_api_records(tmp_path: Path, params, outputs: dict, logprobs: dict, count: int) -> list[dict]:
    """The records the Batch API teacher writes for ``count`` e-SNLI examples, served by the fake Batch server with
    these scripted outputs and token log-probabilities (to compare with the online teacher's)."""
    from fake_batch_server import BatchScript, FakeBatchServer
    from fake_server import Script

    from stepdistill.teacher.generator import RationaleGenerator
    from stepdistill.teacher.openai_batch import OpenAIBatchTeacher

    server = FakeBatchServer(Script(outputs=outputs, logprobs=logprobs), BatchScript()).start()
    try:
        teacher = OpenAIBatchTeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, poll_interval=0.01,
                                     progress=False)
        return RationaleGenerator("esnli", teacher, tmp_path / "batch.jsonl", params=params,
                                  progress=False).run(nli_examples(count)).records
    finally:
        server.stop()
