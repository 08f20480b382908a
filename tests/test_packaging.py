"""pyproject lists packages by hand (prompts/ and data/ are mapped into the package): every subpackage must be there,
or a plain `pip install .` leaves it out and the CLI fails to import."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "stepdistill").rglob("__init__.py")}
    assert found - listed == set()
