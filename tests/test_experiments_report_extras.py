"""Curve report extras: rationale filter counts (and teacher spend) summed from the per-run results.json files."""

from __future__ import annotations

import json
from pathlib import Path

from stepdistill.experiments import METHODS, PRESETS, write_report


def write_run(out: Path, method: str, fraction: float, seed: int, test: float, **more) -> None:
    trainer_method, label_source = METHODS[method]
    folder = out / "runs" / method / f"fraction-{fraction:g}" / f"seed-{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "method": trainer_method, "label_source": label_source, "sweep_method": method, "fraction": fraction,
        "seed": seed, "count": 10, "test_accuracy": test, "valid_accuracy": test, "sweep_wall_s": 1.0, **more}))


def test_report_sums_rationale_filter_removals_per_method(tmp_path):
    for seed, (removed, kept) in enumerate([({"gold-agree": 3, "max-length:40": 1}, 6),
                                            ({"gold-agree": 2, "max-length:40": 0}, 8)]):
        write_run(tmp_path, "step-by-step-gold", 0.001, seed, 0.5 + seed / 10, examples={"rationale_filter": {
            "filters": list(removed), "removed": removed, "given": 10, "kept": kept}})
        write_run(tmp_path, "standard-finetune", 0.001, seed, 0.4)
    report = write_report("esnli", PRESETS["smoke"], tmp_path)
    assert report["info"]["rationale_filters"] == {"step-by-step-gold": {
        "runs": 2, "given": 20, "kept": 14, "removed": {"gold-agree": 5, "max-length:40": 1}}}
    assert ("- Rationale filters, Distilling step-by-step (gold labels) (2 runs): of 20 rationales, `gold-agree` "
            "removed 5, `max-length:40` removed 1; 14 kept for the rationale task (filtered examples stay in the "
            "label task).") in (tmp_path / "summary.md").read_text()
