"""Few-shot chain-of-thought prompt templates: plain text files a user can copy and edit.

Format of a template file:

- Lines at the top that start with ``#`` are comments, not sent. Among them, ``# stop: ["\\nPremise:"]`` (a JSON
  list of strings) sets the stop strings the teacher uses.
- The rest is the prompt: the demonstrations, then the query with ``{field}`` placeholders (``str.format`` syntax,
  simple names only; a literal brace is written ``{{`` or ``}}``). The values come from ``task.prompt_fields``.
- Trailing whitespace at the end of the prompt is removed, so the teacher continues right after e.g. ``Answer:``.

Built-in templates ship inside the package (``stepdistill.prompts``); a path to any ``.txt`` file works too.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..tasks import Task


@dataclass(frozen=True)
class PromptTemplate:
    body: str
    stop: tuple[str, ...] = ()
    source: str = "<string>"
    first_line: int = 1  # line of the source file where the prompt text starts, for messages

    def __post_init__(self):
        for lineno, line in enumerate(self.body.splitlines(), start=self.first_line):
            try:
                fields = [name for _, name, _, _ in string.Formatter().parse(line) if name is not None]
            except ValueError as exc:
                raise ValueError(f"{self.source}: line {lineno}: {exc} (write a literal brace as {{{{ or }}}})") from None
            for name in fields:
                if not name.isidentifier():
                    raise ValueError(f"{self.source}: line {lineno}: placeholder {{{name}}} must be a simple field name")

    @property
    def fields(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.body) if name]

    @property
    def hash(self) -> str:
        return text_hash(json.dumps([self.body, list(self.stop)]))

    def render(self, values: dict[str, str]) -> str:
        missing = [name for name in self.fields if name not in values]
        if missing:
            line = next(i for i, text in enumerate(self.body.splitlines(), start=self.first_line) if "{" + missing[0] + "}" in text)
            raise ValueError(f"{self.source}: line {line}: placeholder {{{missing[0]}}} has no value; "
                             f"the example provides: {', '.join(sorted(values)) or 'nothing'}")
        return self.body.format_map(values)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_template(text: str, source: str = "<string>") -> PromptTemplate:
    lines = text.splitlines()
    stop: tuple[str, ...] = ()
    header = 0
    while header < len(lines) and lines[header].startswith("#"):
        setting = lines[header][1:].strip()
        if setting.startswith("stop:"):
            try:
                value = json.loads(setting[len("stop:"):])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source}: line {header + 1}: 'stop:' needs a JSON list of strings: {exc.msg}") from None
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"{source}: line {header + 1}: 'stop:' needs a JSON list of non-empty strings")
            stop = tuple(value)
        header += 1
    while header < len(lines) and not lines[header].strip():
        header += 1
    body = "\n".join(lines[header:]).rstrip()
    if not body:
        raise ValueError(f"{source}: the template has no prompt text")
    return PromptTemplate(body, stop, source, first_line=header + 1)


def _built_in_folder():
    """The installed ``stepdistill.prompts`` package; in a source checkout run in place (``python -m stepdistill.cli``
    from the repository root) that package does not exist, and the top-level prompts/ folder is used."""
    try:
        return resources.files("stepdistill.prompts")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "prompts"


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """A template by file path, or by the name of a built-in one (``esnli``, ``anli1``, ``cqa``, ``svamp``)."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.exists():
        if not path.is_file():
            raise ValueError(f"prompt template not found: {path}")
        return parse_template(path.read_text(encoding="utf-8"), str(path))
    folder = _built_in_folder()
    resource = folder / f"{name_or_path}.txt"
    if not resource.is_file():
        built_in = sorted(item.name[:-4] for item in folder.iterdir() if item.name.endswith(".txt"))
        raise ValueError(f"no built-in prompt template {str(name_or_path)!r}; built in: {', '.join(built_in)}; or give a .txt path")
    return parse_template(resource.read_text(encoding="utf-8"), f"stepdistill.prompts/{name_or_path}.txt")


def template_for_task(task: Task, path: str | Path | None = None) -> PromptTemplate:
    """The template at ``path`` if given, else the task's own (a spec task's ``prompt``, or a built-in one)."""
    if path is not None:
        return load_template(path)
    prompt_path = getattr(task, "prompt_path", None)
    if prompt_path is not None:
        return load_template(prompt_path)
    if not task.prompt_name:
        raise ValueError(f"task {task.name!r} has no prompt template; pass one with --prompt path/to/template.txt")
    return load_template(task.prompt_name)
