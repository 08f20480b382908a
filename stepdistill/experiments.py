"""Data-efficiency experiments: sweeps of training fractions x methods x seeds, aggregation, tables and plots.

A sweep trains one student per (method, fraction, seed) through :func:`stepdistill.student.trainer.run_training`
and keeps every run in its own folder ``runs/<method>/fraction-<f>/seed-<s>``. A run is trained in
``<folder>.partial`` and renamed to its final name only after its ``results.json`` is complete, so a folder
without the suffix is always a finished run: a resumed sweep skips it and restarts a ``.partial`` one.

The report (``summary.csv``, ``summary.md``, ``curve_*.png``, ``report.json``) is computed from the per-run
``results.json`` files alone, so it can be rebuilt at any time (``stepdistill curve ... --report_only true``).
Fractions are relative to the complete public training split (``task.full_split_sizes``), as in the paper; the
report states how many examples exist locally.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .tasks import Task, get_task, read_json_file

# sweep method name -> (trainer method, label source)
METHODS: dict[str, tuple[str, str]] = {
    "standard-finetune": ("standard", "gold"),
    "standard-distill": ("standard", "teacher"),
    "step-by-step-gold": ("step-by-step", "gold"),
    "step-by-step-teacher": ("step-by-step", "teacher"),
}
METHOD_TITLES = {
    "standard-finetune": "Standard finetuning (gold labels)",
    "standard-distill": "Standard distillation (teacher labels)",
    "step-by-step-gold": "Distilling step-by-step (gold labels)",
    "step-by-step-teacher": "Distilling step-by-step (teacher labels)",
}
METHOD_COLORS = {
    "standard-finetune": "tab:blue",
    "standard-distill": "tab:green",
    "step-by-step-gold": "tab:red",
    "step-by-step-teacher": "tab:orange",
}
# The paper's two comparisons (its Figures 4 and 5), plus all four methods on one plot.
PLOTS = {
    "finetune": ("standard-finetune", "step-by-step-gold"),
    "distill": ("standard-distill", "step-by-step-teacher"),
    "all": tuple(METHODS),
}
RESULTS_FILE = "results.json"
SWEEP_LOG = "sweep.log"


@dataclass
class Preset:
    """Everything a sweep varies or fixes. Fractions are relative to the task's full public training split."""

    name: str
    model: str
    fractions: dict[str, tuple[float, ...]]  # task name -> fractions; key "default" for any other task
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)  # each seed sets both the training seed and the data subset
    max_steps: int = 1000
    batch_size: int = 32  # global batch size
    learning_rate: float = 5e-4
    eval_steps: int = 100
    alpha: float = 0.5
    max_input_length: int = 128
    max_target_length: int = 64
    bf16: bool = False
    valid_size: int | None = None  # subsample valid (model selection) to this many examples; None: all
    test_size: int | None = None  # subsample test (reported accuracy) to this many examples; None: all
    torch_threads: int | None = None  # torch.set_num_threads for the sweep; None: torch's default (all cores)
    keep_models: bool = False  # False: delete each run's model/, checkpoints/ and student-init/ once it has results
    trainer_options: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # task name -> fields that differ for it

    def for_task(self, task: Task) -> "Preset":
        """This preset with ``task``'s overrides applied (a task costs more per step, or needs more steps)."""
        return replace(self, **self.task_overrides.get(task.name, {}), task_overrides={})

    def fractions_for(self, task: Task) -> tuple[float, ...]:
        chosen = self.fractions.get(task.name, self.fractions.get("default"))
        if not chosen:
            raise ValueError(f"preset '{self.name}' has no fractions for task '{task.name}' (and no 'default')")
        return tuple(sorted(chosen))


