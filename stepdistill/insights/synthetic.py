"""The inspect report's section on a cache of synthetic examples (`generate --synthesize`): what was dropped and
why, label balance against train, diversity (distinct n-grams, near duplicates within), lengths, and leakage
(accepted examples equal or close to a valid or test example). Pure functions, no I/O."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any

from ..near_duplicates import NearDuplicateIndex, near_duplicate_pairs
from ..tasks import Task


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def distinct_ngrams(texts: list[str], n: int) -> dict[str, Any]:
    """Distinct n-grams over all n-grams of the texts (each text on its own: no n-gram spans two texts)."""
    grams = [tuple(words[i:i + n]) for words in map(_words, texts) for i in range(len(words) - n + 1)]
    return {"n": n, "ngrams": len(grams), "distinct": len(set(grams)),
            "ratio": len(set(grams)) / len(grams) if grams else None}


def _length(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def _label_balance(task: Task, accepted: list[dict[str, Any]], train: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not task.labels:
        return None  # per-example choices (CQA) or equations (SVAMP): no fixed label set to balance
    synthetic, real = Counter(r["label"] for r in accepted), Counter(r["label"] for r in train)
    rows = {}
    for label in task.labels:
        share = synthetic[label] / len(accepted) if accepted else None
        train_share = real[label] / len(train) if train else None
        rows[label] = {"synthetic": synthetic[label], "synthetic_share": share, "train": real[label],
                       "train_share": train_share,
                       "difference": share - train_share if share is not None and train_share is not None else None}
    return rows


def synthetic_report(task: Task, records: list[dict[str, Any]], splits: dict[str, list[dict[str, Any]]] | None,
                     threshold: float = 0.8, examples: int = 3) -> dict[str, Any]:
    """``records``: the cache's synthetic records (the last per key); ``splits``: the task's real records by split,
    or None when the task's data could not be loaded (then no balance against train and no leakage)."""
    accepted = [r for r in records if r.get("status") == "ok" and isinstance(r.get("fields"), dict)]
    inputs = [r["input"] or task.format_input(r["fields"]) for r in accepted]
    dropped = Counter(r.get("error") for r in records if r.get("status") == "dropped")
    failed = Counter(r.get("error") for r in records if r.get("status") == "failed")
    pairs = near_duplicate_pairs(inputs, threshold=threshold)
    report: dict[str, Any] = {
        "records": len(records), "accepted": len(accepted), "dropped": dict(dropped.most_common()),
        "failed": dict(failed.most_common()), "near_threshold": threshold,
        "diversity": {"distinct_1": distinct_ngrams(inputs, 1), "distinct_2": distinct_ngrams(inputs, 2),
                      "near_duplicate_pairs": len(pairs),
                      "with_near_duplicate": len({i for pair in pairs for i in pair}),
                      "near_examples": [[accepted[i]["id"], accepted[j]["id"]] for i, j in pairs[:examples]]},
        "lengths": {"input_words": _length([len(_words(text)) for text in inputs]),
                    "rationale_words": _length([len(_words(r["rationale"] or "")) for r in accepted])},
        "data": splits is not None, "label_balance": None, "leakage": None, "train_diversity": None,
    }
    if splits is None:
        return report
    train = splits.get("train") or []
    report["label_balance"] = _label_balance(task, accepted, train)
    # the train examples' own diversity over as many examples (the first ones), for comparison
    sample = [r["input"] for r in train[:len(accepted)]]
    report["train_diversity"] = {"examples": len(sample), "distinct_1": distinct_ngrams(sample, 1),
                                 "distinct_2": distinct_ngrams(sample, 2)}
    report["lengths"]["train_input_words"] = _length([len(_words(r["input"])) for r in train])
    leakage = {}
    for split in ("valid", "test"):
        index = NearDuplicateIndex(threshold)
        index.add_many([(str(r["id"]), r["input"]) for r in splits.get(split) or []])
        hits = [(r["id"], index.find(text)) for r, text in zip(accepted, inputs)]
        hits = [(example_id, found) for example_id, found in hits if found is not None]
        leakage[split] = {"examples": len(splits.get(split) or []), "exact": sum(f[0] == "exact" for _, f in hits),
                          "near": sum(f[0] == "near" for _, f in hits),
                          "shown": [{"id": i, "kind": f[0], "of": f[1]} for i, f in hits[:examples]]}
    report["leakage"] = leakage
    return report


