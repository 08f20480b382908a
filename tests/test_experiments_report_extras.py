"""Curve report extras: rationale filter counts (and teacher spend) summed from the per-run results.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def _splits(n_train: int = 120) -> dict[str, list[dict]]:
    labels = ("entailment", "neutral", "contradiction")

    def make(split, i):
        fields = {"id": i, "premise": f"A man number {i} walks {'far ' * (i % 5)}home.", "hypothesis": "A man walks.",
                  "label": labels[i % 3]}
        return {"id": str(i), "input": f"premise: {fields['premise']} hypothesis: {fields['hypothesis']}",
                "label": labels[i % 3], "choices": list(labels), "fields": fields,
                "teacher_output": "A man walks. " * (1 + i % 4) + f"Answer: {labels[i % 3]}",
                "rationale": "A man walks.", "teacher_label": labels[i % 3], "teacher_error": None}
    return {"train": [make("train", i) for i in range(n_train)], "valid": [make("valid", i) for i in range(8)],
            "test": [make("test", i) for i in range(8)]}


def test_spend_per_fraction_priced_counted_and_plotted(tmp_path):
    from dataclasses import replace

    from PIL import Image

    from stepdistill.data import subsample
    from stepdistill.teacher.prompts import load_template

    preset = replace(PRESETS["smoke"], methods=tuple(METHODS), seeds=(0, 1))
    accuracy = {"standard-finetune": 0.40, "standard-distill": 0.45, "step-by-step-gold": 0.50,
                "step-by-step-teacher": 0.55}
    for method, base in accuracy.items():
        for fraction in (0.0001, 0.0002):
            for seed in (0, 1):
                write_run(tmp_path, method, fraction, seed, base + fraction * 100 + seed / 100)
    splits = _splits()
    report = write_report("esnli", preset, tmp_path, splits=splits, prices={"palm-540b": [2.0, 10.0]},
                          label_cost=0.5, spend_tokenizer="whitespace")
    spend = report["info"]["spend"]
    assert (spend["unit"], spend["prices"], spend["label_cost_usd"]) == ("usd", [2.0, 10.0], 0.5)
    template = load_template("esnli")
    expected = {}
    for fraction in (0.0001, 0.0002):
        prompt = output = 0
        for seed in (0, 1):
            subset = subsample(splits["train"], fraction=fraction, seed=seed, full_size=549_367)
            prompt += sum(len(template.render({"premise": r["fields"]["premise"],
                                               "hypothesis": r["fields"]["hypothesis"]}).split()) for r in subset)
            output += sum(len(r["teacher_output"].split()) for r in subset)
            count = len(subset)
        expected[fraction] = (count, prompt / 2, output / 2)
        row = spend["fractions"][f"{fraction:g}"]
        assert (row["count"], row["teacher_prompt_tokens"], row["teacher_output_tokens"]) == expected[fraction]
        assert row["teacher_usd"] == (prompt / 2 * 2.0 + output / 2 * 10.0) / 1e6
        assert row["human_label_usd"] == count * 0.5
    assert [e[0] for e in expected.values()] == [55, 110]

    image = Image.open(tmp_path / "curve_spend.png")
    series = json.loads(image.text["stepdistill:series"])
    small, large = spend["fractions"]["0.0001"], spend["fractions"]["0.0002"]
    assert series["standard-finetune"]["spend"] == [small["human_label_usd"], large["human_label_usd"]]
    assert series["standard-distill"]["spend"] == [small["teacher_usd"], large["teacher_usd"]]
    assert series["step-by-step-gold"]["spend"] == pytest.approx(
        [small["teacher_usd"] + 27.5, large["teacher_usd"] + 55.0])
    assert series["step-by-step-teacher"]["accuracy"] == pytest.approx([56.5, 57.5])
    summary = (tmp_path / "summary.md").read_text()
    assert (f"| 0.01% | 55 | {expected[0.0001][1]:,.0f} | {expected[0.0001][2]:,.0f} | "
            f"{small['teacher_usd']:,.4f} | 27.50 |") in summary
    assert "priced at $2 / $10 per million input / output tokens" in summary and "`curve_spend.png`" in summary

    unpriced = write_report("esnli", preset, tmp_path, splits=splits, spend_tokenizer="whitespace")["info"]["spend"]
    assert unpriced["unit"] == "teacher tokens" and unpriced["fractions"]["0.0001"]["teacher_usd"] is None
    series = json.loads(Image.open(tmp_path / "curve_spend.png").text["stepdistill:series"])
    assert series["standard-finetune"]["spend"] == [0.0, 0.0]
    assert series["standard-distill"]["spend"] == [expected[f][1] + expected[f][2] for f in (0.0001, 0.0002)]


def test_curve_refuses_a_price_table_without_the_teacher(tmp_path):
    from stepdistill.cli import main

    curve = ["curve", "--task", "esnli", "--preset", "smoke", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"error: --prices: no usable price for teacher model 'palm-540b'"):
        main(curve + ["--prices", '{"gpt-4o": [2.5, 10.0]}'])
    with pytest.raises(SystemExit, match=r"error: --label-cost must be >= 0"):
        main(curve + ["--label-cost", "-1.0"])


def test_every_sweep_method_has_a_spend():
    from stepdistill.experiments.spend import method_spend

    row = {"teacher_prompt_tokens": 100, "teacher_output_tokens": 20, "teacher_usd": 0.5, "human_label_usd": 0.25}
    spends = {method: (method_spend(method, row, "tokens"), method_spend(method, row, "usd")) for method in METHODS}
    assert spends == {
        "standard-finetune": (0.0, 0.25), "standard-distill": (120.0, 0.5), "step-by-step-gold": (120.0, 0.75),
        "step-by-step-teacher": (120.0, 0.5), "single-task": (120.0, 0.75), "single-task-label-first": (120.0, 0.75),
        "rationale-input": (120.0, 0.75), "soft-distill": (120.0, 0.5)}
