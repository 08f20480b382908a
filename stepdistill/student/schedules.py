"""Schedules of the loss weights over the training steps: ``alpha``, ``soft_weight`` and ``temperature`` each follow
a constant, linear or cosine curve from a start to an end value ("start with distillation and shift to the task",
progressive temperature).

A schedule is written ``linear:START:END``, ``cosine:START:END`` or ``constant:VALUE`` (a plain number is constant).
Update ``n`` of ``N`` (1-based) uses the value at fraction ``(n - 1) / (N - 1)`` of the way: the first update uses
START, the last END. The value is a pure function of the trainer's ``state.global_step`` (``n - 1`` while update ``n``
runs), so a resumed run uses the same values; the values logged at logging step ``s`` are those update ``s`` used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine")
SCHEDULED = ("alpha", "soft_weight", "temperature")  # the TrainConfig fields a schedule can drive
# the allowed values of each: (lowest, highest, lowest excluded)
RANGES = {"alpha": (0.0, 1.0, False), "soft_weight": (0.0, 1.0, False), "temperature": (0.0, 100.0, True)}


@dataclass(frozen=True)
class Schedule:
    kind: str
    start: float
    end: float

    def value(self, update: int, total: int) -> float:
        """The value update ``update`` (1-based) of ``total`` uses."""
        if self.kind == "constant":
            return self.start
        fraction = min(max((update - 1) / (total - 1), 0.0), 1.0) if total > 1 else 0.0
        if self.kind == "cosine":
            fraction = (1 - math.cos(math.pi * fraction)) / 2
        return self.start + (self.end - self.start) * fraction

    @property
    def highest(self) -> float:
        return max(self.start, self.end)


def _check_value(name: str, value: float, option: str) -> None:
    low, high, open_low = RANGES[name]
    if not math.isfinite(value) or value > high or value < low or (open_low and value == low):
        interval = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
        raise ValueError(f"option {option}: {name} must be in {interval}, got {value:g}")


def parse_schedule(text: str | float, name: str) -> Schedule:
    """``linear:START:END``, ``cosine:START:END``, ``constant:VALUE`` or a number, checked against ``name``'s range."""
    option = f"--{name.replace('_', '-')}-schedule"
    parts = str(text).strip().split(":")
    kind, numbers = (parts[0], parts[1:]) if parts[0] in KINDS else ("constant", parts)
    if len(numbers) != (1 if kind == "constant" else 2):
        raise ValueError(f"option {option}: expected linear:START:END, cosine:START:END or constant:VALUE, "
                         f"got {text!r}")
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        raise ValueError(f"option {option}: not a number in {text!r}") from None
    for value in values:
        _check_value(name, value, option)
    return Schedule(kind, values[0], values[-1])


def schedules_of(config) -> dict[str, Schedule]:
    """The schedule of every scheduled field: its ``*_schedule`` option, else the plain value held constant."""
    plain = {"alpha": config.alpha, "soft_weight": config.soft_weight_value, "temperature": config.temperature}
    out = {}
    for name in SCHEDULED:
        given = getattr(config, f"{name}_schedule")
        out[name] = parse_schedule(given, name) if given is not None else Schedule("constant", plain[name],
                                                                                    plain[name])
    return out


def values_at(schedules: dict[str, Schedule], global_step: int, total: int) -> dict[str, float]:
    """The values of the update that runs while the trainer's ``state.global_step`` is ``global_step``."""
    return {name: schedule.value(global_step + 1, total) for name, schedule in schedules.items()}


def soft_labels_on(config) -> bool:
    """Whether the run trains on soft labels at any step."""
    return schedules_of(config)["soft_weight"].highest > 0


def check_schedules(config) -> None:
    """Bad soft-label or schedule settings as one ValueError naming the option (called by TrainConfig)."""
    from .config import SOFT_LABEL_METHODS

    if config.soft_weight is not None:
        _check_value("soft_weight", config.soft_weight, "--soft-weight")
    _check_value("temperature", config.temperature, "--temperature")
    schedules = schedules_of(config)  # parses and range-checks every *_schedule
    if config.alpha_schedule is not None and config.method != "step-by-step":
        raise ValueError(f"option --alpha-schedule: alpha weighs the two tasks of step-by-step, not method "
                         f"{config.method!r}")
    soft = schedules["soft_weight"].highest > 0
    if config.method == "distill" and not soft:
        raise ValueError("method distill trains on soft labels: --soft-weight must be above 0 at some step "
                         "(method standard is hard labels alone)")
    if soft and config.method not in SOFT_LABEL_METHODS:
        raise ValueError(f"option --soft-weight: soft labels apply to the label task of methods "
                         f"{', '.join(SOFT_LABEL_METHODS)}, not to {config.method!r}")
    if config.temperature_schedule is not None and not soft:
        raise ValueError("option --temperature-schedule: the temperature applies to soft labels; set --soft-weight")
    if soft and config.shared_encoder:
        raise ValueError("option --soft-weight: soft labels are not supported with --shared-encoder (its label "
                         "prefix is read by the decoder); train without it")
