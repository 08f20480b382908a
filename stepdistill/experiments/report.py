"""The report of a sweep folder (summary.csv, summary.md, curve_*.png, report.json), computed from the per-run
``results.json`` files alone, so it can be rebuilt at any time (``stepdistill curve ... --report_only true``).
Fractions are relative to the complete public training split (``task.full_split_sizes``), as in the paper; the
report states how many examples exist locally.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..tasks import Task, get_task
from .plots import PLOTS, plot_curves, plot_spend
from .presets import METHOD_TITLES, METHODS, Preset
from .spend import fraction_spend, spend_series
from .stats import (aggregate, beats_chance, convergence, majority_rate, matching_fraction, method_name,
                    teacher_accuracy)
from .sweep import _write_json_atomic, eval_splits, fraction_base, load_results
from .tokens import load_counter

CSV_COLUMNS = ("method", "fraction", "percent", "count", "n_seeds", "seeds", "test_accuracy_mean",
               "test_accuracy_std", "ci95_half_width", "ci95_low", "ci95_high", "valid_accuracy_mean", "wall_s_total")


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def markdown_table(rows: list[dict]) -> str:
    """Fractions down, methods across; cells are mean test accuracy ± 95% CI half-width (in %) over seeds."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fractions = sorted({r["fraction"] for r in rows})
    cell = {(r["method"], r["fraction"]): r for r in rows}
    lines = ["| % of full train | examples | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    for fraction in fractions:
        count = next(r["count"] for r in rows if r["fraction"] == fraction)
        values = []
        for method in methods:
            row = cell.get((method, fraction))
            if row is None:
                values.append("-")
            elif math.isnan(row["ci95_half_width"]):
                values.append(f"{row['test_accuracy_mean'] * 100:.2f} (n={row['n_seeds']})")
            else:
                values.append(f"{row['test_accuracy_mean'] * 100:.2f} ± {row['ci95_half_width'] * 100:.2f} "
                              f"(n={row['n_seeds']})")
        count_text = f"{count:,}" if isinstance(count, int) else str(count)
        lines.append(f"| {_pct(fraction)} | {count_text} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"



def write_report(task: str | Task, preset: Preset, out_dir: str | os.PathLike,
                 splits: dict[str, list[dict]] | None = None, sweep_wall_s: float | None = None,
                 prices: dict[str, Any] | None = None, label_cost: float = 0.0,
                 spend_tokenizer: str | None = None, full_train_size: int | None = None,
                 valid_carved: dict[str, Any] | None = None) -> dict:
    """Aggregate ``out_dir/runs/*/*/*/results.json`` into summary.csv, summary.md, curve_*.png and report.json.

    With ``splits``, also the teacher spend per fraction (:mod:`.spend`; ``prices`` {model: [USD per M input, per M
    output]}, ``label_cost`` USD per human label, ``spend_tokenizer`` as ``stepdistill inspect --tokenizer``) and
    curve_spend.png. ``full_train_size``: the size fractions refer to, as for :func:`.sweep.run_sweep`; ``valid_carved``:
    ``TaskData.valid_carved``, stated in the report."""
    task = get_task(task)
    preset = preset.for_task(task)
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    if not results:
        raise ValueError(f"{out_dir}/runs: no finished runs to report on")
    rows = aggregate(results)
    info: dict[str, Any] = {
        "task": task.name, "preset": asdict(preset), "runs_finished": len(results),
        "full_split_sizes": dict(task.full_split_sizes),
        "fraction_base": fraction_base(task, full_train_size),
        "valid_carved": valid_carved,
        "sum_of_run_wall_s": round(sum(float(r.get("sweep_wall_s", 0.0)) for r in results), 1),
        "sweep_wall_s_this_invocation": sweep_wall_s,
        "chance_test_accuracy": None,  # set below when the splits are given
        "convergence": convergence(results),
        "rationale_filters": rationale_filter_counts(results),
        "rank_normalization": rank_normalization_comparison(results),
        "reference_accuracy": None,
    }
    ref = [r for r in rows if r["method"] == "standard-finetune"]
    if ref:
        top = max(ref, key=lambda r: r["fraction"])
        info["reference_accuracy"] = {"fraction": top["fraction"], "test_accuracy_mean": top["test_accuracy_mean"]}
    teacher_acc = None
    if splits is not None:
        _, valid, test = eval_splits(splits, preset)
        teacher_acc = teacher_accuracy(task, test)
        info["chance_test_accuracy"] = majority_rate(test)
        info.update(local_split_sizes={name: len(records) for name, records in splits.items()},
                    eval_sizes={"valid": len(valid), "test": len(test)},
                    teacher_test_accuracy=teacher_acc,
                    teacher_test_accuracy_full_split=teacher_accuracy(task, splits["test"]))
    info["matching_fraction"] = matching_fraction(rows, chance=info["chance_test_accuracy"])
    if ref and info["chance_test_accuracy"] is not None:
        info["reference_accuracy"]["beats_chance"] = beats_chance(top, info["chance_test_accuracy"])
    write_csv(rows, out_dir / "summary.csv")
    plots = {}
    model = results[0].get("model", preset.model)
    for name, methods in PLOTS.items():
        if any(r["method"] in methods for r in rows):
            path = out_dir / f"curve_{name}.png"
            plots[name] = plot_curves(rows, methods, teacher_acc, path, f"{task.name}: {model}, {preset.name} preset")
    info["spend"] = None
    if splits is not None:
        spend = fraction_spend(task, preset, splits["train"], load_counter(spend_tokenizer or _student_tokenizer(model)),
                               prices, label_cost, full_train_size=full_train_size)
        info["spend"] = spend
        plots["spend"] = plot_spend(spend_series(rows, spend), spend, teacher_acc, out_dir / "curve_spend.png",
                                    f"{task.name}: {model}, {preset.name} preset: accuracy against spend")
    info["plots"] = {name: f"curve_{name}.png" for name in plots}
    from ..student.warmstart import exposure_note  # light: no torch import

    info["pretraining_exposure"] = exposure_note(model, task.name)
    (out_dir / "summary.md").write_text(_summary_markdown(task, preset, rows, info))
    _write_json_atomic(out_dir / "report.json", {**info, "rows": rows, "plot_series": plots})
    return {"rows": rows, "info": info, "plots": plots}


def _student_tokenizer(model: str) -> str | None:
    """The student's tokenizer when it loads offline (minilm2minilm, a local folder); None (inspect's default) for
    ``tiny``, whose tokenizer is trained per run and deleted with the model."""
    return model if model == "minilm2minilm" or Path(model).is_dir() else None


def _spend_table(spend: dict[str, Any]) -> str:
    usd = spend["unit"] == "usd"
    lines = ["| % of full train | examples | teacher prompt tokens | teacher output tokens | teacher USD | "
             "human labels USD |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in spend["fractions"].values():
        teacher = f"{row['teacher_usd']:,.4f}" if usd else "-"
        lines.append(f"| {_pct(row['fraction'])} | {row['count']:,.0f} | {row['teacher_prompt_tokens']:,.0f} | "
                     f"{row['teacher_output_tokens']:,.0f} | {teacher} | {row['human_label_usd']:,.2f} |")
    price = (f"priced at ${spend['prices'][0]:g} / ${spend['prices'][1]:g} per million input / output tokens "
             "(`--prices`)" if usd else "not priced (no `--prices` entry: the spend plot uses teacher tokens and "
             "leaves human labels out)")
    note = (f"Teacher spend on each fraction's training examples (mean over seeds): the released `{spend['teacher_model']}` "
            "outputs carry no usage, so tokens are counted with "
            f"{spend['tokenizer']}: the prompt the teacher would be sent (the task's few-shot template) and its output; "
            f"{price}. Human labels cost ${spend['label_cost_usd']:g} each (`--label-cost`, default 0). Standard "
            "fine-tuning pays for human labels only, step-by-step (gold) for both, the teacher-label methods for the "
            "teacher only. Plot: `curve_spend.png`.")
    return "\n".join(["", "## Teacher spend", "", note, "", *lines])


def rationale_filter_counts(results: list[dict]) -> dict[str, dict]:
    """Per method: runs with rationale filters, and the rationales each filter removed, summed over those runs."""
    found: dict[str, dict] = {}
    for result in results:
        counts = (result.get("examples") or {}).get("rationale_filter")
        if not counts:
            continue
        entry = found.setdefault(method_name(result), {"runs": 0, "given": 0, "kept": 0, "removed": {}})
        entry["runs"] += 1
        entry["given"] += counts["given"]
        entry["kept"] += counts["kept"]
        for name, removed in counts["removed"].items():
            entry["removed"][name] = entry["removed"].get(name, 0) + removed
    return {method: found[method] for method in METHODS if method in found}


def rank_normalization_comparison(results: list[dict]) -> dict[str, Any] | None:
    """Mean test accuracy over the runs that ranked candidates, under summed and per-token mean log-probability (each
    run scores both from one pass), and the wins of each: the measurement that picks a task's default."""
    runs = [r["test_accuracy_by_rank_normalization"] for r in results if r.get("test_accuracy_by_rank_normalization")]
    if not runs:
        return None
    return {"runs": len(runs), "used": sorted({r["used"] for r in runs}),
            "sum": sum(r["sum"] for r in runs) / len(runs), "mean": sum(r["mean"] for r in runs) / len(runs),
            "mean_better": sum(r["mean"] > r["sum"] for r in runs), "sum_better": sum(r["sum"] > r["mean"] for r in runs)}


def _rank_fact(entry: dict[str, Any]) -> str:
    return (f"Candidate ranking ({entry['runs']} runs, scored with {' and '.join(entry['used'])}): mean test accuracy "
            f"{entry['sum'] * 100:.2f}% by summed log-probability, {entry['mean'] * 100:.2f}% by per-token mean "
            f"(`--rank-normalization mean`); the mean was better in {entry['mean_better']} runs, worse in "
            f"{entry['sum_better']}.")


def _filter_facts(filters: dict[str, dict]) -> list[str]:
    return [f"Rationale filters, {METHOD_TITLES[method]} ({entry['runs']} runs): of {entry['given']:,} rationales, "
            + ", ".join(f"`{name}` removed {n:,}" for name, n in entry["removed"].items())
            + f"; {entry['kept']:,} kept for the rationale task (filtered examples stay in the label task)."
            for method, entry in filters.items()]


def _convergence_fact(method: str, entry: dict) -> str:
    judged = entry["runs"] - entry["unknown"]
    if not judged:
        return f"Convergence, {METHOD_TITLES[method]}: unknown (its runs logged too few evaluations)."
    text = (f"Convergence, {METHOD_TITLES[method]}: valid accuracy still improving over the last third of training "
            f"in {entry['still_improving']}/{judged} runs (mean gain there {entry['mean_late_gain'] * 100:+.2f} "
            f"points); best at the last evaluation in {entry['best_at_last_eval']}/{judged}")
    if entry["unknown"]:
        text += f"; {entry['unknown']} run(s) with too few evaluations to tell"
    if entry["still_improving"] * 2 > judged:
        return text + ". Most runs were cut short: more steps could change the comparison."
    return text + "."


def _summary_markdown(task: Task, preset: Preset, rows: list[dict], info: dict) -> str:
    full = info.get("fraction_base")
    public = task.full_split_sizes.get("train")
    local = info.get("local_split_sizes", {})
    lines = [f"# Data efficiency: {task.name}, preset `{preset.name}`", ""]
    lines.append(f"Test accuracy (%) of `{preset.model}` students, mean ± 95% confidence interval (Student t) "
                 f"over seeds {', '.join(map(str, preset.seeds))}; each seed sets the training seed and the "
                 "training subset. Models are selected on valid and reported on test.")
    lines.append("")
    lines.append(markdown_table(rows))
    facts = []
    if full and public and full != public:
        facts.append(f"Fractions are relative to the full public training split less the carved valid split "
                     f"({public:,} - {public - full:,} = {full:,} examples), not to the examples available locally.")
    elif full:
        facts.append(f"Fractions are relative to the full public training split ({full:,} examples), as in the "
                     "paper, not to the examples available locally.")
    carved = info.get("valid_carved")
    if carved:
        facts.append(f"The task has no valid split: {carved['size']:,} examples were carved from train (seed "
                     f"{carved['seed']}) for model selection, disjoint from every training subset.")
    if local:
        facts.append("Examples available locally: " + ", ".join(f"{k} {v:,}" for k, v in local.items()) + ".")
    if "eval_sizes" in info:
        sizes = info["eval_sizes"]
        subsampled = [f"{name} {sizes[name]:,} of {local[name]:,}" for name in ("valid", "test")
                      if sizes[name] < local.get(name, 0)]
        if subsampled:
            facts.append("Evaluation sets subsampled (fixed across runs) to keep the preset's time budget: "
                         + ", ".join(subsampled) + ".")
    if info.get("teacher_test_accuracy") is not None:
        facts.append(f"Teacher few-shot accuracy on the evaluated test examples: "
                     f"{info['teacher_test_accuracy'] * 100:.2f}% (full local test split: "
                     f"{info['teacher_test_accuracy_full_split'] * 100:.2f}%), from the teacher labels in the data; "
                     "an unparseable teacher output counts as wrong.")
    ref = info.get("reference_accuracy")
    chance = info.get("chance_test_accuracy")
    if chance is not None:
        facts.append(f"Chance level: always answering the most frequent label scores {chance * 100:.2f}% on the "
                     "evaluated test examples.")
    if ref is not None and ref.get("beats_chance") is False:
        facts.append(f"No matching fraction: standard finetuning at {_pct(ref['fraction'])} "
                     f"({ref['test_accuracy_mean'] * 100:.2f}%) does not beat the chance level (its 95% interval, or "
                     "with one seed its mean minus 2 points, is not above it), so matching it would say nothing.")
    for method, fraction in info["matching_fraction"].items():
        if ref is None:
            continue
        target = f"standard finetuning at {_pct(ref['fraction'])} ({ref['test_accuracy_mean'] * 100:.2f}%)"
        facts.append(f"{METHOD_TITLES[method]} matches {target} "
                     + (f"from {_pct(fraction)} of the training set." if fraction is not None
                        else "at none of the fractions run."))
    if info.get("pretraining_exposure"):
        facts.insert(0, f"**Pre-training exposure:** {info['pretraining_exposure']}")
    facts += [_convergence_fact(method, entry) for method, entry in info.get("convergence", {}).items()]
    facts += _filter_facts(info.get("rationale_filters", {}))
    facts += [_rank_fact(info["rank_normalization"])] if info.get("rank_normalization") else []
    facts.append(f"Runs finished: {info['runs_finished']}; sum of run wall times {info['sum_of_run_wall_s']:,.0f} s"
                 + (f"; this invocation {info['sweep_wall_s_this_invocation']:,.0f} s."
                    if info.get("sweep_wall_s_this_invocation") is not None else "."))
    lines += [f"- {fact}" for fact in facts]
    if info.get("spend"):
        lines.append(_spend_table(info["spend"]))
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in info["plots"].values()) + ". Per-run results: `runs/`.", ""]
    return "\n".join(lines)

