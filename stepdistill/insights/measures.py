"""The figures of an inspect report, computed from items (see :mod:`.items`); pure functions, no I/O."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from typing import Any

from ..arith import evaluate_arithmetic, values_equal
from ..tasks import SVAMP, Task, normalize_text
from .distribution import teacher_distribution
from .near_duplicates import near_duplicate_pairs
from ..experiments.tokens import TokenCounter

NO_LABEL = "(no label)"
PERCENTILES = (50, 90, 95, 99)


def _example(item: dict[str, Any], text: str | None = None, width: int = 160) -> dict[str, str]:
    shown = text if text is not None else (item.get("raw_output") or item.get("rationale") or "")
    shown = " ".join(str(shown).split())
    return {"id": item["id"], "text": shown if len(shown) <= width else shown[:width - 3] + "..."}


def usable(item: dict[str, Any]) -> bool:
    """A rationale the student would train on: status ok and non-empty text."""
    return item["status"] == "ok" and bool((item.get("rationale") or "").strip())


def status_counts(items: list[dict[str, Any]], examples: int) -> dict[str, Any]:
    statuses = Counter(item["status"] for item in items)
    reasons: dict[str, dict[str, Any]] = {}
    for item in items:
        if item["status"] == "ok":
            continue
        key = f"{item['status']}: {item.get('reason') or 'unknown'}"
        entry = reasons.setdefault(key, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append(_example(item))
    return {"statuses": dict(statuses.most_common()),
            "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["count"]))}


def agreement(task: Task, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Teacher label vs gold, over items with a gold label; no valid teacher label counts as a disagreement."""
    with_gold = [item for item in items if item.get("gold") is not None]
    # an unknown label (e.g. "neutral Pre" from a cut-off echo) counts as no label
    labelled = [item for item in with_gold if item.get("label") is not None
                and task.canonical_label(item["label"], item.get("fields")) is not None]
    agree = sum(task.is_correct(item["label"], item["gold"], item.get("fields")) for item in labelled)
    authors = sum(task.authors_agree(_raw_label(task, item), item["gold"], item.get("fields")) for item in with_gold)
    result: dict[str, Any] = {
        "with_gold": len(with_gold), "with_teacher_label": len(labelled), "agree": agree,
        "rate": agree / len(with_gold) if with_gold else None,
        # the figure to compare with the paper's: the task's authors' rule (e.g. CQA: the exact text, case included)
        "authors_rule": task.authors_rule, "agree_authors": authors,
        "rate_authors": authors / len(with_gold) if with_gold else None,
        "rate_among_labelled": agree / len(labelled) if labelled else None, "confusion": None}
    if task.labels:  # a fixed label set: gold rows x teacher columns
        columns = list(task.labels) + [NO_LABEL]
        matrix = {gold: dict.fromkeys(columns, 0) for gold in task.labels}
        for item in with_gold:
            teacher = item.get("label")
            column = task.canonical_label(teacher, item.get("fields")) if teacher is not None else None
            matrix.setdefault(item["gold"], dict.fromkeys(columns, 0))[column or NO_LABEL] += 1
        result["confusion"] = matrix
        result["per_gold_label_rate"] = {gold: (row[gold] / sum(row.values()) if sum(row.values()) else None)
                                         for gold, row in matrix.items()}
    return result


def _raw_label(task: Task, item: dict[str, Any]) -> str | None:
    """The teacher's label text as parsed, before it was matched to a label (caches keep only the matched one)."""
    if "raw_label" in item:
        return item["raw_label"]
    output = item.get("raw_output")
    return task.parse_teacher(output, item.get("fields")).raw_label if output else None


def _percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile (the smallest value with at least p% of the values at or below it)."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def lengths(lengths_by_item: list[int], max_target_length: int, preset_lengths: dict[str, int]) -> dict[str, Any]:
    values = sorted(lengths_by_item)
    if not values:
        return {"count": 0}
    over = lambda limit: sum(v > limit for v in values)  # noqa: E731
    return {
        "count": len(values), "mean": statistics.fmean(values), "min": values[0], "max": values[-1],
        "percentiles": {str(p): _percentile(values, p) for p in PERCENTILES},
        "max_target_length": max_target_length, "truncated": over(max_target_length),
        "truncated_rate": over(max_target_length) / len(values),
        "truncated_at_presets": {name: {"max_target_length": limit, "truncated": over(limit),
                                        "rate": over(limit) / len(values)} for name, limit in preset_lengths.items()},
    }


