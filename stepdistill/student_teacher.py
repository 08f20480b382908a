"""The ``student:RUN_DIR`` teacher: a trained stepdistill student (its run folder or an export) teaching another.

It lives above ``teacher/`` and ``student/``, which may not import each other: it implements the teacher interface
with the student's own inference, and the CLI registers it (:func:`register`). For every example it writes the
rationale the student generates and the label its ranking picks, in the task's answer format (which the task's
parser reads back), with every candidate's rank score as the student ranks them (the sum, or the per-token mean,
of the candidate's log-probabilities after the label prefix). The generator log-softmaxes those into
``label_logprobs`` (source ``scores``), with or without ``--label-logprobs``: they come with the ranking.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from .teacher.teachers import GenerationParams, Reply, Teacher, register_teacher_kind

SUPPORTED_METHODS = ("step-by-step",)  # a label ranked over candidates and a rationale task to generate from


class StudentTeacher(Teacher):
    """A trained student as the teacher.

    Args:
        run_dir: A `stepdistill train` run folder (``model/`` inside, LoRA adapters too) or a `stepdistill export`
            folder.
        task: The task name the generator's examples belong to; the student must have been trained on it.
        device: ``auto`` (the GPU when there is one) or a torch device.
        batch_size: Examples per inference batch.
    """

    kind = "student"
    label_source = "scores"
    uses_prompt = False  # it reads the example's input as its training formatted it, not a few-shot prompt
    uses_fields = True
    max_concurrency = 1  # one batch at a time on the device

    def __init__(self, run_dir: str | Path, task: str | None = None, device: str = "auto", batch_size: int = 8):
        from .student.predict import load_trained_student

        path = Path(run_dir)
        if not path.is_dir():
            raise ValueError(f"student teacher: no such run folder or export: {path}")
        if batch_size < 1:
            raise ValueError(f"student teacher: batch_size must be >= 1, got {batch_size}")
        self.student = load_trained_student(path, device=None if device == "auto" else device)
        if task is not None and self.student.task.name != task:
            raise ValueError(f"student teacher {path}: trained on task {self.student.task.name!r}, not {task!r}")
        method = self.student.meta.get("method", "standard")
        if method not in SUPPORTED_METHODS:
            raise ValueError(f"student teacher {path}: a {method} student cannot teach rationales with label scores; "
                             f"train the teacher with --method {' or '.join(SUPPORTED_METHODS)}")
        self.model = path.resolve().name
        self.batch_size = batch_size
        self.checkpoint = _fingerprint(self.student.path)

    def __repr__(self) -> str:
        return f"StudentTeacher({str(self.student.path)!r}, task={self.student.task.name!r})"

    def key_params(self, params: GenerationParams) -> dict[str, Any]:
        # the student answers greedily with its own training settings; what changes its answers is its weights
        return {"checkpoint": self.checkpoint}

    def check(self, params: GenerationParams) -> None:
        if params.n > 1:
            raise ValueError("student teacher: it answers once per example (greedy); --n K needs a sampling teacher")

    def generate_sync(self, fields: list[dict[str, Any]]) -> list[Reply]:
        from .student.predict import predict

        task = self.student.task
        rows = predict(self.student, fields, rationales=True, batch_size=self.batch_size)
        replies = []
        for example, row in zip(fields, rows):
            rationale = (row.get("rationale") or "").strip()
            output = task.answer_text(rationale, row["prediction"], example)
            replies.append(Reply(outputs=[output], finish_reasons=["stop"], label_scores=[row.get("scores")]))
        return replies

    async def generate(self, prompts, ids, params, fields=None):
        if fields is None:
            raise ValueError("student teacher: needs the examples' fields (RationaleGenerator passes them)")
        return await asyncio.to_thread(self.generate_sync, fields)


def _fingerprint(folder: Path) -> str:
    """A hash of the student's meta file and weights: a retrained student gets new cache keys, a copy keeps them
    (content, not paths or times)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.name == "stepdistill.json" or path.suffix in (".safetensors", ".bin", ".onnx")):
            digest.update(json.dumps([path.name, path.stat().st_size]).encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def make_student_teacher(target: str, task: str, split: str = "train", device: str = "auto",
                         batch_size: int = 8) -> StudentTeacher:
    return StudentTeacher(target, task, device=device, batch_size=batch_size)


make_student_teacher.target = "RUN_DIR"  # what the teacher spec names after "student:" (in error messages)


def register() -> None:
    """Make ``student:RUN_DIR`` a teacher kind of :func:`~stepdistill.teacher.teachers.make_teacher`."""
    register_teacher_kind("student", make_student_teacher)
