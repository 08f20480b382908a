import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_server lives next to the tests

from fake_server import FakeOpenAIServer, Script  # noqa: E402

API_KEY = "sk-test-DO-NOT-LEAK-7f3a9c"


@pytest.fixture
def serve():
    """Start a loopback OpenAI-compatible server with a Script; stopped after the test."""
    servers = []

    def start(**script) -> FakeOpenAIServer:
        server = FakeOpenAIServer(Script(**script)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def nli_examples(count: int, label: str = "entailment", start: int = 0) -> list[dict]:
    """Raw e-SNLI-shaped examples; the [ex:ID] marker tells the fake server which example a prompt is for."""
    return [{"id": i, "premise": f"A dog runs through a park [ex:{i}].", "hypothesis": "An animal is moving.",
             "label": label} for i in range(start, start + count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cache_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