PRESETS: dict[str, Preset] = {
    # Seconds on 2 CPU cores: a tiny T5, two fractions of a small user data set, two methods, two seeds.
    "smoke": Preset(
        name="smoke", model="tiny",
        fractions={"esnli": (0.0001, 0.0002), "anli1": (0.005, 0.01), "default": (0.5, 1.0)},
        methods=("standard-finetune", "step-by-step-teacher"), seeds=(0, 1),
        max_steps=4, batch_size=8, learning_rate=1e-3, eval_steps=2,
        max_input_length=48, max_target_length=24, valid_size=16, test_size=16,
        torch_threads=1,  # tiny matrices: a second thread costs more in synchronisation than it gives
    ),
    # Tiny T5 from scratch, all four methods, 3 seeds, what the shared data allows: 48 runs per task, measured 15 min
    # (e-SNLI) and 28 min (ANLI-R1) with --workers 2 on 2 idle cores (experiments/README.md). ANLI inputs are
    # ~4x longer (mean 184 tokens: max_input_length 128 would cut the hypothesis off 98.6% of them), hence 256 and
    # a smaller batch there; e-SNLI batches are length-grouped, so the cap costs it nothing.
    "cpu": Preset(
        name="cpu", model="tiny",
        fractions={
            "esnli": (0.001, 0.005, 0.01, 0.025),  # 549 / 2,747 / 5,494 / 13,734 of 549,367
            "anli1": (0.01, 0.025, 0.05, 0.059),  # 169 / 424 / 847 / 1,000 of 16,946 (all that exists locally)
            "default": (0.1, 0.25, 0.5, 1.0),
        },
        max_steps=120, batch_size=16, learning_rate=1e-3, eval_steps=40,
        max_input_length=256, max_target_length=64, valid_size=300, test_size=1000,
        task_overrides={"anli1": {"max_steps": 90, "batch_size": 8, "eval_steps": 30}},
    ),
    # all-MiniLM-L6-v2 warm-started as encoder and decoder (extra `pretrained`), all four methods, 3 seeds, under
    # 2 hours per task on 2 free cores with --workers 2; measured times and the choice of steps: CPU_PRETRAINED_BUDGET.
    "cpu-pretrained": Preset(
        name="cpu-pretrained", model="minilm2minilm",
        fractions={
            "esnli": (0.001,),  # 549 of 549,367: 11.4 epochs in 392 steps of 16 (one fraction: see the budget)
            "anli1": (0.025, 0.059),  # 424 / 1,000 of 16,946 (all that exists locally): 3.2 / 1.3 epochs in 84 steps
        },
        max_steps=392, batch_size=16, learning_rate=1e-4, eval_steps=28,
        max_input_length=192, max_target_length=48, valid_size=200, test_size=1000,
        task_overrides={"anli1": {"max_steps": 84, "eval_steps": 14}},  # 2.3x the cost per step of e-SNLI
    ),
    # The paper's setup, for a GPU: T5-v1.1-base, 10,000 steps, batch 64, lr 5e-5, full valid/test.
    "paper": Preset(
        name="paper", model="google/t5-v1_1-base",
        fractions={"default": (0.125, 0.25, 0.5, 0.75, 1.0)},
        max_steps=10_000, batch_size=64, learning_rate=5e-5, eval_steps=250,
        max_input_length=1024, max_target_length=256, bf16=True,
    ),
}

CPU_PRETRAINED_BUDGET = """Why `cpu-pretrained` looks the way it does.

Measured: `stepdistill curve --preset cpu-pretrained --workers 2` (two runs at once, one torch thread each) alone on
the idle 2-core dev machine, length-sorted chunks on:
                                       steps   standard run   step-by-step run   whole task, 3 seeds
  e-SNLI , 0.1% (549)                    392     627-708 s      1,218-1,311 s      98 min (5,859 s, measured)
  ANLI-R1, 2.5% + 5.9% (424 / 1,000)     84      355-387 s      634-700 s          ~105 min (seeds 1-2: 4,180 s)
Why one thread per run: in the tiny-T5 trainer benchmark a second thread made a run only 1.35x faster, while a second
run at once can give up to 2x. The preset sets no thread count, so `--workers 2` gives each run one thread and a
single-process sweep keeps torch's default (all cores). bf16 autocast does not help here: on this CPU (AVX-512 bf16,
no AMX) a step-by-step step took 1.32x longer in bf16 than in fp32.

Cost per optimizer step, batch 16, one thread: e-SNLI about 1.5 s standard and 2.9 s step-by-step (a second encoder
pass and 20-40 rationale tokens); ANLI-R1 about 2.3x that. Rank scoring: 19 / 45 ms per example. A run = S steps,
S/28 (ANLI S/14) evaluations on 200 valid examples with a checkpoint each, 1,000 test examples, ~10 s of set-up.

Why e-SNLI has one fraction and 392 steps. The warm-started cross-attention must be learned before the labels move,
and step-by-step, whose updates serve two tasks, gets there later than standard training. At 196 steps of 16 with two
fractions (0.1%, 0.4%; the previous version of this preset, ~98 min) step-by-step (gold) was still improving in 6/6
CPU runs. Training longer is what fixes it, measured on an H100 (fp32, this preset's lr 1e-4 constant, batch 16, 200
valid examples every 28 steps, seeds 0-1; best valid accuracy in steps 1-196 / 197-392 / 393-784):
                          0.1% (549 examples)           0.4% (2,197 examples)
  standard fine-tuning    67/72/72, 62/62/58            78/78/80, 70/77/78
  standard distillation   57/56/58, 55/56/56            60/69/72, 60/70/70
  step-by-step (gold)     48/64/64, 55/62/62            68/70/76, 66/78/79 (476 steps)
  step-by-step (teacher)  50/56/58, 58/55/54 (588)      42/68/70
At 0.1% every method has reached its plateau by step 392 (later gains are at most 2 points; one standard error of
200 valid examples is about 3.5), at 0.4% runs still gained up to 6 points after 392. Neither a linear decay (peak
1e-4 or 2e-4, warmup 20) at 196 steps nor 392 steps of batch 8 brought step-by-step there (H100, 3 seeds): what
counts is examples read. Two fractions at 392 steps would take ~195 min here, so e-SNLI runs the one fraction that
converges within the budget; for a curve, add fractions and steps on a longer budget (`--fractions`, `--max-steps`)
or on a GPU (one H100 ran this preset's 12 e-SNLI runs in 222 s, all at once, beside 12 more).
ANLI-R1 gets 84 steps (2.3x e-SNLI's cost per step) and stays at chance. On the H100, 588 steps (7x) at 5.9% left all
four methods at chance too (seed 0: 33.1-37.9% test, valid 28-40% throughout): ANLI-R1's flat curves belong to this
student, not to the step budget.
Lengths (WordPiece tokens, 2,000 training examples): inputs e-SNLI p99 59 / max 77, ANLI-R1 p99 146 / max 186, so 192
truncates nothing (batches are length-grouped: the cap costs nothing); rationales e-SNLI p99 33, ANLI-R1 p95 42 /
p99 61, so 48 cuts a few ANLI rationales short.
"""


