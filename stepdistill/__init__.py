"""stepdistill: distilling step-by-step (Hsieh et al., 2023) as a library and command-line tool."""

from .arith import evaluate_arithmetic, values_equal
from .tasks import SpecTask, Task, TeacherParse, get_task, register_task, task_names

__version__ = "0.1.0"

__all__ = [
    "SpecTask",
    "Task",
    "TeacherParse",
    "evaluate_arithmetic",
    "get_task",
    "register_task",
    "task_names",
    "values_equal",
]

# Lazy exports: resolved on first access, so `import stepdistill` stays fast. Add entries here (name -> module).
_LAZY = {
    name: "stepdistill.teacher"
    for name in ("RationaleGenerator", "GenerationParams", "Teacher", "OpenAITeacher", "HFTeacher", "ReplayTeacher",
                 "make_teacher", "merge_caches", "load_rationales", "attach_rationales", "load_template")
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stepdistill' has no attribute {name!r}")
