"""Tasks: how an example becomes input text, what its labels are, how answers compare, how teacher text parses.

Built in: ``esnli``, ``anli1`` (3-way NLI), ``cqa`` (five-choice questions) and ``svamp`` (math word problems
whose label is an equation). Users add their own with a subclass and :func:`register_task`, a Python file
(``path/to/tasks.py:ClassName``) or a declarative JSON spec (see :class:`SpecTask`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .arith import evaluate_arithmetic, values_equal

NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class TeacherParse:
    """A teacher output split into rationale and label; ``error`` names why it is unusable (None when usable).

    ``label`` is always a valid label (as the task spells it) or None, so that an invalid one can never become a
    training target; ``raw_label`` keeps the label text as parsed, valid or not, for reports.
    """

    rationale: str | None
    label: str | None
    error: str | None = None
    raw_label: str | None = None

    def __post_init__(self):
        if self.raw_label is None and self.label is not None:
            object.__setattr__(self, "raw_label", self.label)
        if self.error == "unknown_label":  # also when a user's parser sets it itself
            object.__setattr__(self, "label", None)

    @property
    def ok(self) -> bool:
        return self.error is None


def normalize_text(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or trailing period."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


class Task:
    """Base class. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    labels: ClassVar[tuple[str, ...] | None] = None  # fixed label set; None for per-example choices or free-form
    input_fields: ClassVar[tuple[str, ...]] = ()  # raw fields an example must carry
    label_field: ClassVar[str] = "label"
    id_field: ClassVar[str] = "id"
    prompt_name: ClassVar[str] = ""  # template file stem in prompts/
    full_split_sizes: ClassVar[dict[str, int]] = {}  # sizes of the complete public splits (for fractions)
    free_form: ClassVar[bool] = False  # True: predictions are generated, not ranked
    # how candidates are ranked by default: "sum" or per-token "mean" log-probability. Every run reports both; the
    # sum ranked as well or better on e-SNLI and tied on ANLI-R1 (experiments/README.md); CQA is unmeasured
    rank_normalization: ClassVar[str] = "sum"
    official_splits: ClassVar[tuple[str, ...]] = ("train", "valid", "test")  # splits of the authors' release
    # how the task's authors compared a parsed teacher label with gold (their figure is the one to compare with)
    authors_rule: ClassVar[str] = "exact text"

    # -- inputs ---------------------------------------------------------------------------------------------
    def prepare_example(self, example: dict[str, Any]) -> dict[str, Any]:
        """Map another released form of an example onto this task's fields (default: unchanged).

        Raises ValueError naming the field when the example cannot be mapped.
        """
        return example

    def format_input(self, example: dict[str, Any]) -> str:
        """The student's input text (without the [label]/[rationale] prefix)."""
        raise NotImplementedError

    def prompt_fields(self, example: dict[str, Any]) -> dict[str, str]:
        """Values substituted into this task's few-shot prompt template."""
        return {field: str(example[field]) for field in self.input_fields}

    def choices(self, example: dict[str, Any]) -> list[str] | None:
        """Candidate answers to rank for this example (None: generate)."""
        return list(self.labels) if self.labels else None

    # -- labels ---------------------------------------------------------------------------------------------
    def canonical_label(self, text: str, example: dict[str, Any] | None = None) -> str | None:
        """The label as the task spells it, or None when ``text`` is not a valid label."""
        candidates = self.choices(example or {}) if self.labels is None else list(self.labels)
        if candidates is None:
            return text.strip() or None
        wanted = normalize_text(text)
        for candidate in candidates:
            if normalize_text(candidate) == wanted:
                return candidate
        return None

    def is_correct(self, prediction: str, gold: str, example: dict[str, Any] | None = None) -> bool:
        """Exact match after normalisation."""
        return normalize_text(prediction) == normalize_text(gold)

    def authors_agree(self, raw_label: str | None, gold_text: str, example: dict[str, Any] | None = None) -> bool:
        """Whether a teacher's parsed label text agrees with the gold text by :attr:`authors_rule` (default: the
        same text exactly, case included)."""
        return raw_label is not None and raw_label == gold_text

    # -- teacher --------------------------------------------------------------------------------------------
    def parse_teacher(self, output: str, example: dict[str, Any] | None = None) -> TeacherParse:
        raise NotImplementedError

    def answer_text(self, rationale: str, label: str, example: dict[str, Any] | None = None) -> str:
        """Rationale then label in the authors' answer format, which :meth:`parse_teacher` reads back (the
        single-task ablation's target; default ``<rationale> So the answer is <label>.``)."""
        return f"{rationale} So the answer is {label}."

    def _checked(self, rationale: str | None, label: str | None, example: dict[str, Any] | None) -> TeacherParse:
        """Shared validation after a task-specific split into rationale and raw label."""
        if label is None:
            return TeacherParse(rationale, None, "no_answer")
        canonical = self.canonical_label(label, example)
        if canonical is None:
            return TeacherParse(rationale, None, "unknown_label", raw_label=label)
        if not rationale or not rationale.strip():
            return TeacherParse(rationale, canonical, "empty_rationale", raw_label=label)
        return TeacherParse(rationale.strip(), canonical, None, raw_label=label)


