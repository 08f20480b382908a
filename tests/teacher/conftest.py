import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_server lives next to the tests

from fake_server import FakeOpenAIServer, Script  # noqa: E402


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
