"""`stepdistill data`: load a task from a data source and print what is there."""

from __future__ import annotations

from .data import TaskData, split_report
from .options import DataOptions, SubsetOptions


def format_report(data: TaskData, subset_of: dict[str, int] | None = None) -> str:
    """The text report; ``subset_of`` names the splits whose report is of a subsample (split -> size before it)."""
    lines = [f"task {data.task.name} (source: {data.source})"]
    for split, report in data.report.items():
        full = data.task.full_split_sizes.get(split)
        of_full = f" of {full:,} in the full split" if full and full != report.examples else ""
        if subset_of and split in subset_of:
            of_full = f" (subsample of the {subset_of[split]:,} loaded{of_full.replace(' of ', '; ', 1)})"
        lines.append(f"\n[{split}] {report.examples:,} examples{of_full}")
        labels = ", ".join(f"{label} {count:,} ({count / report.examples:.1%})" for label, count in report.labels.most_common(10))
        lines.append(f"  labels: {labels}" + (" ..." if len(report.labels) > 10 else ""))
        agreement = f"{report.agreement:.1%}"
        if report.teacher_agree_authors != report.teacher_agree:  # the figure to compare with the paper's
            agreement += f" (by the authors' rule, {report.authors_rule}: {report.agreement_authors:.1%})"
        lines.append(f"  teacher outputs parsed: {report.teacher_ok:,}; teacher-label agreement with gold: {agreement}")
        if report.teacher_failures:
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in report.teacher_failures.most_common())
            lines.append(f"  unusable teacher outputs by reason: {reasons}")
        if report.teacher_without_example:
            lines.append(f"  teacher outputs for examples not available locally: {report.teacher_without_example:,}")
    return "\n".join(lines)


def data_command(data: DataOptions, subset: SubsetOptions, splits: list[str] | None = None,
                 rationales: str | list[str] | None = None, json: bool = False) -> None:
    """Load a task from a data source and print what is there (flat names work: --task, --fraction).

    Prints counts per split, the label distribution, teacher-label agreement with gold and unusable teacher
    outputs by reason; with --fraction/--count, the train figures are the subsample's own.

    Args:
        data: Where the examples and teacher outputs come from.
        subset: A nested subsample of train (its own counts are reported).
        splits: Splits to load (default: all that exist).
        rationales: `stepdistill generate` caches (paths or globs) whose teacher outputs replace the data's own
            for the train split, joined by id; caches of `generate --synthesize` replace the train split
            (data-free).
        json: Print the report as JSON instead of text.
    """
    from .options import load_data, train_subset

    loaded = load_data(data, splits=splits, rationales=rationales)
    subset_of = {}
    if (subset.active or subset.synthetic) and "train" in loaded.splits:
        records = train_subset(loaded, subset)
        subset_of["train"] = len(loaded.splits["train"])
        loaded.report["train"] = split_report(loaded.task, records)
    if json:
        import json as json_module

        payload = {split: report.as_dict() for split, report in loaded.report.items()}
        if subset_of:
            payload["subsample"] = {"train": loaded.report["train"].examples, "of": subset_of["train"],
                                    "data_seed": subset.data_seed}
            if subset.synthetic:
                payload["subsample"]["synthetic"] = sum(bool(record.get("synthetic")) for record in records)
        print(json_module.dumps({"task": loaded.task.name, "source": data.source, "splits": payload}, indent=2))
    else:
        print(format_report(loaded, subset_of))
