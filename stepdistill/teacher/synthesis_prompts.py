"""Synthesis prompts: few-shot templates in which the teacher writes a NEW example (its fields, a rationale and a
label) after real ones, and the bounded parser of its reply.

Format of a synthesis template file (the comment and ``# stop:`` header of :mod:`.prompts`):

- the instruction, then a line ``###``, then the example block: the task's input fields as ``{field}`` placeholders
  and, last, ``{answer}``, the rationale and label in the task's answer format (``Task.answer_text``, which
  ``Task.parse_teacher`` reads back), e.g. ``Premise: {premise}\\nHypothesis: {hypothesis}\\nReasonings: {answer}``;
- the prompt sent is the instruction, each demonstration's block after a ``###`` line, then a last ``###`` line
  and the block's text before its first placeholder (``Premise:``): the teacher continues with a new example.
  Stop at ``\\n###`` (the built-in templates set it); the parser also cuts the reply there, and the answer where a
  line starts with the block's first label (a next example).

A field that holds a list (CQA's ``choices``) is written ``(a) first (b) second ...`` and read back the same way.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from ..tasks import Task
from .prompts import PromptTemplate, load_template

SEPARATOR = "###"
ANSWER = "answer"
MAX_REPLY_CHARS = 8_000  # a reply is cut here before parsing: the parser's work is bounded whatever the teacher says
MAX_FIELD_CHARS = 2_000  # a longer field is invalid (no real example of the built-in tasks comes close)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_LIST_ITEM = re.compile(r"\(([a-z])\)")


@dataclass(frozen=True)
class SynthesisTemplate:
    prompt: PromptTemplate  # the file as parsed (its stop strings and hash)
    instruction: str
    block: str
    segments: tuple[tuple[str, str], ...]  # (literal text before the placeholder, placeholder name), in order
    list_fields: tuple[str, ...] = ()

    @property
    def cue(self) -> str:
        """What the prompt ends with: the block's text before its first placeholder (``Premise:``)."""
        return self.segments[0][0].rstrip()

    @property
    def hash(self) -> str:
        return self.prompt.hash

    @property
    def fields(self) -> list[str]:
        return [name for _, name in self.segments if name != ANSWER]

    def render_block(self, fields: dict[str, Any], answer: str) -> str:
        values = {name: render_value(fields.get(name)) for name in self.fields}
        return self.block.format_map({**values, ANSWER: answer})

    def render(self, demonstrations: list[tuple[dict[str, Any], str]]) -> str:
        """The prompt: the instruction, each (fields, answer) demonstration, then the cue of a new example."""
        parts = [self.instruction] + [self.render_block(fields, answer) for fields, answer in demonstrations] + [self.cue]
        return f"\n{SEPARATOR}\n".join(parts)

    def parse_reply(self, reply: str) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """(fields, answer text, None), or (None, None, what is wrong) for a reply without the block's fields.

        Linear in the reply: each label is found once, left to right (no regular expression that could backtrack),
        on at most MAX_REPLY_CHARS characters.
        """
        text = (self.segments[0][0] + reply.lstrip(" "))[:MAX_REPLY_CHARS]
        cut = text.find("\n" + SEPARATOR)
        text = text[:cut] if cut >= 0 else text
        starts, position = [], 0
        for literal, name in self.segments:
            marker = literal.strip()
            found = text.find(marker, position)
            if found < 0:
                return None, None, f"no {marker!r} for field '{name}'"
            starts.append((name, found, found + len(marker)))
            position = found + len(marker)
        # the answer ends where a next example would begin, should the teacher go on without a separator
        following = text.find("\n" + self.segments[0][0].strip(), starts[-1][2])
        values: dict[str, str] = {}
        for index, (name, _, start) in enumerate(starts):
            end = starts[index + 1][1] if index + 1 < len(starts) else following if following >= 0 else len(text)
            values[name] = text[start:end].strip()
        fields: dict[str, Any] = {}
        for name in self.fields:
            value = values[name]
            if not value:
                return None, None, f"field '{name}' is empty"
            if len(value) > MAX_FIELD_CHARS:
                return None, None, f"field '{name}' is longer than {MAX_FIELD_CHARS} characters"
            if name in self.list_fields:
                items = parse_list(value)
                if items is None:
                    return None, None, f"field '{name}': expected at least two distinct items '(a) ... (b) ...'"
                fields[name] = items
            else:
                fields[name] = " ".join(value.split())
        if not values[ANSWER]:
            return None, None, "no answer after the fields"
        return fields, values[ANSWER], None


