"""One experiment file (YAML or JSON) for the whole path: data -> teacher rationales -> sweep -> report.

`stepdistill run exp.yaml` asks the teacher only for the training examples some run will train on (the union over
seeds of the largest fraction's subset: smaller fractions are nested inside it), then runs the sweep and writes the
report. Rerunning resumes both stages: cached rationales are not asked for again, finished runs are not redone.

    task: esnli                       # or a spec .json / file.py:Class
    data: {source: local, data_dir: ../shared/data}       # stepdistill.options.DataOptions fields
    teacher:
      spec: replay:../shared/data     # openai:MODEL, hf:PATH or replay:DIR
      params: {max_new_tokens: 256, temperature: 0.0}    # GenerationParams fields
      options: {base_url: http://localhost:8000/v1}      # the teacher's constructor options
    preset: cpu                       # the base preset (name or preset .json); `sweep` overrides its fields
    sweep: {methods: [standard-finetune, step-by-step-teacher], fractions: [0.001], seeds: [0, 1], max_steps: 100}
    out_dir: reports/esnli-exp        # default: reports/<file stem>
    workers: 2                        # runs at once; executor: ray runs them as Ray tasks (docs/scaling.md)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..options import DataOptions
from .executors import check_executor
from .presets import Preset, get_preset
from .report import write_report
from .sweep import run_sweep

NEEDS_NO_TEACHER = ("standard-finetune",)  # sweep methods that read no teacher output


@dataclass
class TeacherSpec:
    """Who writes the rationales, and how."""

    spec: str  # openai:MODEL, hf:PATH or replay:DIR
    cache: str | None = None  # the rationale cache; default: <out_dir>/rationales_train.jsonl
    params: dict[str, Any] = field(default_factory=dict)  # GenerationParams fields (max_new_tokens, temperature, n)
    options: dict[str, Any] = field(default_factory=dict)  # teacher options (base_url, timeout, max_attempts, ...)
    prompt: str | None = None  # few-shot template file; default: the task's
    concurrency: int = 16
    filter_gold: bool = False


@dataclass
class Experiment:
    task: str
    teacher: TeacherSpec
    data: DataOptions = field(default_factory=DataOptions)
    preset: str = "cpu"
    sweep: dict[str, Any] = field(default_factory=dict)  # Preset fields that differ from the base preset
    out_dir: str | None = None
    workers: int = 1
    executor: str = "process"  # or "ray" (as `curve --executor`)
    ray_address: str | None = None  # default RAY_ADDRESS, else a local cluster
    gpus_per_run: float = 0.0  # GPUs per Ray task


def _build(cls, values: Any, where: str):
    """``cls`` from a mapping; unknown or missing keys name the file and field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:  # a missing required field
        raise ValueError(f"{where}: {exc}") from None


