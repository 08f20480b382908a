"""`stepdistill curve`: run a data-efficiency sweep and write its report."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from ..options import DataOptions
from ..tasks import get_task
from .executors import check_executor
from .presets import get_preset
from .report import write_report
from .sweep import run_sweep


def curve_command(data: DataOptions, preset: str = "cpu", out_dir: str | None = None,
                  rationales: str | list[str] | None = None, methods: list[str] | None = None,
                  seeds: list[int] | None = None, fractions: list[float] | None = None, max_steps: int | None = None,
                  valid_size: int | Literal["all"] | None = None, workers: int = 1,
                  executor: Literal["process", "ray"] = "process", ray_address: str | None = None,
                  gpus_per_run: float = 0.0, report_only: bool = False,
                  prices: dict[str, list[float]] | None = None, label_cost: float = 0.0,
                  spend_tokenizer: str | None = None, synthetic: str | None = None,
                  synthetic_ratio: float = 1.0) -> None:
    """Sweep fractions x methods x seeds and write a report folder (flat names work: --task, --data-dir).

    The folder holds summary.csv, summary.md (table), curve_*.png (plots), report.json and runs/ (one folder per
    run with its results.json and config.json). Rerunning the same command resumes: finished runs are kept.

    Args:
        data: Where the examples and teacher outputs come from (the options of `stepdistill data`).
        preset: smoke, cpu, cpu-pretrained, paper, or a preset .json file (fields of stepdistill.experiments.Preset).
        out_dir: Report folder (default: reports/<task>-<preset>).
        rationales: `stepdistill generate` caches (paths or globs) whose teacher outputs replace the data's own
            for the train split, joined by id (examples they lack count as missing).
        methods: Subset of standard-finetune, standard-distill, step-by-step-gold, step-by-step-teacher.
        seeds: Seeds to run instead of the preset's.
        fractions: Fractions of the full training split to run instead of the preset's.
        max_steps: Training steps per run instead of the preset's.
        valid_size: Validation subset (fixed, seed 0) instead of the preset's: a number of examples, or all.
        workers: Runs trained at once, each in its own process (on CPUs: about one per core; each uses the preset's
            torch threads, 1 when it sets none).
        executor: Where the runs train: process (a process pool on this machine) or ray (each run a Ray task of the
            preset's torch threads in CPUs, on the cluster at --ray-address or RAY_ADDRESS, else on a local cluster
            of workers x threads CPUs; the output folder must be on storage all nodes share).
        ray_address: The Ray cluster to run on (as ray.init's address, e.g. ray://head:10001); default RAY_ADDRESS.
        gpus_per_run: GPUs each Ray task reserves (ray executor; fractions share a GPU, e.g. 0.5).
        report_only: Only rebuild the report from the finished runs; train nothing.
        prices: Teacher prices for the spend table and curve_spend.png, USD per million input and output tokens by
            model, e.g. '{palm-540b: [3.0, 15.0]}' (the shared data's teacher). Without: spend in teacher tokens.
        label_cost: USD per human (gold) label, for standard fine-tuning and step-by-step (gold) spend.
        spend_tokenizer: Tokenizer that counts the replayed teacher's tokens (as `inspect --tokenizer`; default: the
            student's when it loads offline, else minilm2minilm's WordPiece when installed, else whitespace words).
        synthetic: Add synthetic examples from this `generate --synthesize` cache to every run's real subset:
            --synthetic-ratio of them per real example, chosen by the run's seed (default folder: ...-synthetic<R>).
        synthetic_ratio: Synthetic examples per real training example, with --synthetic.
    """
    from ..options import load_data

    from .spend import REPLAY_TEACHER, check_prices

    check_prices(prices, REPLAY_TEACHER)  # a ValueError: one error line (cli.py)
    check_executor(executor, gpus_per_run)  # before the data loads
    if label_cost < 0:
        raise ValueError(f"--label-cost must be >= 0, got {label_cost}")
    task_obj = get_task(data.task) if data.task else None
    loaded = load_data(data, rationales=rationales)
    task_obj = task_obj or loaded.task
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
    if valid_size is not None:
        if valid_size != "all" and valid_size < 1:
            raise ValueError(f"option --valid-size: must be a positive number or all, got {valid_size}")
        overrides["valid_size"] = None if valid_size == "all" else valid_size
    chosen = replace(chosen, **overrides)
    add_synthetic = None
    if synthetic:
        from ..options import choose_synthetic
        from ..rationales import synthetic_records

        if not synthetic_ratio > 0:
            raise ValueError(f"option --synthetic-ratio: must be positive, got {synthetic_ratio}")
        pool = synthetic_records(task_obj, synthetic, option="--synthetic")
        add_synthetic = lambda real, seed: choose_synthetic(pool, synthetic_ratio, real, seed, synthetic)  # noqa: E731
    suffix = f"-synthetic{synthetic_ratio:g}" if synthetic else ""
    out = Path(out_dir) if out_dir else Path("reports") / f"{task_obj.name}-{chosen.name}{suffix}"
    started = time.perf_counter()
    if not report_only:
        run_sweep(task_obj, loaded.splits, chosen, out, workers=workers, full_train_size=loaded.train_full_size,
                  executor=executor, ray_address=ray_address, gpus_per_run=gpus_per_run, add_synthetic=add_synthetic)
    report = write_report(task_obj, chosen, out, splits=loaded.splits, full_train_size=loaded.train_full_size,
                          valid_carved=loaded.valid_carved,
                          sweep_wall_s=None if report_only else round(time.perf_counter() - started, 1),
                          prices=prices, label_cost=label_cost, spend_tokenizer=spend_tokenizer)
    print((out / "summary.md").read_text())
    print(f"report: {out}  ({len(report['rows'])} rows; {', '.join(report['info']['plots'].values())})")
