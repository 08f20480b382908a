"""Statistics over finished runs: per-(method, fraction) means and t-intervals, convergence, chance, matching."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from ..tasks import Task
from .presets import METHODS


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    from scipy import stats  # here, not at the top: scipy.stats costs `stepdistill --help` half a second

    return float(stats.t.ppf(p, df))


def method_name(result: dict) -> str:
    """The sweep method of a run, from the trainer's method and label source."""
    if result.get("sweep_method") in METHODS:
        return result["sweep_method"]
    for name, pair in METHODS.items():
        if pair == (result.get("method"), result.get("label_source")):
            return name
    raise ValueError(f"run {result.get('run_key', '?')}: unknown method/label_source "
                     f"{result.get('method')!r}/{result.get('label_source')!r}")


def aggregate(results: list[dict], confidence: float = 0.95) -> list[dict]:
    """One row per (method, fraction): mean, sample standard deviation and t-interval of test accuracy over seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for result in results:
        groups.setdefault((method_name(result), float(result["fraction"])), []).append(result)
    rows = []
    order = list(METHODS)
    for (method, fraction), runs in sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        runs = sorted(runs, key=lambda r: r["seed"])
        accuracies = [float(r["test_accuracy"]) for r in runs]
        n = len(accuracies)
        mean = statistics.fmean(accuracies)
        std = statistics.stdev(accuracies) if n > 1 else float("nan")
        half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
        counts = sorted({int(r["count"]) for r in runs})
        rows.append({
            "method": method, "fraction": fraction, "percent": fraction * 100,
            "count": counts[0] if len(counts) == 1 else "/".join(map(str, counts)),
            "n_seeds": n, "seeds": " ".join(str(r["seed"]) for r in runs),
            "test_accuracy_mean": mean, "test_accuracy_std": std,
            "ci95_half_width": half, "ci95_low": mean - half, "ci95_high": mean + half,
            "valid_accuracy_mean": statistics.fmean(float(r["valid_accuracy"]) for r in runs),
            "wall_s_total": sum(float(r.get("sweep_wall_s", 0.0)) for r in runs),
        })
    return rows


def teacher_accuracy(task: Task, records: list[dict]) -> float:
    """Share of records whose parsed teacher label is correct (an unparseable teacher output counts as wrong)."""
    if not records:
        return float("nan")
    right = sum(1 for r in records
                if r.get("teacher_label") is not None and task.is_correct(r["teacher_label"], r["label"], r["fields"]))
    return right / len(records)


def convergence(results: list[dict], late_share: float = 1 / 3) -> dict[str, dict]:
    """Per method: had valid accuracy stopped improving when training stopped?

    A run is *still improving* when its best valid accuracy in the last ``late_share`` of its steps beats its best
    before then by more than two binomial standard errors of the valid set (noise alone rarely does that). Runs
    without an evaluation on both sides of that point are counted as ``unknown``. ``best_at_last_eval`` counts runs
    whose best evaluation was their last one (the checkpoint kept is the final one)."""
    found: dict[str, dict] = {}
    for result in results:
        entry = found.setdefault(method_name(result), {"runs": 0, "still_improving": 0, "best_at_last_eval": 0,
                                                        "unknown": 0, "late_gains": []})
        entry["runs"] += 1
        curve = result.get("valid_curve") or []
        cut = curve[-1][0] * (1 - late_share) if curve else 0
        early = [accuracy for step, accuracy in curve if step <= cut]
        late = [accuracy for step, accuracy in curve if step > cut]
        if not early or not late:
            entry["unknown"] += 1
            continue
        best_early = max(early)
        noise = 2 * math.sqrt(best_early * (1 - best_early) / int(result["valid_count"]))
        gain = max(late) - best_early
        entry["late_gains"].append(gain)
        entry["still_improving"] += gain > noise
        accuracies = [accuracy for _, accuracy in curve]
        entry["best_at_last_eval"] += accuracies.index(max(accuracies)) == len(accuracies) - 1
    for entry in found.values():
        gains = entry.pop("late_gains")
        entry["mean_late_gain"] = statistics.fmean(gains) if gains else None
    return {method: found[method] for method in METHODS if method in found}


def majority_rate(records: list[dict]) -> float | None:
    """Test accuracy of always answering the most frequent gold label: the chance level a student must beat
    (None for free-form tasks, whose labels are not a fixed set)."""
    if not records or any(not r.get("choices") for r in records):
        return None
    return max(Counter(r["label"] for r in records).values()) / len(records)


def beats_chance(row: dict, chance: float | None) -> bool:
    """The row's 95% interval lies above ``chance``; with one seed (no interval) its mean is 2 points above."""
    if chance is None:
        return True
    if row["n_seeds"] > 1 and not math.isnan(row["ci95_low"]):
        return row["ci95_low"] > chance
    return row["test_accuracy_mean"] > chance + 0.02


def matching_fraction(rows: list[dict], reference: str = "standard-finetune",
                      chance: float | None = None) -> dict[str, float | None]:
    """Per step-by-step method: the smallest fraction whose mean test accuracy reaches the mean of ``reference``
    at its largest fraction (None when no fraction does; absent when either method was not run). Nothing at all
    (``{}``) when that reference does not beat ``chance``: matching a model that learned nothing says nothing."""
    ref_rows = [r for r in rows if r["method"] == reference]
    if not ref_rows:
        return {}
    top = max(ref_rows, key=lambda r: r["fraction"])
    if not beats_chance(top, chance):
        return {}
    target = top["test_accuracy_mean"]
    found: dict[str, float | None] = {}
    for method in ("step-by-step-gold", "step-by-step-teacher"):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
        if mine:
            found[method] = next((r["fraction"] for r in mine if r["test_accuracy_mean"] >= target), None)
    return found