def load_experiment(path: str | Path) -> Experiment:
    """An experiment file (.yaml/.yml or .json); errors name the file, line or field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: experiment file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise ValueError(f"{path}: {line}invalid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of experiment fields at the top level")
    raw = dict(raw)
    if "teacher" not in raw or "task" not in raw:
        raise ValueError(f"{path}: fields 'task' and 'teacher' are required")
    teacher = raw.pop("teacher")
    raw["teacher"] = _build(TeacherSpec, {"spec": teacher} if isinstance(teacher, str) else teacher,
                            f"{path}: field 'teacher'")
    data = _build(DataOptions, raw.pop("data", {}) or {}, f"{path}: field 'data'")
    raw["data"] = replace(data, task=raw["task"])
    experiment = _build(Experiment, raw, str(path))
    unknown = sorted(set(experiment.sweep) - set(Preset.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{path}: field 'sweep': unknown preset field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(Preset.__dataclass_fields__))}")
    if not isinstance(experiment.workers, int) or experiment.workers < 1:
        raise ValueError(f"{path}: field 'workers': expected a positive integer, got {experiment.workers!r}")
    check_executor(experiment.executor, experiment.gpus_per_run, label=lambda name: f"{path}: field '{name}'")
    if experiment.out_dir is None:
        experiment.out_dir = str(Path("reports") / path.stem)
    return experiment


def sweep_preset(experiment: Experiment, task):
    """The base preset with the experiment's overrides, for ``task``."""
    preset = get_preset(experiment.preset).for_task(task)
    overrides = dict(experiment.sweep)
    for key in ("methods", "seeds"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if "fractions" in overrides:
        overrides["fractions"] = {task.name: tuple(overrides["fractions"])}
    return replace(preset, **overrides)


def examples_to_generate(task, train: list[dict], preset, full_train_size: int | None = None) -> list[dict]:
    """The training examples some run of the sweep trains on: per seed, the largest fraction's subset (every smaller
    fraction's subset lies inside it); none when no method reads teacher outputs."""
    from ..data import subsample
    from .sweep import check_fractions, fraction_base

    if all(method in NEEDS_NO_TEACHER for method in preset.methods):
        return []
    counts = check_fractions(preset, task, len(train), full_train_size)
    largest = max(counts, key=counts.get)
    wanted: set[str] = set()
    for seed in preset.seeds:
        chosen = subsample(train, fraction=largest, seed=seed, full_size=fraction_base(task, full_train_size))
        wanted.update(record["id"] for record in chosen)
    return [record for record in train if record["id"] in wanted]


def run_experiment(experiment: Experiment, echo=print) -> dict[str, Any]:
    """Generate the missing rationales the sweep needs, run the sweep, write the report; returns the report."""
    from ..options import load_data
    from ..rationales import attach_rationales, load_rationales
    from ..teacher import GenerationParams, RationaleGenerator, format_summary, make_teacher

    started = time.perf_counter()
    data = load_data(experiment.data)
    task = data.task
    preset = sweep_preset(experiment, task)
    out_dir = Path(experiment.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    needed = examples_to_generate(task, data.splits.get("train", []), preset, data.train_full_size)
    cache = Path(experiment.teacher.cache or out_dir / "rationales_train.jsonl")
    generation: dict[str, Any] = {"train_examples": len(data.splits.get("train", [])), "examples_needed": len(needed)}
    if needed:
        spec = experiment.teacher
        teacher = make_teacher(spec.spec, task.name, "train", **spec.options)
        generator = RationaleGenerator(task, teacher, cache, template=spec.prompt,
                                       params=GenerationParams(**spec.params), concurrency=spec.concurrency,
                                       filter_gold=spec.filter_gold, progress=False)
        result = generator.run(needed)
        echo(f"rationales for {len(needed):,} of {generation['train_examples']:,} training examples "
             f"(what the runs train on) -> {cache}")
        echo(format_summary(result.summary))
        generation.update(result.summary.as_dict())
        if not result.summary.ok:
            raise ValueError(f"{cache}: the teacher gave no usable rationale for any of {len(needed):,} examples")
        data.splits["train"] = attach_rationales(data.splits["train"], load_rationales(cache))
    sweep_started = time.perf_counter()
    run_sweep(task, data.splits, preset, out_dir, echo=echo, workers=experiment.workers,
              full_train_size=data.train_full_size, executor=experiment.executor,
              ray_address=experiment.ray_address, gpus_per_run=experiment.gpus_per_run)
    report = write_report(task, preset, out_dir, splits=data.splits, full_train_size=data.train_full_size,
                          valid_carved=data.valid_carved,
                          sweep_wall_s=round(time.perf_counter() - sweep_started, 1))
    generation["wall_s"] = round(time.perf_counter() - started, 1)
    (out_dir / "generation.json").write_text(json.dumps(generation, indent=2) + "\n")
    return report


def run_command(experiment: str, report_only: bool = False) -> None:
    """Run an experiment file: generate the rationales its runs need, sweep, write the report (resumable).

    The file (YAML or JSON) names the task, the data source, the teacher with its generation settings, the base
    preset with the student, methods, fractions and seeds to change (see experiments/*.yaml). The teacher is asked
    only for the training examples some run trains on; a rerun sends no request for cached rationales and
    retrains no finished run.

    Args:
        experiment: The experiment file (`stepdistill run exp.yaml`).
        report_only: Only rebuild the report from the finished runs.
    """
    from ..options import load_data

    spec = load_experiment(experiment)
    started = time.perf_counter()
    if report_only:
        data = load_data(spec.data)
        write_report(data.task, sweep_preset(spec, data.task), spec.out_dir, splits=data.splits,
                     full_train_size=data.train_full_size, valid_carved=data.valid_carved)
    else:
        run_experiment(spec)
    out = Path(spec.out_dir)
    print((out / "summary.md").read_text())
    print(f"report: {out}  (wall time {time.perf_counter() - started:.1f} s)")
