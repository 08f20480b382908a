"""`stepdistill tune`: an Optuna search over TrainConfig fields, selected on valid, test scored once for the best.

The study lives in ``DIR/study.db`` (Optuna's SQLite storage): the same command again resumes it. Finished trials
(complete or pruned) count towards ``--trials`` and are not repeated; a trial left RUNNING by a killed process is
marked failed and its parameters are enqueued again. Each evaluation on valid is reported to the trial, and
Optuna's MedianPruner stops trials whose valid curve falls below the median of earlier trials at the same step.

Search space (YAML, inline or a file), one entry per TrainConfig field:
  ``alpha: [0.1, 0.9]``              float range (uniform)
  ``learning_rate: [1e-4, 1e-2, log]``  log range (float; int when both bounds are ints)
  ``warmup_steps: [0, 20]``          int range (both bounds written as ints)
  ``lora_r: {choices: [0, 4, 8]}``   categorical
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from ..locks import exclusive_lock
from ..options import DataOptions, SubsetOptions
from ..student.config import TrainConfig

STUDY_NAME = "tune"
LOCK_FILE = "tune.lock"


def parse_space(space: str) -> dict[str, dict[str, Any]]:
    """The search space: field -> {"kind": "float"|"int"|"categorical", ...}; bad input raises one-line errors."""
    import yaml

    where = "option --space"
    text = space
    if not space.lstrip().startswith("{") and Path(space).is_file():
        where, text = space, Path(space).read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: malformed YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: expected a mapping of TrainConfig fields to ranges, e.g. "
                         "'{alpha: [0.1, 0.9], learning_rate: [1e-4, 1e-2, log]}'")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for name, spec in raw.items():
        if name not in fields:
            raise ValueError(f"{where}: unknown field '{name}' (a TrainConfig field, e.g. alpha, learning_rate)")
        if isinstance(spec, dict) and set(spec) == {"choices"} and isinstance(spec["choices"], list) \
                and spec["choices"]:
            out[name] = {"kind": "categorical", "choices": spec["choices"]}
            continue
        if isinstance(spec, list):
            spec = [_number(x) for x in spec]
        numbers = isinstance(spec, list) and len(spec) in (2, 3) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec[:2])
        if not numbers or (len(spec) == 3 and spec[2] != "log"):
            raise ValueError(f"{where}: field '{name}': expected [low, high], [low, high, log] or "
                             f"{{choices: [...]}}, got {spec!r}")
        low, high = spec[0], spec[1]
        log = len(spec) == 3
        if not low < high:
            raise ValueError(f"{where}: field '{name}': low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ValueError(f"{where}: field '{name}': a log range needs low > 0, got {low}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        out[name] = {"kind": kind, "low": low, "high": high, "log": log}
    return out


def _number(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string: such strings are numbers here."""
    if isinstance(value, str) and value != "log":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if spec["kind"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["kind"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"])
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec["log"])
    return params


def _pruning_callback(trial):
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        """Every valid evaluation goes to the trial; a trial below the median of earlier ones at this step stops."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            import optuna

            if metrics and "eval_accuracy" in metrics:
                trial.report(metrics["eval_accuracy"], state.global_step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"valid accuracy {metrics['eval_accuracy']:.4f} at step "
                                             f"{state.global_step}")

    return ReportToTrial()


def _open_study(output_dir: Path, seed: int, pruner_warmup: int):
    """The study in output_dir/study.db; trials a killed process left RUNNING are failed and enqueued again."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{output_dir / 'study.db'}")
    existing = len(optuna.get_all_study_summaries(storage)) and any(
        s.study_name == STUDY_NAME for s in optuna.get_all_study_summaries(storage))
    done = 0
    if existing:
        done = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    # the sampler's seed moves with the trials already there: a resumed study does not draw trial 0's params again
    sampler = optuna.samplers.TPESampler(seed=seed + done)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=pruner_warmup)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


