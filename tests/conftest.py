import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The paper's data (../shared/data next to the repo; CI has it). Missing data fails the test, never skips it."""
    path = Path(os.environ.get("STEPDISTILL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "esnli").is_dir() or not (path / "anli1").is_dir():
        pytest.fail(f"shared data not found at {path}: CI provides ../shared/data; set STEPDISTILL_DATA_DIR elsewhere")
    return path
