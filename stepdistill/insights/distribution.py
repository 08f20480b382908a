"""The teacher's label distribution (records' ``label_logprobs``, issue 24): entropy, calibration against gold
(expected calibration error, reliability plot) and how often its top label is the label parsed from its text."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..tasks import Task

BINS = 10


def _probabilities(logprobs: dict[str, float]) -> dict[str, float]:
    # renormalised over the candidates, as the student reads them (a softmax of the log-probabilities)
    top = max(logprobs.values())
    weights = {label: math.exp(value - top) for label, value in logprobs.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


def teacher_distribution(task: Task, items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Figures over the items that carry ``label_logprobs`` (None when none does).

    Entropy in nats of the renormalised distribution; confidence = its top label's probability; expected
    calibration error over the items with a gold label: 10 equal-width confidence bins ``[i/10, (i+1)/10)`` (the
    last closed), ``sum over bins of (items in bin / items) * |accuracy - mean confidence|``, accuracy being the
    top label's agreement with gold; the top label against the label parsed from the teacher's text.
    """
    rows = [item for item in items if item.get("label_logprobs")]
    if not rows:
        return None
    entropies, graded, parsed_match, parsed = [], [], 0, 0
    for item in rows:
        probs = _probabilities(item["label_logprobs"])
        entropies.append(-sum(p * math.log(p) for p in probs.values() if p > 0))
        top = max(probs, key=probs.get)
        if item.get("label") is not None:
            parsed += 1
            parsed_match += bool(task.is_correct(top, item["label"], item.get("fields")))
        if item.get("gold") is not None:
            graded.append((probs[top], bool(task.is_correct(top, item["gold"], item.get("fields")))))
    bins = [{"lower": i / BINS, "upper": (i + 1) / BINS, "count": 0, "accuracy": None, "confidence": None}
            for i in range(BINS)]
    members: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for confidence, correct in graded:
        members[min(int(confidence * BINS), BINS - 1)].append((confidence, correct))
    ece = 0.0
    for entry, inside in zip(bins, members):
        if inside:
            entry.update(count=len(inside), accuracy=sum(c for _, c in inside) / len(inside),
                         confidence=sum(p for p, _ in inside) / len(inside))
            ece += len(inside) / len(graded) * abs(entry["accuracy"] - entry["confidence"])
    return {
        "records": len(rows), "sources": dict(Counter(item.get("label_logprobs_source") for item in rows).most_common()),
        "mean_entropy_nats": sum(entropies) / len(entropies),
        "with_gold": len(graded), "ece": ece if graded else None,
        "top_accuracy": sum(c for _, c in graded) / len(graded) if graded else None,
        "mean_confidence": sum(p for p, _ in graded) / len(graded) if graded else None,
        "with_parsed_label": parsed, "top_is_parsed": parsed_match,
        "top_is_parsed_rate": parsed_match / parsed if parsed else None, "bins": bins,
    }


def markdown_lines(figures: dict[str, Any] | None) -> list[str]:
    lines = ["", "## Teacher distribution", ""]
    if not figures:
        return lines + ["No record carries `label_logprobs` (`stepdistill generate --label-logprobs`, `--n K` or a "
                        "`student:` teacher write them; see docs/teachers.md)."]
    sources = ", ".join(f"{name} {count:,}" for name, count in figures["sources"].items())
    lines.append(f"{figures['records']:,} records carry the teacher's label distribution ({sources}). Mean entropy "
                 f"{figures['mean_entropy_nats']:.4f} nats. Its top label is the label parsed from its text in "
                 f"{figures['top_is_parsed']:,} / {figures['with_parsed_label']:,}"
                 + (f" ({figures['top_is_parsed_rate'] * 100:.2f}%)." if figures["with_parsed_label"] else "."))
    if figures["with_gold"]:
        lines += ["", f"Calibration against gold over {figures['with_gold']:,} records: expected calibration error "
                      f"{figures['ece']:.4f} (10 bins, top-label confidence); top-label accuracy "
                      f"{figures['top_accuracy'] * 100:.2f}%, mean confidence {figures['mean_confidence'] * 100:.2f}%.",
                  "", "| confidence | records | accuracy | mean confidence |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {b['lower']:.1f}-{b['upper']:.1f} | {b['count']:,} | {b['accuracy'] * 100:.2f}% | "
                  f"{b['confidence'] * 100:.2f}% |" for b in figures["bins"] if b["count"]]
    return lines


def plot_reliability(figures: dict[str, Any], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = [b for b in figures["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120, layout="constrained")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar([(b["lower"] + b["upper"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=1 / len(figures["bins"]),
           edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy in bin")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="tab:red",
            label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Teacher's top-label confidence")
    ax.set_ylabel("Top label agrees with gold")
    ax.set_title(f"{task}: ECE {figures['ece']:.3f} over {figures['with_gold']:,} records", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.savefig(path)
    plt.close(fig)
