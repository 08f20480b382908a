"""Data-efficiency curves as PNGs that carry their plotted numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .presets import METHOD_TITLES, METHODS

METHOD_COLORS = {
    "standard-finetune": "tab:blue",
    "standard-distill": "tab:green",
    "step-by-step-gold": "tab:red",
    "step-by-step-teacher": "tab:orange",
    "single-task": "tab:purple",
    "single-task-label-first": "tab:brown",
    "rationale-input": "tab:gray",
    "soft-distill": "tab:olive",
}
# The paper's two comparisons (its Figures 4 and 5), plus all four methods on one plot.
PLOTS = {
    "finetune": ("standard-finetune", "step-by-step-gold"),
    "distill": ("standard-distill", "step-by-step-teacher"),
    "all": tuple(METHODS),  # every method the sweep ran
}


def plot_curves(rows: list[dict], methods: tuple[str, ...], teacher_acc: float | None, path: Path,
                title: str) -> dict:
    """Test accuracy (%) against % of the full training set, shaded 95% CI, teacher as a horizontal line.

    Returns the plotted series (read back from the figure), which is also stored in the PNG's text metadata
    under ``stepdistill:series`` so that a report's numbers can be checked against its plots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.6), dpi=120, layout="constrained")
    series: dict[str, Any] = {"methods": {}, "teacher_accuracy": None}
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
        if not mine:
            continue
        x = [r["percent"] for r in mine]
        y = [r["test_accuracy_mean"] * 100 for r in mine]
        low = [r["ci95_low"] * 100 for r in mine]
        high = [r["ci95_high"] * 100 for r in mine]
        (line,) = ax.plot(x, y, marker="o", color=METHOD_COLORS[method], label=METHOD_TITLES[method])
        # drawn within 0-100%: with 2 seeds a t-interval can span far beyond it and flatten every curve
        bounded_low, bounded_high = [max(v, 0.0) for v in low], [min(v, 100.0) for v in high]
        if len(x) > 1:
            ax.fill_between(x, bounded_low, bounded_high, color=METHOD_COLORS[method], alpha=0.2, linewidth=0)
        else:  # a band needs two fractions; one fraction (cpu-pretrained e-SNLI) gets an error bar
            ax.errorbar(x, y, yerr=[[y[0] - bounded_low[0]], [bounded_high[0] - y[0]]], fmt="none",
                        ecolor=METHOD_COLORS[method], capsize=4, alpha=0.6)
        series["methods"][method] = {"percent": [float(v) for v in line.get_xdata()],
                                     "accuracy": [float(v) for v in line.get_ydata()],
                                     "ci_low": low, "ci_high": high}
    if teacher_acc is not None and not math.isnan(teacher_acc):
        line = ax.axhline(teacher_acc * 100, color="gray", linestyle="--", label="Teacher (few-shot CoT)")
        series["teacher_accuracy"] = float(line.get_ydata()[0])
    percents = sorted({r["percent"] for r in rows if r["method"] in methods})
    if len(percents) > 1 and percents[-1] / percents[0] > 20:
        ax.set_xscale("log")
    ax.set_xticks(percents, [f"{p:.4g}" for p in percents])
    ax.set_xlabel("% of full training set")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncol=2)  # below the axes: inside, it hid points
    fig.savefig(path, metadata={"stepdistill:series": json.dumps(series)})
    plt.close(fig)
    return series



def plot_spend(series: dict[str, dict[str, list[float]]], spend: dict[str, Any], teacher_acc: float | None,
               path: Path, title: str) -> dict:
    """Test accuracy (%) against what the training data cost (USD, or teacher tokens without prices), one line per
    method; the plotted numbers are stored in the PNG's ``stepdistill:series`` text chunk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usd = spend["unit"] == "usd"
    fig, ax = plt.subplots(figsize=(5.5, 4.6), dpi=120, layout="constrained")
    for method, points in series.items():
        ax.plot(points["spend"], points["accuracy"], marker="o", color=METHOD_COLORS[method],
                label=METHOD_TITLES[method])
        for x, y, percent in zip(points["spend"], points["accuracy"], points["percent"]):  # which fraction is which
            ax.annotate(f"{percent:.4g}%", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6,
                        color=METHOD_COLORS[method])
    if teacher_acc is not None and not math.isnan(teacher_acc):
        ax.axhline(teacher_acc * 100, color="gray", linestyle="--", label="Teacher (few-shot CoT)")
    values = sorted(v for points in series.values() for v in points["spend"])
    positive = [v for v in values if v > 0]
    if positive and values[0] == 0:  # free methods (human labels at 0) sit at 0: log scale beyond a linear stretch
        ax.set_xscale("symlog", linthresh=positive[0])
    elif positive and positive[-1] / positive[0] > 20:
        ax.set_xscale("log")
    if usd:
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"${value:,.4g}"))
        ax.set_xlabel(f"Cost of the training data (USD)\nteacher {spend['teacher_model']} at "
                      f"${spend['prices'][0]:g} / ${spend['prices'][1]:g} per M in/out tokens, "
                      f"human labels ${spend['label_cost_usd']:g} each", fontsize=7)
    else:
        ax.set_xlabel(f"Teacher tokens spent on the training examples (prompt + output; no prices given)\n"
                      f"counted with {spend['tokenizer']}", fontsize=7)
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncol=2)
    fig.savefig(path, metadata={"stepdistill:series": json.dumps(series)})
    plt.close(fig)
    return series