class _NLITask(Task):
    labels = NLI_LABELS
    input_fields = ("premise", "hypothesis")

    def format_input(self, example: dict[str, Any]) -> str:
        return f"premise: {example['premise'].strip()} hypothesis: {example['hypothesis'].strip()}"


class ESNLI(_NLITask):
    """e-SNLI. Teacher text: ``<rationale>\\nAnswer: <label>`` then an echoed ``Premise: ...``."""

    name = "esnli"
    prompt_name = "esnli"
    full_split_sizes = {"train": 549_367, "valid": 9_842, "test": 9_824}

    def parse_teacher(self, output, example=None):
        # The authors' rule: rationale before "Answer:", label after "Answer: " up to "Premise".
        rationale = output.split("Answer:")[0].rstrip()
        if "Answer: " not in output:
            return self._checked(rationale, None, example)
        label = output.split("Answer: ")[1].split("Premise")[0].rstrip()
        return self._checked(rationale, label, example)

    def answer_text(self, rationale, label, example=None):
        return f"{rationale}\nAnswer: {label}"


class ANLI1(_NLITask):
    """ANLI round 1. Teacher text: ``<rationale> So the answer is <label>.`` then an echoed ``Premise: ...``."""

    name = "anli1"
    prompt_name = "anli1"
    full_split_sizes = {"train": 16_946, "valid": 1_000, "test": 1_000}

    def parse_teacher(self, output, example=None):
        # The authors' rule: text before the first "Premise:", split once on "So the answer is", drop the period.
        parts = output.split("Premise:")[0].rstrip().split("So the answer is")
        if len(parts) != 2:
            return self._checked(parts[0].rstrip() if parts else None, None, example)
        rationale, label = parts
        return self._checked(rationale.rstrip(), label.lstrip()[:-1], example)


class CQA(Task):
    """CommonsenseQA (CoS-E v1.11 fields: question, choices[5], answer). The label is the answer text."""

    name = "cqa"
    prompt_name = "cqa"
    input_fields = ("question", "choices")
    label_field = "answer"
    full_split_sizes = {"train": 9_741, "test": 1_221}
    official_splits = ("train", "test")

    def format_input(self, example):
        letters = "abcde"
        lines = [example["question"].strip(), "Answer Choices:"]
        lines += [f"({letters[i]}) {choice}" for i, choice in enumerate(example["choices"])]
        return "\n".join(lines)

    def prompt_fields(self, example):
        return {"question": self.format_input(example)}

    def choices(self, example):
        return list(example.get("choices") or []) or None

    def parse_teacher(self, output, example=None):
        # The authors' rule: text before "Q:", split once on "So the answer is"; the label is the text after the
        # first "(x)" marker up to the next one, stripped, minus one final period. No marker: no answer.
        parts = output.split("Q:")[0].rstrip().split("So the answer is")
        if len(parts) != 2:
            return self._checked(parts[0].rstrip(), None, example)
        rationale, tail = parts
        pieces = re.split(r"\(.\)", tail)
        if len(pieces) < 2:
            return self._checked(rationale.rstrip(), None, example)
        label = pieces[1].strip()
        return self._checked(rationale.rstrip(), label[:-1] if label.endswith(".") else label, example)

    def answer_text(self, rationale, label, example=None):
        choices = self.choices(example or {}) or []
        letter = "abcde"[choices.index(label)] if label in choices and choices.index(label) < 5 else "a"
        return f"{rationale} So the answer is ({letter}) {label}."


