"""Running the CLI in process and reading the one error line an expected failure ends with."""

from __future__ import annotations

import pytest

from stepdistill.cli import main


def error_line(capsys, args: list[str]) -> str:
    """Run the CLI in process; the one error line it ends with (stderr of an option error, or its exit message)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    code = exited.value.code
    assert code not in (0, None)
    printed = capsys.readouterr()
    message = code if isinstance(code, str) else printed.err
    lines = [line for line in message.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), message
    assert "Traceback" not in printed.err
    return lines[0]