def get_preset(name: str) -> Preset:
    """A built-in preset by name, or a JSON file of Preset fields (``"base": "<preset>"`` fills the rest)."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not name.endswith(".json"):
        raise ValueError(f"unknown preset {name!r}; built in: {', '.join(PRESETS)}; or a preset .json file")
    spec = read_json_file(path, "preset")
    base = PRESETS.get(spec.pop("base", "cpu"))
    if base is None:
        raise ValueError(f"{path}: field 'base': unknown preset; built in: {', '.join(PRESETS)}")
    known = set(Preset.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{path}: unknown preset field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("methods", "seeds"):
        if key in spec:
            spec[key] = tuple(spec[key])
    if "fractions" in spec:
        spec["fractions"] = {task: tuple(values) for task, values in spec["fractions"].items()}
    spec.setdefault("name", path.stem)
    return replace(base, **spec)


# -- planning and running ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    method: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/fraction-{self.fraction:g}/seed-{self.seed}"


def plan_runs(preset: Preset, task: Task) -> list[RunSpec]:
    """Seeds outermost, so an interrupted sweep already holds complete curves for its first seeds."""
    unknown = [m for m in preset.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return [RunSpec(method, fraction, seed)
            for seed in preset.seeds for fraction in preset.fractions_for(task) for method in preset.methods]


def check_fractions(preset: Preset, task: Task, n_train: int) -> dict[float, int]:
    """Examples per fraction; fails before any training when a fraction needs more examples than exist."""
    full = task.full_split_sizes.get("train", n_train)
    counts = {f: round(f * full) for f in preset.fractions_for(task)}
    too_big = {f: n for f, n in counts.items() if n > n_train or n < 1}
    if too_big:
        wanted = ", ".join(f"{f:.4g} ({f * 100:.4g}% of {full:,} = {n:,})" for f, n in too_big.items())
        raise ValueError(f"task '{task.name}': fraction(s) {wanted} need more training examples than the "
                         f"{n_train:,} that exist locally (largest possible fraction: {n_train / full:.4g})")
    return counts


def _log(out_dir: Path, *fields: Any) -> None:
    # append + fsync: the log must survive a SIGKILL of the sweep (the resume test reads it)
    with open(out_dir / SWEEP_LOG, "a") as handle:
        handle.write("\t".join(str(f) for f in fields) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _lock_sweep(out_dir: Path):
    """An exclusive lock on the sweep folder: a second sweep there would restart the first one's runs."""
    import fcntl

    handle = open(out_dir / "sweep.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"{out_dir}: another sweep is running in this folder (sweep.lock is held)") from None
    return handle


def run_dir_for(out_dir: Path, spec: RunSpec) -> Path:
    return Path(out_dir) / "runs" / spec.key


def run_sweep(task: str | Task, splits: dict[str, list[dict]], preset: Preset, out_dir: str | os.PathLike,
              train_fn: Callable[..., dict] | None = None, echo: Callable[[str], None] = print,
              workers: int = 1) -> list[dict]:
    """Train every planned run that has no finished folder yet; returns the results of all finished runs.

    ``splits`` holds the ``train``/``valid``/``test`` records (``stepdistill.data`` record dicts).
    ``train_fn`` defaults to :func:`stepdistill.student.trainer.run_training` (same signature).
    ``workers`` > 1 trains that many runs at once, each in its own process with ``preset.torch_threads`` threads
    (1 when unset).
    """
    from .data import subsample

    if train_fn is None:
        from .student.trainer import run_training as train_fn
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    task = get_task(task)
    preset = preset.for_task(task)
    threads = preset.torch_threads or (1 if workers > 1 else None)
    if threads and workers == 1:
        import torch

        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _lock_sweep(out_dir):  # held for the whole sweep; the OS drops it if the process is killed
        train, valid, test = eval_splits(splits, preset)
        counts = check_fractions(preset, task, len(train))
        full_train = task.full_split_sizes.get("train")
        plan = plan_runs(preset, task)
        done = sum(1 for spec in plan if (run_dir_for(out_dir, spec) / RESULTS_FILE).exists())
        echo(f"sweep {task.name}/{preset.name}: {len(plan)} runs, {done} already finished, output {out_dir}"
             + (f", {workers} at a time" if workers > 1 else ""))

        def start(index: int, spec: RunSpec) -> tuple:
            """Prepare the run's .partial folder and arguments; log its start."""
            final = run_dir_for(out_dir, spec)
            partial = final.with_name(final.name + ".partial")
            if partial.exists():  # left by a crashed sweep: start that run again from scratch
                shutil.rmtree(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            trainer_method, label_source = METHODS[spec.method]
            records = subsample(train, fraction=spec.fraction, seed=spec.seed, full_size=full_train)
            assert len(records) == counts[spec.fraction]
            config = make_train_config(preset, trainer_method, label_source, spec.seed)
            extra = {"sweep_method": spec.method, "fraction": spec.fraction, "count": len(records),
                     "data_seed": spec.seed, "preset": preset.name, "run_key": spec.key,
                     "full_train_size": full_train, "valid_size": len(valid), "test_size": len(test)}
            echo(f"[{index}/{len(plan)}] {spec.key}: {len(records):,} examples")
            _log(out_dir, "start", spec.key, os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S"))
            return (task, records, valid, test, config, partial), extra, time.perf_counter()

        def finish(spec: RunSpec, partial: Path, extra: dict, started: float) -> None:
            results = json.loads((partial / RESULTS_FILE).read_text())
            results["sweep_wall_s"] = round(time.perf_counter() - started, 3)
            results.update(extra)
            if not preset.keep_models:  # a sweep of base-size models would otherwise fill the disk
                for name in ("model", "checkpoints", "student-init"):
                    shutil.rmtree(partial / name, ignore_errors=True)
            _write_json_atomic(partial / RESULTS_FILE, results)
            os.replace(partial, run_dir_for(out_dir, spec))  # atomic: the run counts as finished only from here on
            _log(out_dir, "done", spec.key, os.getpid(), results["sweep_wall_s"])
            echo(f"    {spec.key}: test accuracy {results.get('test_accuracy')}, "
                 f"valid {results.get('valid_accuracy')}, {results['sweep_wall_s']:.1f} s")

        pending = [(index, spec) for index, spec in enumerate(plan, start=1)
                   if not (run_dir_for(out_dir, spec) / RESULTS_FILE).exists()]
        if workers == 1:
            for index, spec in pending:
                args, extra, started = start(index, spec)
                train_fn(*args, extra=extra)
                finish(spec, args[-1], extra, started)
        else:
            _run_parallel(pending, start, finish, train_fn, workers, threads)
    return load_results(out_dir)


def _init_worker(threads: int) -> None:
    import sys

    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # die with the sweep: an orphan would go on writing into a .partial folder that a resumed sweep restarts
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _run_parallel(pending: list[tuple[int, RunSpec]], start: Callable, finish: Callable, train_fn: Callable,
                  workers: int, threads: int) -> None:
    """At most ``workers`` runs in flight, each in a spawned process; a run is finished (renamed, logged) by this
    process as soon as it ends. On a failure the runs in flight still finish, then the error is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(pending)
    in_flight: dict = {}
    error: BaseException | None = None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        while queue or in_flight:
            while queue and error is None and len(in_flight) < workers:
                index, spec = queue.pop(0)
                args, extra, started = start(index, spec)
                in_flight[pool.submit(train_fn, *args, extra=extra)] = (spec, args[-1], extra, started)
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                spec, partial, extra, started = in_flight.pop(future)
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001  (re-raised below, after the others finish)
                    error = error or exc
                    continue
                finish(spec, partial, extra, started)
    if error is not None:
        raise error


def eval_splits(splits: dict[str, list[dict]], preset: Preset) -> tuple[list[dict], list[dict], list[dict]]:
    """Train records and the (optionally subsampled, fixed across runs) valid and test records."""
    from .data import subsample

    missing = [s for s in ("train", "valid", "test") if not splits.get(s)]
    if missing:
        raise ValueError(f"a sweep needs train, valid and test splits; missing or empty: {', '.join(missing)}")
    valid, test = splits["valid"], splits["test"]
    if preset.valid_size and preset.valid_size < len(valid):
        valid = subsample(valid, count=preset.valid_size, seed=0)
    if preset.test_size and preset.test_size < len(test):
        test = subsample(test, count=preset.test_size, seed=0)
    return splits["train"], valid, test


def make_train_config(preset: Preset, method: str, label_source: str, seed: int):
    from .student.trainer import TrainConfig

    return TrainConfig(
        model=preset.model, method=method, label_source=label_source, alpha=preset.alpha,
        max_steps=preset.max_steps, batch_size=preset.batch_size, learning_rate=preset.learning_rate,
        eval_steps=preset.eval_steps, seed=seed, bf16=preset.bf16, max_input_length=preset.max_input_length,
        max_target_length=preset.max_target_length, **preset.trainer_options,
    )


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The results of every finished run under ``out_dir/runs`` (``.partial`` folders are ignored)."""
    results = []
    for path in sorted((Path(out_dir) / "runs").glob(f"*/*/*/{RESULTS_FILE}")):
        if path.parent.name.endswith(".partial"):
            continue
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    return results


# -- aggregation ---------------------------------------------------------------------------------------------------

def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (scipy is not a dependency): bisection on the integrated density."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf_above_half(t: float, steps: int = 4000) -> float:  # P(0 <= T <= t), composite Simpson's rule
        h = t / steps
        total = density(0.0) + density(t)
        total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return total * h / 3

    low, high = 0.0, 1.0
    while cdf_above_half(high) < p - 0.5:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf_above_half(mid) < p - 0.5 else (low, mid)
    return (low + high) / 2


def method_name(result: dict) -> str:
    """The sweep method of a run, from the trainer's method and label source."""
    if result.get("sweep_method") in METHODS:
        return result["sweep_method"]
    for name, pair in METHODS.items():
        if pair == (result.get("method"), result.get("label_source")):
            return name
    raise ValueError(f"run {result.get('run_key', '?')}: unknown method/label_source "
                     f"{result.get('method')!r}/{result.get('label_source')!r}")


def aggregate(results: list[dict], confidence: float = 0.95) -> list[dict]:
    """One row per (method, fraction): mean, sample standard deviation and t-interval of test accuracy over seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for result in results:
        groups.setdefault((method_name(result), float(result["fraction"])), []).append(result)
    rows = []
    order = list(METHODS)
    for (method, fraction), runs in sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        runs = sorted(runs, key=lambda r: r["seed"])
        accuracies = [float(r["test_accuracy"]) for r in runs]
        n = len(accuracies)
        mean = statistics.fmean(accuracies)
        std = statistics.stdev(accuracies) if n > 1 else float("nan")
        half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
        counts = sorted({int(r["count"]) for r in runs})
        rows.append({
            "method": method, "fraction": fraction, "percent": fraction * 100,
            "count": counts[0] if len(counts) == 1 else "/".join(map(str, counts)),
            "n_seeds": n, "seeds": " ".join(str(r["seed"]) for r in runs),
            "test_accuracy_mean": mean, "test_accuracy_std": std,
            "ci95_half_width": half, "ci95_low": mean - half, "ci95_high": mean + half,
            "valid_accuracy_mean": statistics.fmean(float(r["valid_accuracy"]) for r in runs),
            "wall_s_total": sum(float(r.get("sweep_wall_s", 0.0)) for r in runs),
        })
    return rows


def teacher_accuracy(task: Task, records: list[dict]) -> float:
    """Share of records whose parsed teacher label is correct (an unparseable teacher output counts as wrong)."""
    if not records:
        return float("nan")
    right = sum(1 for r in records
                if r.get("teacher_label") is not None and task.is_correct(r["teacher_label"], r["label"], r["fields"]))
    return right / len(records)


def convergence(results: list[dict], late_share: float = 1 / 3) -> dict[str, dict]:
    """Per method: had valid accuracy stopped improving when training stopped?

    A run is *still improving* when its best valid accuracy in the last ``late_share`` of its steps beats its best
    before then by more than two binomial standard errors of the valid set (noise alone rarely does that). Runs
    without an evaluation on both sides of that point are counted as ``unknown``. ``best_at_last_eval`` counts runs
    whose best evaluation was their last one (the checkpoint kept is the final one)."""
    found: dict[str, dict] = {}
    for result in results:
        entry = found.setdefault(method_name(result), {"runs": 0, "still_improving": 0, "best_at_last_eval": 0,
                                                        "unknown": 0, "late_gains": []})
        entry["runs"] += 1
        curve = result.get("valid_curve") or []
        cut = curve[-1][0] * (1 - late_share) if curve else 0
        early = [accuracy for step, accuracy in curve if step <= cut]
        late = [accuracy for step, accuracy in curve if step > cut]
        if not early or not late:
            entry["unknown"] += 1
            continue
        best_early = max(early)
        noise = 2 * math.sqrt(best_early * (1 - best_early) / int(result["valid_count"]))
        gain = max(late) - best_early
        entry["late_gains"].append(gain)
        entry["still_improving"] += gain > noise
        accuracies = [accuracy for _, accuracy in curve]
        entry["best_at_last_eval"] += accuracies.index(max(accuracies)) == len(accuracies) - 1
    for entry in found.values():
        gains = entry.pop("late_gains")
        entry["mean_late_gain"] = statistics.fmean(gains) if gains else None
    return {method: found[method] for method in METHODS if method in found}


def majority_rate(records: list[dict]) -> float | None:
    """Test accuracy of always answering the most frequent gold label: the chance level a student must beat
    (None for free-form tasks, whose labels are not a fixed set)."""
    if not records or any(not r.get("choices") for r in records):
        return None
    return max(Counter(r["label"] for r in records).values()) / len(records)


def beats_chance(row: dict, chance: float | None) -> bool:
    """The row's 95% interval lies above ``chance``; with one seed (no interval) its mean is 2 points above."""
    if chance is None:
        return True
    if row["n_seeds"] > 1 and not math.isnan(row["ci95_low"]):
        return row["ci95_low"] > chance
    return row["test_accuracy_mean"] > chance + 0.02


def matching_fraction(rows: list[dict], reference: str = "standard-finetune",
                      chance: float | None = None) -> dict[str, float | None]:
    """Per step-by-step method: the smallest fraction whose mean test accuracy reaches the mean of ``reference``
    at its largest fraction (None when no fraction does; absent when either method was not run). Nothing at all
    (``{}``) when that reference does not beat ``chance``: matching a model that learned nothing says nothing."""
    ref_rows = [r for r in rows if r["method"] == reference]
    if not ref_rows:
        return {}
    top = max(ref_rows, key=lambda r: r["fraction"])
    if not beats_chance(top, chance):
        return {}
    target = top["test_accuracy_mean"]
    found: dict[str, float | None] = {}
    for method in ("step-by-step-gold", "step-by-step-teacher"):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
        if mine:
            found[method] = next((r["fraction"] for r in mine if r["test_accuracy_mean"] >= target), None)
    return found


# -- report ----------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("method", "fraction", "percent", "count", "n_seeds", "seeds", "test_accuracy_mean",
               "test_accuracy_std", "ci95_half_width", "ci95_low", "ci95_high", "valid_accuracy_mean", "wall_s_total")


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def markdown_table(rows: list[dict]) -> str:
    """Fractions down, methods across; cells are mean test accuracy ± 95% CI half-width (in %) over seeds."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fractions = sorted({r["fraction"] for r in rows})
    cell = {(r["method"], r["fraction"]): r for r in rows}
    lines = ["| % of full train | examples | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    for fraction in fractions:
        count = next(r["count"] for r in rows if r["fraction"] == fraction)
        values = []
        for method in methods:
            row = cell.get((method, fraction))
            if row is None:
                values.append("-")
            elif math.isnan(row["ci95_half_width"]):
                values.append(f"{row['test_accuracy_mean'] * 100:.2f} (n={row['n_seeds']})")
            else:
                values.append(f"{row['test_accuracy_mean'] * 100:.2f} ± {row['ci95_half_width'] * 100:.2f} "
                              f"(n={row['n_seeds']})")
        count_text = f"{count:,}" if isinstance(count, int) else str(count)
        lines.append(f"| {_pct(fraction)} | {count_text} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], methods: tuple[str, ...], teacher_acc: float | None, path: Path,
                title: str) -> dict:
    """Test accuracy (%) against % of the full training set, shaded 95% CI, teacher as a horizontal line.

    Returns the plotted series (read back from the figure), which is also stored in the PNG's text metadata
    under ``stepdistill:series`` so that a report's numbers can be checked against its plots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.6), dpi=120, layout="constrained")
    series: dict[str, Any] = {"methods": {}, "teacher_accuracy": None}
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
        if not mine:
            continue
        x = [r["percent"] for r in mine]
        y = [r["test_accuracy_mean"] * 100 for r in mine]
        low = [r["ci95_low"] * 100 for r in mine]
        high = [r["ci95_high"] * 100 for r in mine]
        (line,) = ax.plot(x, y, marker="o", color=METHOD_COLORS[method], label=METHOD_TITLES[method])
        # drawn within 0-100%: with 2 seeds a t-interval can span far beyond it and flatten every curve
        bounded_low, bounded_high = [max(v, 0.0) for v in low], [min(v, 100.0) for v in high]
        if len(x) > 1:
            ax.fill_between(x, bounded_low, bounded_high, color=METHOD_COLORS[method], alpha=0.2, linewidth=0)
        else:  # a band needs two fractions; one fraction (cpu-pretrained e-SNLI) gets an error bar
            ax.errorbar(x, y, yerr=[[y[0] - bounded_low[0]], [bounded_high[0] - y[0]]], fmt="none",
                        ecolor=METHOD_COLORS[method], capsize=4, alpha=0.6)
        series["methods"][method] = {"percent": [float(v) for v in line.get_xdata()],
                                     "accuracy": [float(v) for v in line.get_ydata()],
                                     "ci_low": low, "ci_high": high}
    if teacher_acc is not None and not math.isnan(teacher_acc):
        line = ax.axhline(teacher_acc * 100, color="gray", linestyle="--", label="Teacher (few-shot CoT)")
        series["teacher_accuracy"] = float(line.get_ydata()[0])
    percents = sorted({r["percent"] for r in rows if r["method"] in methods})
    if len(percents) > 1 and percents[-1] / percents[0] > 20:
        ax.set_xscale("log")
    ax.set_xticks(percents, [f"{p:.4g}" for p in percents])
    ax.set_xlabel("% of full training set")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncol=2)  # below the axes: inside, it hid points
    fig.savefig(path, metadata={"stepdistill:series": json.dumps(series)})
    plt.close(fig)
    return series


def write_report(task: str | Task, preset: Preset, out_dir: str | os.PathLike,
                 splits: dict[str, list[dict]] | None = None, sweep_wall_s: float | None = None) -> dict:
    """Aggregate ``out_dir/runs/*/*/*/results.json`` into summary.csv, summary.md, curve_*.png and report.json."""
    task = get_task(task)
    preset = preset.for_task(task)
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    if not results:
        raise ValueError(f"{out_dir}/runs: no finished runs to report on")
    rows = aggregate(results)
    info: dict[str, Any] = {
        "task": task.name, "preset": asdict(preset), "runs_finished": len(results),
        "full_split_sizes": dict(task.full_split_sizes),
        "sum_of_run_wall_s": round(sum(float(r.get("sweep_wall_s", 0.0)) for r in results), 1),
        "sweep_wall_s_this_invocation": sweep_wall_s,
        "chance_test_accuracy": None,  # set below when the splits are given
        "convergence": convergence(results),
        "reference_accuracy": None,
    }
    ref = [r for r in rows if r["method"] == "standard-finetune"]
    if ref:
        top = max(ref, key=lambda r: r["fraction"])
        info["reference_accuracy"] = {"fraction": top["fraction"], "test_accuracy_mean": top["test_accuracy_mean"]}
    teacher_acc = None
    if splits is not None:
        _, valid, test = eval_splits(splits, preset)
        teacher_acc = teacher_accuracy(task, test)
        info["chance_test_accuracy"] = majority_rate(test)
        info.update(local_split_sizes={name: len(records) for name, records in splits.items()},
                    eval_sizes={"valid": len(valid), "test": len(test)},
                    teacher_test_accuracy=teacher_acc,
                    teacher_test_accuracy_full_split=teacher_accuracy(task, splits["test"]))
    info["matching_fraction"] = matching_fraction(rows, chance=info["chance_test_accuracy"])
    if ref and info["chance_test_accuracy"] is not None:
        info["reference_accuracy"]["beats_chance"] = beats_chance(top, info["chance_test_accuracy"])
    write_csv(rows, out_dir / "summary.csv")
    plots = {}
    model = results[0].get("model", preset.model)
    for name, methods in PLOTS.items():
        if any(r["method"] in methods for r in rows):
            path = out_dir / f"curve_{name}.png"
            plots[name] = plot_curves(rows, methods, teacher_acc, path, f"{task.name}: {model}, {preset.name} preset")
    info["plots"] = {name: f"curve_{name}.png" for name in plots}
    from .student.warmstart import exposure_note  # light: no torch import

    info["pretraining_exposure"] = exposure_note(model, task.name)
    (out_dir / "summary.md").write_text(_summary_markdown(task, preset, rows, info))
    _write_json_atomic(out_dir / "report.json", {**info, "rows": rows, "plot_series": plots})
    return {"rows": rows, "info": info, "plots": plots}


def _convergence_fact(method: str, entry: dict) -> str:
    judged = entry["runs"] - entry["unknown"]
    if not judged:
        return f"Convergence, {METHOD_TITLES[method]}: unknown (its runs logged too few evaluations)."
    text = (f"Convergence, {METHOD_TITLES[method]}: valid accuracy still improving over the last third of training "
            f"in {entry['still_improving']}/{judged} runs (mean gain there {entry['mean_late_gain'] * 100:+.2f} "
            f"points); best at the last evaluation in {entry['best_at_last_eval']}/{judged}")
    if entry["unknown"]:
        text += f"; {entry['unknown']} run(s) with too few evaluations to tell"
    if entry["still_improving"] * 2 > judged:
        return text + ". Most runs were cut short: more steps could change the comparison."
    return text + "."


def _summary_markdown(task: Task, preset: Preset, rows: list[dict], info: dict) -> str:
    full = task.full_split_sizes.get("train")
    local = info.get("local_split_sizes", {})
    lines = [f"# Data efficiency: {task.name}, preset `{preset.name}`", ""]
    lines.append(f"Test accuracy (%) of `{preset.model}` students, mean ± 95% confidence interval (Student t) "
                 f"over seeds {', '.join(map(str, preset.seeds))}; each seed sets the training seed and the "
                 "training subset. Models are selected on valid and reported on test.")
    lines.append("")
    lines.append(markdown_table(rows))
    facts = []
    if full:
        facts.append(f"Fractions are relative to the full public training split ({full:,} examples), as in the "
                     "paper, not to the examples available locally.")
    if local:
        facts.append("Examples available locally: " + ", ".join(f"{k} {v:,}" for k, v in local.items()) + ".")
    if "eval_sizes" in info:
        sizes = info["eval_sizes"]
        subsampled = [f"{name} {sizes[name]:,} of {local[name]:,}" for name in ("valid", "test")
                      if sizes[name] < local.get(name, 0)]
        if subsampled:
            facts.append("Evaluation sets subsampled (fixed across runs) to keep the preset's time budget: "
                         + ", ".join(subsampled) + ".")
    if info.get("teacher_test_accuracy") is not None:
        facts.append(f"Teacher few-shot accuracy on the evaluated test examples: "
                     f"{info['teacher_test_accuracy'] * 100:.2f}% (full local test split: "
                     f"{info['teacher_test_accuracy_full_split'] * 100:.2f}%), from the teacher labels in the data; "
                     "an unparseable teacher output counts as wrong.")
    ref = info.get("reference_accuracy")
    chance = info.get("chance_test_accuracy")
    if chance is not None:
        facts.append(f"Chance level: always answering the most frequent label scores {chance * 100:.2f}% on the "
                     "evaluated test examples.")
    if ref is not None and ref.get("beats_chance") is False:
        facts.append(f"No matching fraction: standard finetuning at {_pct(ref['fraction'])} "
                     f"({ref['test_accuracy_mean'] * 100:.2f}%) does not beat the chance level (its 95% interval, or "
                     "with one seed its mean minus 2 points, is not above it), so matching it would say nothing.")
    for method, fraction in info["matching_fraction"].items():
        if ref is None:
            continue
        target = f"standard finetuning at {_pct(ref['fraction'])} ({ref['test_accuracy_mean'] * 100:.2f}%)"
        facts.append(f"{METHOD_TITLES[method]} matches {target} "
                     + (f"from {_pct(fraction)} of the training set." if fraction is not None
                        else "at none of the fractions run."))
    if info.get("pretraining_exposure"):
        facts.insert(0, f"**Pre-training exposure:** {info['pretraining_exposure']}")
    facts += [_convergence_fact(method, entry) for method, entry in info.get("convergence", {}).items()]
    facts.append(f"Runs finished: {info['runs_finished']}; sum of run wall times {info['sum_of_run_wall_s']:,.0f} s"
                 + (f"; this invocation {info['sweep_wall_s_this_invocation']:,.0f} s."
                    if info.get("sweep_wall_s_this_invocation") is not None else "."))
    lines += [f"- {fact}" for fact in facts]
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in info["plots"].values()) + ". Per-run results: `runs/`.", ""]
    return "\n".join(lines)


# -- command -----------------------------------------------------------------------------------------------------------

def curve_command(task: str, preset: str = "cpu", data_dir: str | None = None, out_dir: str | None = None,
          source: str = "local", methods: list[str] | None = None, seeds: list[int] | None = None,
          fractions: list[float] | None = None, max_steps: int | None = None, workers: int = 1,
          report_only: bool = False) -> None:
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
    """
    from .data import load_task_data

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
                          sweep_wall_s=None if report_only else round(time.perf_counter() - started, 1))
    print((out / "summary.md").read_text())
    print(f"report: {out}  ({len(report['rows'])} rows; {', '.join(report['info']['plots'].values())})")
