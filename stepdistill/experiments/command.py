"""`stepdistill curve`: run a data-efficiency sweep and write its report."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..tasks import get_task
from .presets import get_preset
from .report import write_report
from .sweep import run_sweep


def curve_command(task: str, preset: str = "cpu", data_dir: str | None = None, out_dir: str | None = None,
          source: str = "local", methods: list[str] | None = None, seeds: list[int] | None = None,
          fractions: list[float] | None = None, max_steps: int | None = None, workers: int = 1,
          report_only: bool = False, prices: dict[str, list[float]] | None = None, label_cost: float = 0.0,
          spend_tokenizer: str | None = None) -> None:
    """Run a data-efficiency sweep (fractions x methods x seeds) and write its report folder.

    The folder holds summary.csv, summary.md (table), curve_*.png (plots), report.json and runs/ (one folder per
    run with its results.json and config.json). Rerunning the same command resumes: finished runs are kept.

    Args:
        task: Task name (esnli, anli1, ...), task spec .json or file.py:Class.
        preset: smoke, cpu, cpu-pretrained, paper, or a preset .json file (fields of stepdistill.experiments.Preset).
        data_dir: Data folder (default: $STEPDISTILL_DATA_DIR, else ../shared/data).
        out_dir: Report folder (default: reports/<task>-<preset>).
        source: Data source: local, official, hub, jsonl or csv (see `stepdistill data`).
        methods: Subset of standard-finetune, standard-distill, step-by-step-gold, step-by-step-teacher.
        seeds: Seeds to run instead of the preset's.
        fractions: Fractions of the full training split to run instead of the preset's.
        max_steps: Training steps per run instead of the preset's.
        workers: Runs trained at once, each in its own process (on CPUs: about one per core; each uses the preset's
            torch threads, 1 when it sets none).
        report_only: Only rebuild the report from the finished runs; train nothing.
        prices: Teacher prices for the spend table and curve_spend.png, USD per million input and output tokens by
            model, e.g. '{palm-540b: [3.0, 15.0]}' (the shared data's teacher). Without: spend in teacher tokens.
        label_cost: USD per human (gold) label, for standard fine-tuning and step-by-step (gold) spend.
        spend_tokenizer: Tokenizer that counts the replayed teacher's tokens (as `inspect --tokenizer`; default: the
            student's when it loads offline, else minilm2minilm's WordPiece when installed, else whitespace words).
    """
    from ..data import load_task_data

    from .spend import REPLAY_TEACHER, check_prices

    try:
        check_prices(prices, REPLAY_TEACHER)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if label_cost < 0:
        raise SystemExit(f"error: --label-cost must be >= 0, got {label_cost}")
    task_obj = get_task(task)
    chosen = get_preset(preset).for_task(task_obj)  # the command line's overrides below win
    overrides: dict[str, Any] = {}
    if methods:
        overrides["methods"] = tuple(methods)
    if seeds:
        overrides["seeds"] = tuple(seeds)
    if fractions:
        overrides["fractions"] = {task_obj.name: tuple(fractions)}
    if max_steps:
        overrides["max_steps"] = max_steps
    chosen = replace(chosen, **overrides)
    out = Path(out_dir) if out_dir else Path("reports") / f"{task_obj.name}-{chosen.name}"
    data = load_task_data(task_obj, data_dir=data_dir, source=source)
    started = time.perf_counter()
    if not report_only:
        run_sweep(task_obj, data.splits, chosen, out, workers=workers)
    report = write_report(task_obj, chosen, out, splits=data.splits,
                          sweep_wall_s=None if report_only else round(time.perf_counter() - started, 1),
                          prices=prices, label_cost=label_cost, spend_tokenizer=spend_tokenizer)
    print((out / "summary.md").read_text())
    print(f"report: {out}  ({len(report['rows'])} rows; {', '.join(report['info']['plots'].values())})")
