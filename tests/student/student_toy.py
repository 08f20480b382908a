"""Tiny toy task (16 colours, warm or cold) shaped like the data layer's records, for the student tests."""

from __future__ import annotations

from stepdistill.tasks import SpecTask

TOY_SPEC = {"name": "toy-colors", "input_template": "the color is {text}", "labels": ["warm", "cold"], "label_field": "label"}
WARM = ("red", "orange", "yellow", "pink", "gold", "amber", "crimson", "scarlet")
COLD = ("blue", "green", "cyan", "teal", "navy", "azure", "indigo", "violet")


def toy_task() -> SpecTask:
    return SpecTask(dict(TOY_SPEC))


def toy_records(without_rationale: tuple[int, ...] = ()) -> list[dict]:
    """16 records shaped like the data layer's; the indices in ``without_rationale`` have an unusable teacher output."""
    task = toy_task()
    records = []
    for i, (word, label) in enumerate([(w, "warm") for w in WARM] + [(w, "cold") for w in COLD]):
        fields = {"id": i, "text": word, "label": label}
        usable = i not in without_rationale
        records.append({
            "id": str(i), "input": task.format_input(fields), "label": label, "choices": list(task.labels),
            "teacher_output": f"{word} is a {label} color. So the answer is {label}." if usable else "garbled",
            "rationale": f"{word} is a {label} color" if usable else None,
            "teacher_label": label if usable else None,
            "teacher_error": None if usable else "no_answer",
            "fields": fields,
        })
    return records


