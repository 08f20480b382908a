"""Data-efficiency curves for e-SNLI and ANLI-R1, one preset, one report folder per task.

    python experiments/curves.py --preset cpu                      # both tasks, reports/<task>-cpu/
    python experiments/curves.py --preset cpu --workers 2          # two runs at once (one per core)
    python experiments/curves.py --preset smoke --tasks anli1
    python experiments/curves.py --preset experiments/paper_local_data.json --data-dir /path/to/data

Each task's sweep resumes where it stopped when the command is run again (finished runs are never redone).
Equivalent to one `stepdistill curve --task <task> --preset <preset>` per task.
"""

from __future__ import annotations

import argparse
import time

from stepdistill.experiments import curve_command
from stepdistill.options import DataOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="smoke, cpu, paper or a preset .json file")
    parser.add_argument("--tasks", nargs="+", default=["esnli", "anli1"], help="tasks to sweep, in order")
    parser.add_argument("--data-dir", default=None, help="default: $STEPDISTILL_DATA_DIR, else ../shared/data")
    parser.add_argument("--reports", default="reports", help="parent folder of the report folders")
    parser.add_argument("--workers", type=int, default=1, help="runs trained at once, one process each")
    args = parser.parse_args()
    preset_name = args.preset.rsplit("/", 1)[-1].removesuffix(".json")
    for task in args.tasks:
        started = time.perf_counter()
        curve_command(DataOptions(task=task, data_dir=args.data_dir), preset=args.preset,
                      out_dir=f"{args.reports}/{task}-{preset_name}", workers=args.workers)
        print(f"{task}: {time.perf_counter() - started:,.0f} s wall")


if __name__ == "__main__":
    main()