def render_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"({_LETTERS[i]}) {' '.join(str(item).split())}" for i, item in enumerate(value[:len(_LETTERS)]))
    return " ".join(str(value).split()) if value is not None else ""


def parse_list(text: str) -> list[str] | None:
    """``(a) x (b) y`` -> [x, y]; None unless the markers run a, b, c, ... and the items are distinct, non-empty."""
    markers = list(_LIST_ITEM.finditer(text))
    if len(markers) < 2 or text[:markers[0].start()].strip():
        return None
    if [m.group(1) for m in markers] != list(_LETTERS[:len(markers)]):
        return None
    items = [" ".join(text[m.end():(markers[i + 1].start() if i + 1 < len(markers) else len(text))].split())
             for i, m in enumerate(markers)]
    if not all(items) or len(set(items)) != len(items):
        return None
    return items


def parse_synthesis_template(prompt: PromptTemplate, task: Task, list_fields: tuple[str, ...] = ()) -> SynthesisTemplate:
    """Split a parsed template file into instruction and example block, and check the block against the task."""
    lines = prompt.body.split("\n")
    where = prompt.source
    if SEPARATOR not in (line.strip() for line in lines):
        raise ValueError(f"{where}: a synthesis template needs a line '{SEPARATOR}' between the instruction and the "
                         "example block")
    split_at = next(i for i, line in enumerate(lines) if line.strip() == SEPARATOR)
    instruction, block = "\n".join(lines[:split_at]).strip(), "\n".join(lines[split_at + 1:]).strip("\n")
    line_of_block = prompt.first_line + split_at + 1
    if not instruction:
        raise ValueError(f"{where}: the synthesis template has no instruction before '{SEPARATOR}'")
    if any(name for _, name, _, _ in string.Formatter().parse(instruction)):
        raise ValueError(f"{where}: the instruction takes no placeholders (write a literal brace as {{{{ or }}}})")
    instruction = instruction.replace("{{", "{").replace("}}", "}")
    segments = []
    for literal, name, _, _ in string.Formatter().parse(block):
        if name is None:
            if literal.strip():
                raise ValueError(f"{where}: line {line_of_block}: the example block must end with {{{ANSWER}}}")
            continue
        if not literal.strip():
            raise ValueError(f"{where}: line {line_of_block}: placeholder {{{name}}} needs a label before it "
                             "(e.g. 'Premise: {premise}')")
        segments.append((literal, name))
    names = [name for _, name in segments]
    wanted = list(task.input_fields)
    if not segments or names[-1] != ANSWER or names.count(ANSWER) != 1:
        raise ValueError(f"{where}: line {line_of_block}: the example block needs {{{ANSWER}}} once, as its last "
                         "placeholder")
    if sorted(names[:-1]) != sorted(wanted):
        raise ValueError(f"{where}: line {line_of_block}: the example block's placeholders "
                         f"{', '.join(names[:-1]) or 'none'} must be the task's fields {', '.join(wanted)}, each once")
    return SynthesisTemplate(prompt, instruction, block, tuple(segments), tuple(list_fields))


def synthesis_template_for_task(task: Task, path: str | None = None,
                                list_fields: tuple[str, ...] = ()) -> SynthesisTemplate:
    """The synthesis template at ``path``, else the task's built-in one (``prompts/synthesize/<task>.txt``)."""
    if path is None:
        if not task.prompt_name:
            raise ValueError(f"task {task.name!r} has no synthesis template; pass one with --prompt path/to/template.txt")
        name = f"synthesize/{task.prompt_name}"
        try:
            prompt = load_template(name)
        except ValueError:
            raise ValueError(f"task {task.name!r} has no built-in synthesis template ({name}.txt); pass one with "
                             "--prompt path/to/template.txt") from None
    else:
        prompt = load_template(path)
    return parse_synthesis_template(prompt, task, list_fields)
