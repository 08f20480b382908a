"""The cpu-pretrained preset and the report's honesty lines: convergence per method and pre-training exposure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepdistill.experiments import METHODS, PAPER_METHODS, PRESETS, check_fractions, convergence, write_report
from stepdistill.tasks import get_task


def _result(method: str, seed: int, curve: list[list[float]] | None, fraction: float = 0.002) -> dict:
    trainer_method, label_source = METHODS[method]
    return {"method": trainer_method, "label_source": label_source, "sweep_method": method, "fraction": fraction,
            "seed": seed, "count": 100, "test_accuracy": 0.7, "valid_accuracy": 0.7, "valid_count": 500,
            "sweep_wall_s": 3.0, "model": "minilm2minilm", "valid_curve": curve}


# 500 valid examples: two binomial standard errors around 0.6-0.7 are about 4.1-4.4 points
STILL_RISING = [[100, 0.50], [200, 0.60], [300, 0.70]]  # +10 points in the last third: still improving
PEAKED = [[100, 0.50], [200, 0.70], [300, 0.69]]  # best before the last third
FLAT = [[100, 0.70], [200, 0.71], [300, 0.72]]  # best at the last eval, but +1 point is within noise


def test_convergence_counts_runs_still_improving_beyond_noise():
    results = [_result("standard-finetune", 0, STILL_RISING), _result("standard-finetune", 1, PEAKED),
               _result("standard-finetune", 2, FLAT), _result("step-by-step-gold", 0, FLAT),
               _result("step-by-step-gold", 1, None), _result("step-by-step-gold", 2, [[300, 0.7]])]
    found = convergence(results)
    assert list(found) == ["standard-finetune", "step-by-step-gold"]
    assert found["standard-finetune"] == {"runs": 3, "still_improving": 1, "best_at_last_eval": 2, "unknown": 0,
                                          "mean_late_gain": pytest.approx((0.10 - 0.01 + 0.01) / 3)}
    assert found["step-by-step-gold"] == {"runs": 3, "still_improving": 0, "best_at_last_eval": 1, "unknown": 2,
                                          "mean_late_gain": pytest.approx(0.01)}


def _write_runs(out: Path, results: list[dict]) -> None:
    for result in results:
        folder = out / "runs" / result["sweep_method"] / f"fraction-{result['fraction']:g}" / f"seed-{result['seed']}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(result))


@pytest.mark.parametrize("task, exposure", [("esnli", "e-SNLI numbers are optimistic"),
                                            ("anli1", "less exposed")])
def test_report_states_pretraining_exposure_and_convergence(tmp_path, task, exposure):
    _write_runs(tmp_path, [_result("standard-finetune", s, c) for s, c in enumerate((STILL_RISING, STILL_RISING,
                                                                                   PEAKED))]
                + [_result("step-by-step-teacher", s, FLAT) for s in range(3)])
    report = write_report(task, PRESETS["cpu-pretrained"], tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "SNLI and MultiNLI" in summary and exposure in summary
    assert report["info"]["convergence"]["standard-finetune"]["still_improving"] == 2
    assert ("Convergence, Standard finetuning (gold labels): valid accuracy still improving over the last third of "
            "training in 2/3 runs (mean gain there +6.33 points); best at the last evaluation in 2/3. Most runs were "
            "cut short: more steps could change the comparison.") in summary
    assert ("Convergence, Distilling step-by-step (teacher labels): valid accuracy still improving over the last "
            "third of training in 0/3 runs (mean gain there +1.00 points); best at the last evaluation in 3/3.") \
        in summary


def test_tiny_t5_report_has_no_exposure_line(tmp_path):
    _write_runs(tmp_path, [{**_result("standard-finetune", 0, FLAT), "model": "tiny"}])
    report = write_report("esnli", PRESETS["cpu"], tmp_path)
    assert report["info"]["pretraining_exposure"] is None
    assert "MultiNLI" not in (tmp_path / "summary.md").read_text()


def test_task_overrides_apply_per_task_and_the_command_line_wins(tmp_path):
    from dataclasses import replace

    from stepdistill.experiments import Preset

    preset = Preset(name="p", model="tiny", fractions={"default": (0.5,)}, max_steps=100, eval_steps=10,
                    task_overrides={"anli1": {"max_steps": 40, "valid_size": 50}})
    anli = preset.for_task(get_task("anli1"))
    assert (anli.max_steps, anli.valid_size, anli.eval_steps, anli.task_overrides) == (40, 50, 10, {})
    assert anli.for_task(get_task("anli1")) == anli  # applying twice changes nothing
    assert preset.for_task(get_task("esnli")).max_steps == 100
    assert replace(anli, max_steps=7).max_steps == 7


@pytest.mark.shared_data
def test_cpu_pretrained_preset_fits_the_local_data(shared_data_dir):
    from stepdistill.data import load_task_data

    for task in ("esnli", "anli1"):
        preset = PRESETS["cpu-pretrained"].for_task(get_task(task))
        assert preset.model == "minilm2minilm"
        assert preset.methods == PAPER_METHODS and preset.seeds == (0, 1, 2)
        # enough evaluations to judge convergence (several in the last third), and the last step is evaluated
        assert preset.max_steps % preset.eval_steps == 0 and preset.max_steps // preset.eval_steps >= 6
        data = load_task_data(task, data_dir=shared_data_dir, splits=("train",))
        counts = check_fractions(preset, get_task(task), len(data.splits["train"]))
        # e-SNLI: one fraction, so that every method's training fits the budget long enough to converge
        assert len(counts) == (1 if task == "esnli" else 2) and min(counts.values()) >= 100
        # the largest fraction is read at least once: a bigger one would only measure the step budget
        assert max(counts.values()) <= preset.max_steps * preset.batch_size


@pytest.mark.parametrize("name, model", [("gpu-smollm2", "smollm2-135m"), ("gpu-qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B")])
def test_gpu_causal_presets_fit_the_shared_data_and_build_their_config(name, model):
    from stepdistill.experiments.sweep import make_train_config
    from stepdistill.tasks import get_task

    preset = PRESETS[name]
    assert check_fractions(preset, get_task("esnli"), 14_949) == {0.001: 549, 0.005: 2747, 0.01: 5494, 0.025: 13734}
    assert check_fractions(preset, get_task("anli1"), 1_000) == {0.01: 169, 0.025: 424, 0.05: 847, 0.059: 1000}
    config = make_train_config(preset, "step-by-step", "teacher", seed=2)
    assert (config.model, config.bf16, config.lr_scheduler_type, config.warmup_steps, config.seed) == \
        (model, True, "linear", 50, 2)
