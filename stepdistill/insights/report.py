"""The inspect report folder: inspect.md (also printed), inspect.json and PNGs (lengths, confusion matrix, the
teacher distribution's reliability diagram)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .distribution import markdown_lines as distribution_lines, plot_reliability
from .measures import NO_LABEL
from .synthetic import synthetic_markdown


def _pct(part: int, whole: int | None) -> str:
    return f"{part:,} / {whole:,} ({part / whole * 100:.2f}%)" if whole else f"{part:,} / 0"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Rationales: {report['source']}", "",
             f"Task `{report['task']}`, {report['items']:,} teacher answers"
             + (f" (the last record of each of {report['cache']['keys']:,} keys in {report['cache']['record_lines']:,} "
                f"record lines of {report['cache']['files']} file(s))" if report.get("cache") else "") + ".", ""]
    status = report["status"]
    lines += ["## Status", "", "| status | count |", "| --- | ---: |"]
    lines += [f"| {name} | {count:,} |" for name, count in status["statuses"].items()]
    for reason, entry in status["failure_reasons"].items():
        lines += ["", f"- **{reason}**: {entry['count']:,}"]
        lines += [f"  - `{ex['id']}`: {ex['text']}" for ex in entry["examples"]]
    agree = report["agreement"]
    lines += ["", "## Teacher label vs gold", "",
              f"Agreement: {_pct(agree['agree'], agree['with_gold'])} of the answers with a gold label (no valid teacher label "
              f"counts as a disagreement); {_rate(agree['rate_among_labelled'])} of the {agree['with_teacher_label']:,} "
              "with a teacher label."]
    if agree.get("agree_authors") is not None and agree["agree_authors"] != agree["agree"]:
        lines += ["", f"By the task's authors' rule ({agree['authors_rule']}): "
                      f"{_pct(agree['agree_authors'], agree['with_gold'])}; that is the figure to compare with theirs."]
    if agree.get("confusion"):
        columns = list(next(iter(agree["confusion"].values())))
        lines += ["", "| gold \\ teacher | " + " | ".join(columns) + " | agreement |",
                  "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |"]
        for gold, row in agree["confusion"].items():
            lines.append(f"| {gold} | " + " | ".join(f"{row[c]:,}" for c in columns)
                         + f" | {_rate(agree['per_gold_label_rate'][gold])} |")
    length = report["lengths"]
    lines += ["", "## Rationale length", ""]
    if length["count"]:
        pcts = ", ".join(f"p{p} {v}" for p, v in length["percentiles"].items())
        lines += [f"Student target length of the {length['count']:,} usable rationales, tokenizer: {report['tokenizer']} "
                  f"(tokens + the end token): mean {length['mean']:.1f}, min {length['min']}, {pcts}, max "
                  f"{length['max']}. Longer than `--max-target-length` {length['max_target_length']} (cut short in "
                  f"training): {_pct(length['truncated'], length['count'])}.", "",
                  "| preset | max_target_length | truncated |", "| --- | ---: | ---: |"]
        lines += [f"| `{name}` | {entry['max_target_length']} | {_pct(entry['truncated'], length['count'])} |"
                  for name, entry in length["truncated_at_presets"].items()]
    else:
        lines.append("No usable rationale.")
    leak = report["leakage"]
    lines += ["", "## Label leakage", "",
              f"Rationales that state the teacher's final label (as whole words, case ignored): "
              f"{_pct(leak['leaking'], leak['checked'])}"
              + (f"; by label: {', '.join(f'{k} {v:,}' for k, v in leak['by_label'].items())}" if leak.get("by_label")
                 else "")
              + (f". Mentioning any label word: {_pct(leak['mentions_any_label'], leak['checked'])}"
                 if "mentions_any_label" in leak else "")
              + f". Stating a form of the final label (a word starting with its stem, e.g. `entail`, `contradict`): "
              f"{_pct(leak['leaking_any_form'], leak['checked'])}."]
    lines += [f"- `{ex['id']}`: {ex['text']}" for ex in leak["examples"]]
    lines += [f"- form: `{ex['id']}`: {ex['text']}" for ex in leak["any_form_examples"]]
    dup = report["duplicates"]
    lines += ["", "## Duplicates", "",
              f"Exact duplicates (equal after lower-casing, collapsing spaces and dropping a final period): "
              f"{dup['exact_duplicate_groups']:,} texts repeated, covering {_pct(dup['items_in_exact_duplicate_groups'], dup['rationales'])} "
              f"rationales ({dup['redundant_exact']:,} redundant copies). Near duplicates (different texts whose word sets "
              f"have Jaccard >= {dup['near_threshold']}; MinHash LSH, every pair checked exactly): "
              f"{dup['near_duplicate_pairs']:,} pairs, {_pct(dup['items_with_near_duplicate'], dup['rationales'])} rationales."]
    lines += [f"- {entry['count']:,}x: {entry['text']}" for entry in dup["most_repeated"]]
    lines += [f"- near: `{a['id']}` {a['text']} / `{b['id']}` {b['text']}" for a, b in dup["near_examples"]]
    consistency = report["self_consistency"]
    lines += ["", "## Self-consistency", ""]
    if consistency:
        lines.append(f"{consistency['records']:,} records with several samples "
                     f"({', '.join(f'n={n}: {c:,}' for n, c in consistency['samples_per_record'].items())}): on average "
                     f"{consistency['mean_winner_share'] * 100:.2f}% of the samples voted for the final label; "
                     f"unanimous in {_pct(consistency['unanimous'], consistency['records'])}.")
    else:
        lines.append("One sample per example (no `--n`): nothing to compare.")
    if report.get("equations"):
        eq = report["equations"]
        lines += ["", "## Equations", "",
                  f"The arithmetic before the rationale's last `=`, evaluated safely, equals the teacher's label in "
                  f"{_pct(eq['matches_label'], eq['checked'])}; differs in {eq['differs_from_label']:,}; no equation in "
                  f"{eq['no_equation']:,}."]
        lines += [f"- `{ex['id']}`: `{ex['equation']}` vs label `{ex['label']}`: {ex['text']}" for ex in eq["examples"]]
    lines += distribution_lines(report.get("teacher_distribution"))
    spend = report["tokens_and_cost"]
    counted = spend["output_tokens_counted"]
    lines += ["", "## Tokens and cost", ""]
    if spend["usage_records"]:
        cost = "no price known" if spend["cost_usd"] is None else f"${spend['cost_usd']:.4f} over {spend['priced_records']:,} priced records"
        lines.append(f"Teacher usage over every record line (earlier runs and retries included): "
                     f"{spend['prompt_tokens']:,} prompt + {spend['completion_tokens']:,} completion tokens in "
                     f"{spend['usage_records']:,} records; cost {cost}.")
        lines += [f"- `{model}`: {m['records']:,} records, {m['prompt_tokens']:,} + {m['completion_tokens']:,} tokens"
                  + (f", ${m['cost_usd']:.4f}" if m["cost_usd"] is not None else "") for model, m in spend["by_model"].items()]
    else:
        lines.append("No teacher usage recorded (replayed outputs, e.g. the released PaLM ones): neither tokens nor cost "
                     "are known.")
    lines.append(f"Teacher output text, counted with {counted['tokenizer']}: {counted['tokens']:,} tokens in "
                 f"{counted['outputs']:,} outputs.")
    if report.get("synthetic"):
        lines += synthetic_markdown(report["synthetic"])
    lines += ["", "Files: " + ", ".join(f"`{name}`" for name in report["files"]) + ".", ""]
    return "\n".join(lines)


def plot_lengths(lengths: list[int], max_target_length: int, tokenizer: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120, layout="constrained")
    ax.hist(lengths, bins=min(60, max(10, len(set(lengths)))), color="tab:blue")
    ax.axvline(max_target_length + 0.5, color="tab:red", linestyle="--",
               label=f"max_target_length {max_target_length}: {sum(v > max_target_length for v in lengths):,} longer")
    ax.set_xlabel(f"Rationale length (student target tokens; {tokenizer})", fontsize=8)
    ax.set_ylabel("Rationales")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(confusion: dict[str, dict[str, int]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gold = list(confusion)
    columns = list(next(iter(confusion.values())))
    values = [[confusion[g][c] for c in columns] for g in gold]
    fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 2, 0.8 * len(gold) + 1.8), dpi=120, layout="constrained")
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(columns)), [c if c != NO_LABEL else "no label" for c in columns], fontsize=8)
    ax.set_yticks(range(len(gold)), gold, fontsize=8)
    top = max(max(row) for row in values) or 1
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=8,
                    color="white" if value > top / 2 else "black")
    ax.set_xlabel("Teacher label")
    ax.set_ylabel("Gold label")
    ax.set_title(f"{task}: teacher vs gold (answers)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], lengths: list[int], out_dir: Path) -> str:
    """Write the folder; returns the markdown summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ["inspect.md", "inspect.json"]
    if lengths:
        plot_lengths(lengths, report["lengths"]["max_target_length"], report["tokenizer"], out_dir / "lengths.png")
        files.append("lengths.png")
    if report["agreement"].get("confusion"):
        plot_confusion(report["agreement"]["confusion"], report["task"], out_dir / "confusion.png")
        files.append("confusion.png")
    if (report.get("teacher_distribution") or {}).get("with_gold"):
        plot_reliability(report["teacher_distribution"], report["task"], out_dir / "reliability.png")
        files.append("reliability.png")
    report["files"] = files
    text = markdown(report)
    (out_dir / "inspect.md").write_text(text)
    tmp = out_dir / "inspect.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / "inspect.json")
    return text
