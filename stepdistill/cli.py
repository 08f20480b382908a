"""The `stepdistill` command: each subcommand is a typed function elsewhere in the package (help from its docstring).

Command modules import heavy libraries (torch, transformers) inside the function, so `--help` stays fast.
"""

from __future__ import annotations

import re
import sys


def _commands() -> dict:
    from .data import data_command
    from .experiments import curve_command
    from .teacher.command import generate_command
    from .student.command import train as train_command, predict as predict_command
    from .demo import demo as demo_command
    from .insights.command import inspect_command

    return {
        "data": data_command,
        "curve": curve_command,
        "generate": generate_command,
        "train": train_command,
        "predict": predict_command,
        "demo": demo_command,
        "inspect": inspect_command,
    }


def _accept_dashes(args: list[str]) -> list[str]:
    # jsonargparse names options after the parameters (--data_dir); accept the usual --data-dir spelling too
    return [re.sub(r"^(--[a-z0-9_-]+)", lambda m: m.group(1)[:2] + m.group(1)[2:].replace("-", "_"), arg)
            if arg.startswith("--") else arg for arg in args]


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    args = sys.argv[1:] if argv is None else argv
    auto_cli(_commands(), args=_accept_dashes(args), as_positional=False)


if __name__ == "__main__":
    main()
