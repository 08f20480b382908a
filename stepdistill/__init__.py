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