def _ratio(entry: dict[str, Any]) -> str:
    return "n/a" if entry["ratio"] is None else f"{entry['ratio']:.3f} ({entry['distinct']:,} of {entry['ngrams']:,})"


def _words_line(name: str, entry: dict[str, Any]) -> str:
    if not entry.get("count"):
        return f"{name}: none"
    return (f"{name}: mean {entry['mean']:.1f}, median {entry['median']:g}, min {entry['min']}, max {entry['max']} "
            f"({entry['count']:,})")


def synthetic_markdown(s: dict[str, Any]) -> list[str]:
    lines = ["", "## Synthetic examples", "",
             f"{s['records']:,} synthesis records: {s['accepted']:,} accepted"
             + (f"; dropped: {', '.join(f'{k} {v:,}' for k, v in s['dropped'].items())}" if s["dropped"] else "")
             + (f"; request failures: {', '.join(f'{k} {v:,}' for k, v in s['failed'].items())}" if s["failed"] else "")
             + "."]
    if not s["data"]:
        lines += ["", "The task's data was not found (--data-dir, --source, --files): no label balance against train "
                      "and no leakage check."]
    if s.get("label_balance"):
        lines += ["", "| label | synthetic | train | difference |", "| --- | ---: | ---: | ---: |"]
        for label, row in s["label_balance"].items():
            share = "n/a" if row["synthetic_share"] is None else f"{row['synthetic_share'] * 100:.1f}%"
            train = "n/a" if row["train_share"] is None else f"{row['train_share'] * 100:.1f}%"
            diff = "n/a" if row["difference"] is None else f"{row['difference'] * 100:+.1f} points"
            lines.append(f"| {label} | {row['synthetic']:,} ({share}) | {row['train']:,} ({train}) | {diff} |")
    d = s["diversity"]
    lines += ["", f"Diversity of the accepted inputs: distinct 1-grams {_ratio(d['distinct_1'])}, distinct 2-grams "
                  f"{_ratio(d['distinct_2'])}"
              + (f" (train's first {s['train_diversity']['examples']:,} examples: "
                 f"{_ratio(s['train_diversity']['distinct_1'])} and {_ratio(s['train_diversity']['distinct_2'])})"
                 if s.get("train_diversity") else "")
              + f". Near duplicates among them (word-set Jaccard >= {s['near_threshold']}): "
              f"{d['near_duplicate_pairs']:,} pairs, {d['with_near_duplicate']:,} of {s['accepted']:,} examples."]
    lines += [f"- near: `{a}` / `{b}`" for a, b in d["near_examples"]]
    length = s["lengths"]
    lines += ["", "Lengths in words: " + "; ".join(
        _words_line(name, length[key]) for name, key in (("inputs", "input_words"), ("rationales", "rationale_words"),
                                                         ("train inputs", "train_input_words")) if key in length) + "."]
    if s.get("leakage"):
        leak = s["leakage"]
        lines += ["", "Leakage: accepted examples equal or close to an evaluation example: "
                  + "; ".join(f"{split} {entry['exact']:,} equal, {entry['near']:,} close (of {entry['examples']:,})"
                              for split, entry in leak.items()) + "."]
        lines += [f"- `{hit['id']}`: {hit['kind']} to {split} example {hit['of']}"
                  for split, entry in leak.items() for hit in entry["shown"]]
    return lines
