"""The `stepdistill` command: each subcommand is a typed function elsewhere in the package (help from its docstring).

Options come from the functions' signatures; a parameter typed as a dataclass (DataOptions, SubsetOptions,
TrainConfig) becomes a group of options, ``--student.max_steps``, which also answers to its flat name
``--max-steps``. Leading folders may go without their option names (``serve RUN_DIR``, ``export RUN_DIR OUT``,
``predict RUN_DIR``, ``run EXPERIMENT``). Command modules import heavy libraries (torch, transformers) inside the
function, so `--help` stays fast. Expected failures (bad input, bad option values) end as one ``error: ...`` line
and exit status 1 (2 for option syntax); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing

from jsonargparse import ArgumentParser


def _commands() -> dict:
    from .data_command import data_command
    from .experiments import curve_command
    from .experiments.experiment_file import run_command
    from .experiments.tune import tune_command
    from .teacher.command import generate_command
    from .student.command import train as train_command, predict as predict_command
    from .demo import demo as demo_command
    from .serving.export import export_command
    from .serving.server import serve_command
    from .insights.command import inspect_command
    from .student_teacher import register as register_student_teacher

    register_student_teacher()  # `generate --teacher student:RUN_DIR` (teacher/ may not import student/)

    return {
        "data": data_command,
        "curve": curve_command,
        "generate": generate_command,
        "train": train_command,
        "predict": predict_command,
        "run": run_command,
        "tune": tune_command,
        "demo": demo_command,
        "serve": serve_command,
        "export": export_command,
        "inspect": inspect_command,
    }


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The project's error types for bad input; anything else is a bug and keeps its traceback."""
    from .data import DataError
    from .locks import LockHeldError
    from .teacher.teachers import TeacherFatalError

    # ValueError: bad option values and specs (TrainConfig, get_task, presets, subsample) raise it with a message;
    # LockHeldError: a second sweep or generate on a folder or cache in use
    return DataError, TeacherFatalError, ValueError, FileNotFoundError, NotADirectoryError, LockHeldError


class _OneLineErrors(ArgumentParser):
    """Option errors as one ``error:`` line (argparse prints the whole usage first)."""

    def error(self, message, ex=None):  # noqa: D102
        message = re.sub(r'Parser key "([^"]+)":', r"option --\1:", " ".join(str(message).split()))
        if message.startswith("the following arguments are required:"):  # "serve.run_dir" -> "--run-dir"
            message = re.sub(r"\b(?:[a-z_]+\.)+([a-z_]+)", lambda m: "--" + m.group(1).replace("_", "-"), message)
        print("error: " + message, file=sys.stderr)
        raise SystemExit(2)


def _document_from_comments(cls: type) -> None:
    # jsonargparse takes option help from docstrings; TrainConfig documents its fields with trailing comments
    if "Attributes:" in (cls.__doc__ or ""):
        return
    helps, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment = re.match(r"^\s*#\s?(.*)$", line)
        field = re.match(r"^\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if comment:
            pending.append(comment.group(1))
        elif field and field.group(1) in cls.__dataclass_fields__:
            helps[field.group(1)] = " ".join(pending + [field.group(2) or ""]).strip()
            pending = []
        else:
            pending = []
    lines = [f"        {name}: {text}" for name, text in helps.items() if text]
    cls.__doc__ = (cls.__doc__ or cls.__name__) + "\n\n    Attributes:\n" + "\n".join(lines) + "\n"


def _option_groups(command) -> dict[str, str]:
    """Flat option name -> its dotted name, for the command's dataclass-typed parameters."""
    hints = typing.get_type_hints(command)
    flat: dict[str, str] = {}
    for name in inspect.signature(command).parameters:
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint):
            _document_from_comments(hint)
            for field in dataclasses.fields(hint):
                flat.setdefault(field.name, f"{name}.{field.name}")
    for name in inspect.signature(command).parameters:
        flat.pop(name, None)  # a top-level parameter keeps its own name
    return flat


# what leading arguments without an option name stand for: `stepdistill serve RUN_DIR`, `export RUN_DIR OUT`
POSITIONAL = {"run": ("experiment",), "serve": ("run_dir",), "export": ("run_dir", "out"), "predict": ("model_dir",)}


# commands whose --config FILE.yaml is a flat file of TrainConfig fields (jsonargparse's own --config is nested)
FLAT_CONFIG = ("train", "tune")


def _flat_config(args: list[str]) -> list[str]:
    """``--config FILE.yaml`` -> ``--student.FIELD=VALUE`` options right after the subcommand, so options given on
    the command line (later) override the file's."""
    if not args or args[0] not in FLAT_CONFIG:
        return args
    rest, path = [], None
    i = 1
    while i < len(args):
        match = re.match(r"^--config(?:=(.*))?$", args[i])
        if match and (match.group(1) is not None or i + 1 < len(args)):
            path = match.group(1) if match.group(1) is not None else args[i + 1]
            i += 1 if match.group(1) is not None else 2
            continue
        rest.append(args[i])
        i += 1
    if path is None:
        return args
    import json
    from pathlib import Path

    import yaml

    from .student.config import TrainConfig

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found (option --config)")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields, e.g. 'alpha: 0.3' (option --config)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in values:
        if name not in fields:
            raise ValueError(f"{path}: unknown field '{name}' (a TrainConfig field, e.g. alpha, learning_rate)")
    options = [f"--student.{name}={value if isinstance(value, str) else json.dumps(value)}"
               for name, value in values.items()]
    return [args[0], *options, *rest]


def _normalise(args: list[str], commands: dict) -> list[str]:
    """--data-dir -> --data_dir (jsonargparse names options after parameters), flat names -> their group, and
    leading positional arguments -> their options (:data:`POSITIONAL`)."""
    args = _flat_config(args)
    groups = _option_groups(commands[args[0]]) if args and args[0] in commands else {}
    if args and args[0] in POSITIONAL:
        head, rest = [args[0]], args[1:]
        for name in POSITIONAL[args[0]]:
            if not rest or rest[0].startswith("-"):
                break
            head += [f"--{name}", rest.pop(0)]
        args = head + rest
    out = []
    for arg in args:
        match = re.match(r"^--([a-z0-9_.-]+)(=.*)?$", arg)
        if match:
            name = match.group(1).replace("-", "_")
            arg = f"--{groups.get(name, name)}{match.group(2) or ''}"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    commands = _commands()
    for command in commands.values():
        _option_groups(command)  # help text for the dataclass groups, also in `--help`
    try:
        normalised = _normalise(args, commands)
        auto_cli(commands, args=normalised, as_positional=False, parser_class=_OneLineErrors)
    except _expected_errors() as exc:
        if debug:
            raise
        raise SystemExit("error: " + " ".join(str(exc).split())) from None


if __name__ == "__main__":
    main()
