"""The `stepdistill` command: each subcommand is a typed function elsewhere in the package (help from its docstring).

Command modules import heavy libraries (torch, transformers) inside the function, so `--help` stays fast.
"""

from __future__ import annotations

import sys


def _commands() -> dict:
    from .commands import data

    return {
        "data": data,
    }


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    auto_cli(_commands(), args=sys.argv[1:] if argv is None else argv, as_positional=False)


if __name__ == "__main__":
    main()
