"""Teacher spend per training fraction, and the methods' spend: what each point of a curve cost to make.

The shared data's teacher outputs are replayed (the released PaLM ones): they carry no usage, so tokens are counted
with a tokenizer (the prompt the teacher would be sent, rendered from the task's few-shot template, and the output)
and priced from a user's table. Standard fine-tuning pays only for human labels (a user-given cost per label,
default 0); step-by-step with gold labels pays both; the teacher-label methods pay the teacher only.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..tasks import Task
from .presets import METHODS, Preset

REPLAY_TEACHER = "palm-540b"  # the model behind the released teacher outputs of the local/official sources
# the ablations train on gold labels and teacher rationales (rationale-input's test-time teacher is not counted)
TEACHER_PAYS = {"standard-finetune": False, "standard-distill": True, "step-by-step-gold": True,
                "step-by-step-teacher": True, "single-task": True, "single-task-label-first": True,
                "rationale-input": True, "soft-distill": True}
HUMAN_LABELS_PAY = {"standard-finetune": True, "standard-distill": False, "step-by-step-gold": True,
                    "step-by-step-teacher": False, "single-task": True, "single-task-label-first": True,
                    "rationale-input": True, "soft-distill": False}


def check_prices(prices: dict[str, Any] | None, model: str) -> tuple[float, float] | None:
    """(USD per million input tokens, per million output tokens) of ``model``; None without a table."""
    if not prices:
        return None
    price = prices.get(model)
    if (not isinstance(price, (list, tuple)) or len(price) != 2
            or not all(isinstance(v, (int, float)) and v >= 0 for v in price)):
        raise ValueError(f"--prices: no usable price for teacher model {model!r}; give "
                         f"'{{{model}: [usd_per_M_input, usd_per_M_output]}}'")
    return float(price[0]), float(price[1])


def example_tokens(task: Task, records: list[dict[str, Any]], counter) -> dict[str, tuple[int, int]]:
    """id -> (prompt tokens, output tokens) the teacher spent on each record (counted, not recorded)."""
    from ..teacher.prompts import template_for_task

    template = template_for_task(task)
    prompts = [template.render(task.prompt_fields(record["fields"])) for record in records]
    outputs = [record.get("teacher_output") or "" for record in records]
    return {str(record["id"]): (p, o)
            for record, p, o in zip(records, counter.count(prompts), counter.count(outputs))}


def fraction_spend(task: Task, preset: Preset, train: list[dict[str, Any]], counter, prices: dict | None,
                   label_cost: float, teacher_model: str = REPLAY_TEACHER,
                   full_train_size: int | None = None) -> dict[str, Any]:
    """Per fraction (mean over the preset's seeds, whose subsets differ): examples, teacher tokens and USD, and the
    human-label cost; plus what was assumed."""
    from ..data import subsample
    from .sweep import fraction_base

    price = check_prices(prices, teacher_model)
    full = fraction_base(task, full_train_size)
    subsets = {(fraction, seed): subsample(train, fraction=fraction, seed=seed, full_size=full)
               for fraction in preset.fractions_for(task) for seed in preset.seeds}
    needed = {str(r["id"]): r for subset in subsets.values() for r in subset}
    tokens = example_tokens(task, list(needed.values()), counter)
    rows = {}
    for fraction in preset.fractions_for(task):
        per_seed = [[tokens[str(r["id"])] for r in subsets[(fraction, seed)]] for seed in preset.seeds]
        prompt = statistics.fmean(sum(p for p, _ in seed) for seed in per_seed)
        output = statistics.fmean(sum(o for _, o in seed) for seed in per_seed)
        count = statistics.fmean(len(seed) for seed in per_seed)
        rows[f"{fraction:g}"] = {
            "fraction": fraction, "count": count, "teacher_prompt_tokens": prompt, "teacher_output_tokens": output,
            "teacher_usd": None if price is None else (prompt * price[0] + output * price[1]) / 1e6,
            "human_label_usd": count * label_cost}
    return {"teacher_model": teacher_model, "tokenizer": counter.name, "prices": None if price is None else list(price),
            "label_cost_usd": label_cost, "unit": "usd" if price is not None else "teacher tokens", "fractions": rows}


def method_spend(method: str, row: dict[str, Any], unit: str) -> float:
    """A method's spend at one fraction: USD (teacher and/or human labels), or teacher tokens without prices."""
    if unit == "usd":
        return (row["teacher_usd"] if TEACHER_PAYS[method] else 0.0) + (
            row["human_label_usd"] if HUMAN_LABELS_PAY[method] else 0.0)
    return float(row["teacher_prompt_tokens"] + row["teacher_output_tokens"]) if TEACHER_PAYS[method] else 0.0


def spend_series(rows: list[dict], spend: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per method: spend (x) and mean test accuracy in % (y), by fraction."""
    series: dict[str, dict[str, list[float]]] = {}
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method and f"{r['fraction']:g}" in spend["fractions"]),
                      key=lambda r: r["fraction"])
        if mine:
            series[method] = {
                "spend": [method_spend(method, spend["fractions"][f"{r['fraction']:g}"], spend["unit"]) for r in mine],
                "accuracy": [r["test_accuracy_mean"] * 100 for r in mine],
                "percent": [r["percent"] for r in mine]}
    return series
