"""Data-efficiency experiments: sweeps of training fractions x methods x seeds, aggregation, tables and plots.

``presets`` (what a sweep varies), ``sweep`` (running and resuming runs), ``stats`` (aggregation over seeds),
``plots`` and ``report`` (the report folder), ``command`` (``stepdistill curve``).
"""

from .command import curve_command
from .plots import METHOD_COLORS, PLOTS, plot_curves
from .presets import METHOD_TITLES, METHODS, PAPER_METHODS, PRESETS, Preset, get_preset
from .report import CSV_COLUMNS, markdown_table, write_csv, write_report
from .stats import (aggregate, beats_chance, convergence, majority_rate, matching_fraction, method_name,
                    t_quantile, teacher_accuracy)
from .sweep import (RESULTS_FILE, SWEEP_LOG, RunSpec, check_fractions, eval_splits, load_results, make_train_config,
                    plan_runs, run_dir_for, run_sweep)

__all__ = [
    "CSV_COLUMNS", "METHODS", "PAPER_METHODS", "METHOD_COLORS", "METHOD_TITLES", "PLOTS", "PRESETS", "RESULTS_FILE", "SWEEP_LOG",
    "Preset", "RunSpec", "aggregate", "beats_chance", "check_fractions", "convergence", "curve_command",
    "eval_splits", "get_preset", "load_results", "majority_rate", "make_train_config", "markdown_table",
    "matching_fraction", "method_name", "plan_runs", "plot_curves", "run_dir_for", "run_sweep", "t_quantile",
    "teacher_accuracy", "write_csv", "write_report",
]