def tune_command(output_dir: str, space: str, data: DataOptions, subset: SubsetOptions, student: TrainConfig,
                 trials: int = 10, rationales: str | list[str] | None = None,
                 valid_size: int | Literal["all"] = 1000, test_size: int | Literal["all"] = "all",
                 seed: int = 0, pruner_warmup: int = 0) -> dict:
    """Search TrainConfig fields with Optuna: each trial trains on train and is selected on valid; test is scored
    once, for the best trial, at the end. Re-running the same command resumes the study (DIR/study.db).

    `--config FILE.yaml` (flat TrainConfig fields) and the train options set the fixed part of every trial.

    Args:
        output_dir: Study folder: study.db, trial_N/ run folders, trials.csv, trials.md, trials.png,
            best_config.yaml (for `stepdistill train --config`), best.json (with the test accuracy).
        space: Search space, YAML inline or a .yaml file: {alpha: [0.1, 0.9], learning_rate: [1e-4, 1e-2, log],
            warmup_steps: [0, 20], lora_r: {choices: [0, 4, 8]}} (float range, log range, int range when both
            bounds are ints, categorical).
        data: Where the examples and teacher outputs come from.
        subset: Which training examples.
        student: Fixed student settings of every trial (the space's fields are drawn per trial).
        trials: Finished trials (complete or pruned) the study should hold; a resumed study runs only the rest.
        rationales: `stepdistill generate` caches replacing the data's teacher outputs for train.
        valid_size: Selection (and pruning) on a fixed subset of this many valid examples (seed 0), or all.
        test_size: Test examples scored once for the best trial (all, or a fixed subset, seed 0).
        seed: Seed of the sampler (TPE).
        pruner_warmup: MedianPruner's n_warmup_steps: no pruning before this training step.
    """
    from ..data import DataError
    from ..options import load_data, train_subset
    from ..student.command import _fixed_subset

    parsed = parse_space(space)
    if trials < 1:
        raise ValueError(f"option --trials: must be at least 1, got {trials}")
    loaded = load_data(data, rationales=rationales)
    for split in ("train", "valid"):
        if split not in loaded.splits:
            raise DataError(f"task {loaded.task.name}: no '{split}' split (source {data.source})")
    train_records = train_subset(loaded, subset)
    valid = _fixed_subset(loaded.splits["valid"], valid_size, "--valid-size")
    test = _fixed_subset(loaded.splits.get("test", []), test_size, "--test-size")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # one tune per folder: the RUNNING trials found on opening can only be a killed process's
    with exclusive_lock(out / LOCK_FILE, f"{out}: another tune is running in this folder"):
        return _run_study(out, parsed, student, loaded, train_records, valid, test, trials, seed, pruner_warmup,
                          extra={"fraction": subset.fraction, "data_seed": subset.data_seed, "rationales": rationales,
                                 "source": data.source, "valid_size": len(valid),
                                 "valid_full_size": len(loaded.splits["valid"])})


def _run_study(out: Path, parsed, student: TrainConfig, loaded, train_records, valid, test, trials: int, seed: int,
               pruner_warmup: int, extra: dict) -> dict:
    from optuna.trial import TrialState

    from ..student.trainer import run_training

    study = _open_study(out, seed, pruner_warmup)

    def objective(trial) -> float:
        config = dataclasses.replace(student, **_suggest(trial, parsed))  # a bad value fails in __post_init__
        trial.set_user_attr("run_dir", str(out / f"trial_{trial.number}"))
        results = run_training(loaded.task, train_records, valid, [], config, out / f"trial_{trial.number}",
                               extra=extra, callbacks=[_pruning_callback(trial)])
        trial.set_user_attr("steps", results["steps"])
        return results["valid_accuracy"]  # the best checkpoint's, as `train --config best_config.yaml` reports it

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    return _write_outputs(study, out, student, loaded.task, test)


def _write_outputs(study, out: Path, student: TrainConfig, task, test: list[dict]) -> dict:
    import yaml
    from optuna.trial import TrialState

    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params,
             "run_dir": t.user_attrs.get("run_dir")} for t in study.trials]
    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    lines = ["| " + " | ".join(names[:-1]) + " |", "|" + "---|" * (len(names) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in names[:-1]) + " |")
    (out / "trials.md").write_text("\n".join(lines) + "\n")
    _plot(study.trials, out / "trials.png")
    if not complete:
        raise ValueError(f"{out}: no trial completed (see trials.md); nothing to select")
    best = max(complete, key=lambda t: (t.value, -t.number))
    config = dataclasses.replace(student, **best.params)
    defaults = TrainConfig()
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
               if getattr(config, f.name) != getattr(defaults, f.name)}
    (out / "best_config.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    summary = {"best_trial": best.number, "params": best.params, "valid_accuracy": best.value,
               "test_accuracy": _score_test(best.user_attrs["run_dir"], config, task, test) if test else None,
               "test_size": len(test), "trials": len(study.trials),
               "complete": len(complete), "pruned": sum(t.state == TrialState.PRUNED for t in study.trials)}
    (out / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _score_test(run_dir: str, config: TrainConfig, task, test: list[dict]) -> float:
    """Test accuracy of the best trial's saved student (its best checkpoint on valid): the one test scoring."""
    from ..student.evaluate import evaluate_records, rank_normalization_for
    from ..student.predict import load_trained_student

    student = load_trained_student(run_dir, task)
    accuracy, _ = evaluate_records(
        student.model, student.tokenizer, task, test, label_prefix=config.label_prefix,
        rationale_prefix=config.rationale_prefix, batch_size=config.eval_batch_size,
        max_input_length=config.max_input_length, max_target_length=config.max_target_length,
        label_max_new_tokens=config.label_max_new_tokens, bf16=config.bf16,
        rank_normalization=rank_normalization_for(task, config.rank_normalization))
    return accuracy


def _plot(trials, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        shown = [t for t in trials if t.state.name == state]
        # a pruned trial shows its last reported valid accuracy
        values = [t.value if t.value is not None else (list(t.intermediate_values.values()) or [None])[-1]
                  for t in shown]
        points = [(t.number, v) for t, v in zip(shown, values) if v is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=state.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("valid accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