class SVAMP(Task):
    """SVAMP (fields Body, Question, Equation). The label is an equation, compared by value.

    Also reads the authors' released form (``input`` = Body + newline + Question, ``label`` = the equation) and
    takes SVAMP.json's ``ID`` as the id.
    """

    name = "svamp"
    prompt_name = "svamp"
    input_fields = ("Body", "Question")
    label_field = "Equation"
    full_split_sizes = {"train": 800, "test": 200}
    official_splits = ("train", "test")
    free_form = True

    def prepare_example(self, example):
        example = dict(example)
        if "id" not in example and "ID" in example:
            example["id"] = example["ID"]
        if "Body" not in example and "Question" not in example and isinstance(example.get("input"), str):
            body, newline, question = example.pop("input").rpartition("\n")
            if not newline:
                raise ValueError("field 'input': expected the body and the question separated by a newline")
            example["Body"], example["Question"] = body, question
        if "Equation" not in example and "label" in example:
            example["Equation"] = example.pop("label")
        return example

    def format_input(self, example):
        return f"{example['Body'].strip()}\n{example['Question'].strip()}"

    def prompt_fields(self, example):
        return {"question": self.format_input(example)}

    def canonical_label(self, text, example=None):
        try:
            evaluate_arithmetic(text)
        except ValueError:
            return None
        return text.strip()

    def is_correct(self, prediction, gold, example=None):
        return values_equal(prediction, gold)

    authors_rule = "equation value"  # the released code evaluates both equations and compares the numbers

    def authors_agree(self, raw_label, gold_text, example=None):
        return raw_label is not None and values_equal(raw_label, gold_text)

    def parse_teacher(self, output, example=None):
        parts = output.split("Q:")[0].rstrip().split("The answer is")
        if len(parts) != 2:
            return self._checked(parts[0].rstrip(), None, example)
        rationale, tail = parts
        # the authors' rule: the label is the first "(" to the last ")" of the line; no parentheses: no answer
        match = re.search(r"\(.*\)", tail)
        return self._checked(rationale.rstrip(), match.group(0) if match else None, example)

    def answer_text(self, rationale, label, example=None):
        equation = label.strip()
        wrapped = equation if equation.startswith("(") and equation.endswith(")") else f"({equation})"
        return f"{rationale} The answer is {wrapped}."


class SpecTask(Task):
    """A task declared in JSON, for datasets a user brings. Keys:

    - ``name`` (str), ``input_template`` (str.format over example fields, e.g. ``"review: {text}"``)
    - ``labels`` (list of str) or ``"free_form": true``; ``label_field`` (default ``label``); ``id_field`` (default ``id``)
    - ``teacher_pattern``: regex with named groups ``rationale`` and ``label`` applied to teacher text
      (default: ``<rationale> So the answer is <label>.``)
    - ``prompt``: path of the few-shot template, relative to the spec file (optional)
    """

    DEFAULT_PATTERN = r"(?s)^(?P<rationale>.*?)\s*So the answer is\s*(?P<label>[^\n]*?)\.?\s*(?:\n|$)"

    def __init__(self, spec: dict[str, Any], source: str = "<spec>"):
        missing = [key for key in ("name", "input_template") if key not in spec]
        if missing:
            raise ValueError(f"{source}: task spec is missing field(s) {', '.join(missing)}")
        if not spec.get("labels") and not spec.get("free_form"):
            raise ValueError(f"{source}: task spec needs 'labels' (a list) or 'free_form': true")
        self.spec = spec
        self.name = spec["name"]
        self.labels = tuple(spec["labels"]) if spec.get("labels") else None
        self.free_form = bool(spec.get("free_form"))
        self.label_field = spec.get("label_field", "label")
        self.id_field = spec.get("id_field", "id")
        self.input_template = spec["input_template"]
        self.input_fields = tuple(re.findall(r"{(\w+)[^}]*}", self.input_template))
        self.teacher_pattern = re.compile(spec.get("teacher_pattern", self.DEFAULT_PATTERN))
        self.prompt_name = spec.get("prompt", "")
        self.source = source
        self.prompt_path = (Path(source).parent / spec["prompt"]) if spec.get("prompt") and source != "<spec>" else None
        self.full_split_sizes = dict(spec.get("full_split_sizes", {}))

    def format_input(self, example):
        return self.input_template.format(**example)

    def parse_teacher(self, output, example=None):
        match = self.teacher_pattern.search(output)
        if not match:
            return TeacherParse(None, None, "no_answer")
        return self._checked(match.group("rationale"), match.group("label"), example)