def _phrase_in(phrase: str, text: str) -> bool:
    phrase = normalize_text(phrase)
    return bool(phrase) and re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", normalize_text(text)) is not None


def label_stem(label: str) -> str:
    """The label without a noun/adjective ending, to catch its other forms: entailment -> entail (entails),
    contradiction -> contradict (contradicts), neutral -> neutr."""
    word = normalize_text(label)
    for suffix in ("ment", "ion", "al"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _stem_in(label: str, text: str) -> bool:
    stem = label_stem(label)
    return bool(stem) and re.search(r"(?<!\w)" + re.escape(stem), normalize_text(text)) is not None


def leakage(task: Task, items: list[dict[str, Any]], examples: int) -> dict[str, Any]:
    """Rationales that state the teacher's final label as a whole word or phrase (case and spacing ignored), and
    those that state a form of it (a word starting with :func:`label_stem`)."""
    checked = [item for item in items if usable(item) and item.get("label")]
    leaking = [item for item in checked if _phrase_in(item["label"], item["rationale"])]
    forms = [item for item in checked if _stem_in(item["label"], item["rationale"])]
    result: dict[str, Any] = {"checked": len(checked), "leaking": len(leaking),
                              "rate": len(leaking) / len(checked) if checked else None,
                              "examples": [_example(item, item["rationale"]) for item in leaking[:examples]],
                              "leaking_any_form": len(forms),
                              "any_form_rate": len(forms) / len(checked) if checked else None,
                              "any_form_examples": [_example(item, item["rationale"]) for item in forms[:examples]]}
    if task.labels:
        any_label = [item for item in checked if any(_phrase_in(label, item["rationale"]) for label in task.labels)]
        result["mentions_any_label"] = len(any_label)
        result["by_label"] = dict(Counter(item["label"] for item in leaking).most_common())
    return result


def duplicates(items: list[dict[str, Any]], examples: int, threshold: float = 0.9) -> dict[str, Any]:
    rationales = [item for item in items if usable(item)]
    texts = [item["rationale"] for item in rationales]
    groups = Counter(normalize_text(text) for text in texts)
    repeated = {text: count for text, count in groups.items() if count > 1}
    pairs = near_duplicate_pairs(texts, threshold=threshold)
    in_pair = {index for pair in pairs for index in pair}  # first text of each normalised group
    near_items = sum(groups[normalize_text(texts[index])] for index in in_pair)
    return {
        "rationales": len(texts), "distinct_normalised": len(groups),
        "exact_duplicate_groups": len(repeated), "items_in_exact_duplicate_groups": sum(repeated.values()),
        "redundant_exact": len(texts) - len(groups),
        "near_threshold": threshold, "near_duplicate_pairs": len(pairs), "items_with_near_duplicate": near_items,
        "most_repeated": [{"text": text, "count": count} for text, count in Counter(repeated).most_common(examples)],
        "near_examples": [[_example(rationales[i], texts[i]), _example(rationales[j], texts[j])]
                          for i, j in pairs[:examples]],
    }


def self_consistency(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where n > 1 samples were drawn: the share of samples that voted for the final label."""
    sampled = [item for item in items if item.get("outputs") and len(item["outputs"]) > 1]
    if not sampled:
        return None
    shares = [(item.get("votes") or {}).get(item.get("label"), 0) / len(item["outputs"]) for item in sampled]
    return {"records": len(sampled), "samples_per_record": dict(Counter(len(i["outputs"]) for i in sampled)),
            "mean_winner_share": statistics.fmean(shares), "unanimous": sum(share == 1 for share in shares),
            "winner_share_histogram": {f"{share:.3g}": count for share, count in sorted(Counter(shares).items())}}


_TRAILING_EXPRESSION = re.compile(r"[0-9.\s+\-*/()]*$")


def final_equation(rationale: str) -> str | None:
    """The arithmetic left of the rationale's last ``=`` (``... so 9 - 2 + 2 = 9`` gives ``9 - 2 + 2``): the run of
    arithmetic characters there, from the last sentence end on (``has 5. 5 + 3 = 8`` gives ``5 + 3``); None when
    there is none or it does not evaluate (the safe evaluator; ``8 / 0`` does not)."""
    head, sep, _ = rationale.rpartition("=")
    if not sep:
        return None
    run = _TRAILING_EXPRESSION.search(head[-200:]).group(0)  # 200: bounds the work of any model output
    candidate = run.rsplit(". ", 1)[-1].strip()
    try:
        evaluate_arithmetic(candidate)
    except ValueError:
        return None
    return candidate


def equations(task: Task, items: list[dict[str, Any]], examples: int) -> dict[str, Any] | None:
    """Equation tasks: does the equation the rationale ends with evaluate to the teacher's label (safe evaluator)?"""
    if not isinstance(task, SVAMP):
        return None
    counts, shown = Counter(), []
    for item in items:
        if not usable(item) or not item.get("label"):
            continue
        expression = final_equation(item["rationale"])
        if expression is None:
            counts["no_equation"] += 1
        elif values_equal(expression, item["label"]):
            counts["matches_label"] += 1
        else:
            counts["differs_from_label"] += 1
            if len(shown) < examples:
                shown.append({**_example(item, item["rationale"]), "equation": expression, "label": item["label"]})
    checked = sum(counts.values())
    return {"checked": checked, **{k: counts[k] for k in ("matches_label", "differs_from_label", "no_equation")},
            "match_rate": counts["matches_label"] / checked if checked else None, "examples": shown}


def tokens_and_cost(lines: list[dict[str, Any]] | None, items: list[dict[str, Any]],
                    counter: TokenCounter) -> dict[str, Any]:
    """Teacher usage summed over every cache record line (earlier runs and retried failures included); for outputs
    without usage (replayed), the output tokens counted with the inspect tokenizer."""
    result: dict[str, Any] = {"usage_records": 0, "prompt_tokens": 0, "completion_tokens": 0, "priced_records": 0,
                              "cost_usd": None, "by_model": {}}
    for line in lines or []:
        usage = line.get("usage") or {}
        model = result["by_model"].setdefault(str(line.get("model")), {"records": 0, "prompt_tokens": 0,
                                                                        "completion_tokens": 0, "cost_usd": None})
        model["records"] += 1
        if usage.get("prompt_tokens") is not None or usage.get("completion_tokens") is not None:
            result["usage_records"] += 1
            for key in ("prompt_tokens", "completion_tokens"):
                result[key] += int(usage.get(key) or 0)
                model[key] += int(usage.get(key) or 0)
        if line.get("cost") is not None:
            result["priced_records"] += 1
            result["cost_usd"] = (result["cost_usd"] or 0.0) + float(line["cost"])
            model["cost_usd"] = (model["cost_usd"] or 0.0) + float(line["cost"])
    outputs = [item["raw_output"] for item in items if item.get("raw_output")]
    result["output_tokens_counted"] = {"tokenizer": counter.name, "outputs": len(outputs),
                                       "tokens": sum(counter.count(outputs))}
    return result


def inspect_items(task: Task, items: list[dict[str, Any]], lines: list[dict[str, Any]] | None,
                  counter: TokenCounter, max_target_length: int, preset_lengths: dict[str, int],
                  examples: int = 3) -> dict[str, Any]:
    """Every figure of the report. ``lines``: every cache record line (None for a task's own teacher outputs)."""
    rationales = [item["rationale"] for item in items if usable(item)]
    return {
        "task": task.name, "items": len(items), "tokenizer": counter.name,
        "status": status_counts(items, examples),
        "agreement": agreement(task, items),
        "lengths": lengths(counter.target_lengths(rationales), max_target_length, preset_lengths),
        "leakage": leakage(task, items, examples),
        "duplicates": duplicates(items, examples),
        "self_consistency": self_consistency(items),
        "equations": equations(task, items, examples),
        "tokens_and_cost": tokens_and_cost(lines, items, counter),
        "teacher_distribution": teacher_distribution(task, items),
    }
