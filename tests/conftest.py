import os
from pathlib import Path

import pytest

# One torch thread in every test process and the subprocesses they start: the tests' expected values were measured
# that way (tiny models' results move with the thread count), and two workers of a test never fight for the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The paper's data (../shared/data next to the repo; CI has it). Missing data fails the test, never skips it."""
    path = Path(os.environ.get("STEPDISTILL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "esnli").is_dir() or not (path / "anli1").is_dir():
        pytest.fail(f"shared data not found at {path}: CI provides ../shared/data; set STEPDISTILL_DATA_DIR elsewhere")
    return path