def read_json_file(path: Path, what: str) -> Any:
    """A JSON config file (task spec, preset); errors name the file and line."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON in {what}: {exc.msg}") from None


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a Task subclass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty 'name' to be registered")
    _REGISTRY[cls.name] = cls
    return cls


for _builtin in (ESNLI, ANLI1, CQA, SVAMP):
    register_task(_builtin)


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def _load_class(reference: str) -> type[Task]:
    """``/path/file.py:Class`` or ``module:Class`` -> the class."""
    target, _, attr = reference.rpartition(":")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        if module_spec is None or not Path(target).exists():
            raise ValueError(f"task file not found: {target}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"{reference}: {attr} is not a stepdistill.tasks.Task subclass")
    return cls


def _from_reference(reference: dict[str, Any]) -> Task:
    if "spec" in reference:
        if not isinstance(reference["spec"], dict):
            raise ValueError("task reference: field 'spec' must be a JSON object")
        return SpecTask(reference["spec"], source=str(reference.get("source") or "<spec>"))
    if reference.get("name") in _REGISTRY:
        return _REGISTRY[reference["name"]]()
    if isinstance(reference.get("class"), str):
        return get_task(reference["class"])
    if "name" in reference:
        raise ValueError(f"task reference: unknown task {reference['name']!r}; built in: {', '.join(task_names())}")
    raise ValueError(f"task reference {reference!r}: expected a field 'name', 'spec' or 'class'")


# tasks that ship with stepdistill but live with their code (a name here, so that no module is imported early)
_BUNDLED_ELSEWHERE = {"kinds-demo": "stepdistill.demo"}


def get_task(name: str | Task | dict[str, Any]) -> Task:
    """A task by registered name, JSON spec path (``*.json``), Python class (``file.py:Class``, ``module:Class``)
    or a :func:`task_reference` dict (as stored with a trained student)."""
    if isinstance(name, Task):
        return name
    if isinstance(name, dict):
        return _from_reference(name)
    if name not in _REGISTRY and name in _BUNDLED_ELSEWHERE:  # registered on import of its module
        importlib.import_module(_BUNDLED_ELSEWHERE[name])
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name.endswith(".json"):
        path = Path(name)
        return SpecTask(read_json_file(path, "task spec"), source=str(path))
    if ":" in name:
        target, _, attr = name.rpartition(":")
        if target.endswith(".py"):
            name = f"{Path(target).resolve()}:{attr}"  # absolute, so that the reference works from anywhere
        task = _load_class(name)()
        task._reference = name  # how it was loaded: a class from a file cannot be found again by its module name
        return task
    raise ValueError(f"unknown task {name!r}; built in: {', '.join(task_names())}; or a spec.json / file.py:Class")


def task_reference(task: Task) -> dict[str, Any]:
    """A JSON-serialisable description from which :func:`get_task` rebuilds ``task`` (e.g. from a run folder).

    ``{"name": ...}`` for registered tasks (with ``"class"`` too when not built in), ``{"spec": {...},
    "source": path}`` for JSON spec tasks, ``{"class": "/abs/file.py:Cls"}`` or ``{"class": "module:Cls"}`` for
    Python classes.
    """
    if isinstance(task, SpecTask):
        source = task.source if task.source == "<spec>" else str(Path(task.source).resolve())
        return {"spec": task.spec, "source": source}
    cls = type(task)
    loaded_as = getattr(task, "_reference", None)
    class_reference = loaded_as or _class_reference(cls)
    if _REGISTRY.get(task.name) is cls:
        builtin = cls.__module__ == __name__
        return {"name": task.name} if builtin or class_reference is None else {"name": task.name, "class": class_reference}
    if class_reference is None:
        raise ValueError(f"task {task.name!r}: class {cls.__qualname__} cannot be found again (define it at the "
                         "top level of a module or file)")
    return {"class": class_reference}


def _class_reference(cls: type[Task]) -> str | None:
    """``module:Cls`` when the module can be imported by name, else ``/abs/file.py:Cls``; None when neither."""
    if "<" in cls.__qualname__ or "." in cls.__qualname__:  # defined inside a function or class
        return None
    if cls.__module__ != "__main__" and importlib.util.find_spec(cls.__module__.split(".")[0]) is not None:
        return f"{cls.__module__}:{cls.__qualname__}"
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return f"{Path(file).resolve()}:{cls.__qualname__}" if file else None
