"""Sweeps, resume, aggregation and reports of stepdistill.experiments.

The end-to-end tests build a small e-SNLI-shaped data folder of their own (no ../shared/data needed) and train the
tiny T5 for real through the smoke preset, once, in a subprocess that is SIGKILLed after its first finished run and
then resumed.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from sweep_workers import alive

from stepdistill.experiments import (
    METHODS, PRESETS, RunSpec, aggregate, check_fractions, get_preset, load_results, markdown_table,
    majority_rate, matching_fraction, plan_runs, plot_curves, run_sweep, t_quantile, teacher_accuracy,
    write_report,
)
from stepdistill.tasks import get_task

REPO_ROOT = Path(__file__).resolve().parents[1]
T975_DF1 = math.tan(math.pi * 0.475)  # closed form of the t quantile for 1 degree of freedom
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # closed form for 2 degrees of freedom


# -- a small e-SNLI-shaped data folder ---------------------------------------------------------------------------

SUBJECTS = ["a man", "a woman", "a dog", "two kids", "the chef", "an old lady", "a boy", "the band"]
PLACES = ["in a park", "on a beach", "in the kitchen", "on a stage", "at the market", "near a river"]
ACTIONS = ["is running", "is eating", "is sleeping", "is singing", "is reading", "is dancing"]
NLI_LABELS = ("entailment", "neutral", "contradiction")


def _example(rng: random.Random, example_id: int) -> dict:
    subject, place, action = rng.choice(SUBJECTS), rng.choice(PLACES), rng.choice(ACTIONS)
    label = NLI_LABELS[example_id % 3]
    premise = f"{subject.capitalize()} {action} {place}."
    if label == "entailment":
        hypothesis = f"{subject.capitalize()} {action}."
    elif label == "neutral":
        hypothesis = f"{subject.capitalize()} {action} with a friend."
    else:
        other = rng.choice([a for a in ACTIONS if a != action])
        hypothesis = f"{subject.capitalize()} {other} {place}."
    return {"id": example_id, "premise": premise, "hypothesis": hypothesis, "label": label}


def _teacher_output(example: dict, wrong: bool, broken: bool) -> str:
    if broken:
        return "I am not sure what to say here."  # no "Answer:": unparseable
    label = NLI_LABELS[(NLI_LABELS.index(example["label"]) + 1) % 3] if wrong else example["label"]
    rationale = f"The premise says {example['premise'].lower().rstrip('.')}, so the hypothesis is {label}."
    return f"{rationale}\nAnswer: {label}\nPremise: {example['premise']}"


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def make_esnli_folder(root: Path, n_train: int = 120, n_valid: int = 16, n_test: int = 16) -> Path:
    """train/valid/test plus teacher outputs; on test, ids 0-2 get a wrong teacher label and id 3 an unparseable one."""
    rng = random.Random(7)
    folder = root / "esnli"
    folder.mkdir(parents=True)
    for split, size in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        examples = [_example(rng, i) for i in range(size)]
        outputs = [{"id": e["id"], "output": _teacher_output(e, wrong=e["id"] in (0, 1, 2) or e["id"] % 5 == 4,
                                                             broken=e["id"] == 3)} for e in examples]
        _write_jsonl_gz(folder / f"{split}.jsonl.gz", examples)
        _write_jsonl_gz(folder / f"palm_{split}.jsonl.gz", outputs)
    return root


def expected_teacher_test_accuracy(n_test: int = 16) -> float:
    wrong = {i for i in range(n_test) if i in (0, 1, 2, 3) or i % 5 == 4}
    return (n_test - len(wrong)) / n_test


# -- aggregation with known numbers ------------------------------------------------------------------------------

def _result(method: str, fraction: float, seed: int, test: float, valid: float = 0.5, count: int = 10) -> dict:
    trainer_method, label_source = METHODS[method]
    return {"method": trainer_method, "label_source": label_source, "fraction": fraction, "seed": seed,
            "count": count, "test_accuracy": test, "valid_accuracy": valid, "sweep_wall_s": 2.0}


def test_t_quantile_matches_closed_forms_and_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736174696, rel=1e-10)
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729749462, rel=1e-10)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451051977987, rel=1e-10)
    assert t_quantile(0.025, 2) == pytest.approx(-4.302652729749462, rel=1e-10)
    assert t_quantile(0.5, 3) == 0.0


def test_aggregate_known_numbers():
    results = [
        _result("standard-finetune", 0.01, 0, 0.60), _result("standard-finetune", 0.01, 1, 0.70),
        _result("standard-finetune", 0.01, 2, 0.80),
        _result("step-by-step-gold", 0.01, 0, 0.50, count=10), _result("step-by-step-gold", 0.01, 1, 0.70),
        _result("step-by-step-gold", 0.001, 0, 0.40, count=1),  # a single seed: no interval
    ]
    rows = {(r["method"], r["fraction"]): r for r in aggregate(results)}
    three = rows[("standard-finetune", 0.01)]
    assert three["n_seeds"] == 3 and three["seeds"] == "0 1 2"
    assert three["test_accuracy_mean"] == pytest.approx(0.70, abs=1e-12)
    assert three["test_accuracy_std"] == pytest.approx(0.10, abs=1e-12)
    assert three["ci95_half_width"] == pytest.approx(T975_DF2 * 0.10 / math.sqrt(3), rel=1e-9)  # 0.248414...
    assert three["ci95_half_width"] == pytest.approx(0.2484138, abs=1e-7)
    assert three["ci95_low"] == pytest.approx(0.70 - 0.2484138, abs=1e-7)
    assert three["ci95_high"] == pytest.approx(0.70 + 0.2484138, abs=1e-7)
    assert three["wall_s_total"] == 6.0
    two = rows[("step-by-step-gold", 0.01)]
    assert two["test_accuracy_mean"] == pytest.approx(0.60)
    # std of (0.5, 0.7) is 0.1 * sqrt(2), so the half width is t(0.975, 1) * 0.1
    assert two["ci95_half_width"] == pytest.approx(T975_DF1 * 0.1, rel=1e-9)
    one = rows[("step-by-step-gold", 0.001)]
    assert one["n_seeds"] == 1 and math.isnan(one["ci95_half_width"]) and one["count"] == 1
    # methods come in the fixed order of METHODS, fractions ascending
    assert [(r["method"], r["fraction"]) for r in aggregate(results)] == [
        ("standard-finetune", 0.01), ("step-by-step-gold", 0.001), ("step-by-step-gold", 0.01)]
    table = markdown_table(aggregate(results))
    assert "| 1% | 10 | 70.00 ± 24.84 (n=3) | 60.00 ± 127.06 (n=2) |" in table
    assert "| 0.1% | 1 | - | 40.00 (n=1) |" in table


def test_plot_draws_the_interval_as_a_band_or_with_one_fraction_an_error_bar(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    original_band, original_bar = Axes.fill_between, Axes.errorbar
    monkeypatch.setattr(Axes, "fill_between", lambda ax, x, low, high, **kw: (
        drawn.append(("band", list(x), list(low), list(high))), original_band(ax, x, low, high, **kw))[1])
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, yerr=None, **kw: (
        drawn.append(("bar", list(x), [round(v, 6) for v in y], [[round(v, 6) for v in side] for side in yerr])),
        original_bar(ax, x, y, yerr=yerr, **kw))[1])
    results = [_result("standard-finetune", f, s, a) for f, s, a in
               [(0.01, 0, 0.60), (0.01, 1, 0.70), (0.01, 2, 0.80), (0.02, 0, 0.70), (0.02, 1, 0.80)]]
    results += [_result("step-by-step-gold", 0.01, s, a) for s, a in [(0, 0.50), (1, 0.60), (2, 0.70)]]
    rows = aggregate(results)
    half = 100 * T975_DF2 * 0.10 / math.sqrt(3)  # 24.84...: three seeds, std 0.1
    plot_curves(rows, ("standard-finetune", "step-by-step-gold"), None, tmp_path / "curve.png", "t")
    assert [d[0] for d in drawn] == ["band", "bar"]
    assert drawn[0][1] == [1.0, 2.0]
    assert drawn[0][2][0] == pytest.approx(70 - half) and drawn[0][3][1] == 100.0  # capped at 100%
    assert drawn[1][1] == [1.0] and drawn[1][2] == [60.0]
    assert drawn[1][3] == [[pytest.approx(half, abs=1e-5)], [pytest.approx(half, abs=1e-5)]]
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_matching_fraction():
    results = [_result("standard-finetune", f, 0, acc) for f, acc in ((0.1, 0.5), (0.5, 0.7), (1.0, 0.8))]
    results += [_result("step-by-step-gold", f, 0, acc) for f, acc in ((0.1, 0.6), (0.5, 0.8), (1.0, 0.9))]
    results += [_result("step-by-step-teacher", f, 0, acc) for f, acc in ((0.1, 0.6), (0.5, 0.7), (1.0, 0.79))]
    assert matching_fraction(aggregate(results)) == {"step-by-step-gold": 0.5, "step-by-step-teacher": None}
    assert matching_fraction(aggregate(results[3:])) == {}  # no standard finetuning run: nothing to match
    # a reference at chance level: matching it says nothing, so no fraction is reported
    assert matching_fraction(aggregate(results), chance=0.79) == {}
    assert matching_fraction(aggregate(results), chance=0.77) == {"step-by-step-gold": 0.5, "step-by-step-teacher": None}
    # with seeds, the reference's 95% interval must lie above chance
    seeds = [_result("standard-finetune", 1.0, seed, acc) for seed, acc in enumerate((0.40, 0.36, 0.38))]
    seeds += [_result("step-by-step-gold", 0.1, seed, 0.40) for seed in range(3)]
    assert aggregate(seeds)[0]["ci95_low"] < 0.35 < aggregate(seeds)[0]["test_accuracy_mean"]
    assert matching_fraction(aggregate(seeds), chance=0.35) == {}
    assert matching_fraction(aggregate(seeds), chance=0.33) == {"step-by-step-gold": 0.1}


def test_majority_rate_is_the_most_frequent_gold_label_share():
    records = [{"label": label, "choices": ["a", "b", "c"]} for label in "aabca"]
    assert majority_rate(records) == 0.6
    assert majority_rate([{"label": "3", "choices": None}]) is None  # free-form: no fixed label set


def test_teacher_accuracy_counts_unparseable_as_wrong(tmp_path):
    from stepdistill.data import load_task_data

    data = load_task_data("esnli", data_dir=make_esnli_folder(tmp_path))
    assert teacher_accuracy(get_task("esnli"), data.splits["test"]) == expected_teacher_test_accuracy() == 9 / 16  # ids 0-4, 9, 14 wrong


# -- presets and planning -----------------------------------------------------------------------------------------

def test_preset_json_overrides_base_and_rejects_unknown_fields(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "cpu", "seeds": [5], "fractions": {"esnli": [0.002]}, "max_steps": 7}))
    preset = get_preset(str(path))
    assert (preset.name, preset.seeds, preset.max_steps, preset.model) == ("mine", (5,), 7, "tiny")
    assert preset.fractions_for(get_task("esnli")) == (0.002,)
    path.write_text(json.dumps({"base": "cpu", "max_step": 7}))
    with pytest.raises(ValueError, match=r"mine\.json: unknown preset field\(s\) max_step"):
        get_preset(str(path))
    path.write_text('{"base": "cpu",\n "seeds": [1,]}')
    with pytest.raises(ValueError, match=r"mine\.json: line 2: invalid JSON"):
        get_preset(str(path))
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        get_preset("gpu")


def test_cpu_preset_fractions_fit_the_shared_data_sizes():
    esnli, anli = get_task("esnli"), get_task("anli1")
    # local train sizes of ../shared/data (README there): 14,949 and 1,000
    assert check_fractions(PRESETS["cpu"], esnli, 14_949) == {0.001: 549, 0.005: 2747, 0.01: 5494, 0.025: 13734}
    assert check_fractions(PRESETS["cpu"], anli, 1_000) == {0.01: 169, 0.025: 424, 0.05: 847, 0.059: 1000}
    with pytest.raises(ValueError, match=r"anli1.*0\.059 \(5\.9% of 16,946 = 1,000\).*the 999 that exist locally"):
        check_fractions(PRESETS["cpu"], anli, 999)
    plan = plan_runs(PRESETS["cpu"], esnli)
    assert len(plan) == 4 * 4 * 3 and len({spec.key for spec in plan}) == 48
    assert plan[0] == RunSpec("standard-finetune", 0.001, 0) and plan[-1] == RunSpec("step-by-step-teacher", 0.025, 2)


# -- sweep bookkeeping with a fake trainer (crash by exception, resume) -------------------------------------------

def test_sweep_crash_leaves_partial_and_resume_reruns_only_unfinished(tmp_path):
    from stepdistill.data import load_task_data

    data = load_task_data("esnli", data_dir=make_esnli_folder(tmp_path / "data"))
    calls: list[str] = []

    def fake_train(task, train, valid, test, config, run_dir, extra=None):
        calls.append(extra["run_key"])
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "model").mkdir()
        if len(calls) == 3 and crash:
            raise RuntimeError("boom")
        accuracy = len(train) / 1000 + config.seed / 100
        (Path(run_dir) / "results.json").write_text(json.dumps({
            "method": config.method, "label_source": config.label_source, "seed": config.seed,
            "test_accuracy": accuracy, "valid_accuracy": accuracy, **(extra or {})}))

    preset = PRESETS["smoke"]
    out = tmp_path / "out"
    crash = True
    with pytest.raises(RuntimeError, match="boom"):
        run_sweep("esnli", data.splits, preset, out, train_fn=fake_train, echo=lambda _: None)
    keys = [spec.key for spec in plan_runs(preset, get_task("esnli"))]
    assert calls == keys[:3]
    assert (out / "runs" / (keys[2] + ".partial")).is_dir()
    assert len(load_results(out)) == 2
    crash = False
    results = run_sweep("esnli", data.splits, preset, out, train_fn=fake_train, echo=lambda _: None)
    assert calls == keys[:3] + keys[2:]  # the two finished runs were not redone
    assert len(results) == len(keys) == 8
    assert not list((out / "runs").glob("*/*/*.partial")) and not list((out / "runs").glob("*/*/*/model"))
    by_key = {r["run_key"]: r for r in results}
    first = by_key[keys[0]]
    assert (first["count"], first["fraction"], first["data_seed"], first["valid_size"]) == (55, 0.0001, 0, 16)
    assert first["test_accuracy"] == 0.055
    log = (out / "sweep.log").read_text().splitlines()
    assert [line.split("\t")[1] for line in log if line.startswith("done")] == keys


def test_parallel_sweep_runs_each_run_once_and_finishes_the_others_after_a_failure(tmp_path, monkeypatch):
    from stepdistill.data import load_task_data

    from sweep_workers import fake_train

    data = load_task_data("esnli", data_dir=make_esnli_folder(tmp_path / "data"))
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("FAKE_TRAIN_DIR", str(markers))
    keys = [spec.key for spec in plan_runs(PRESETS["smoke"], get_task("esnli"))]
    monkeypatch.setenv("FAKE_TRAIN_FAIL", keys[3])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom in " + keys[3]):
        run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train, echo=lambda _: None, workers=2)
    # in flight when the failure came: finished and kept; not started yet: left for the resume
    finished = {r["run_key"] for r in load_results(out)}
    assert keys[3] not in finished and set(keys[:3]) <= finished and len(finished) <= 5
    assert (out / "runs" / (keys[3] + ".partial")).is_dir()
    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    results = run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train, echo=lambda _: None,
                        workers=2)
    assert sorted(r["run_key"] for r in results) == sorted(keys)
    trained = sorted(name.split("-", 1)[1] for name in os.listdir(markers))
    assert trained == sorted([k.replace("/", "_") for k in keys] + [keys[3].replace("/", "_")])  # only the failed one twice
    assert len({r["worker_pid"] for r in results} | {os.getpid()}) >= 3  # two worker processes, not this one
    log = (out / "sweep.log").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in log if line.startswith("done")) == sorted(keys)
    # the same numbers as a one-process sweep
    serial = run_sweep("esnli", data.splits, PRESETS["smoke"], tmp_path / "serial", train_fn=fake_train,
                       echo=lambda _: None)
    assert {r["run_key"]: r["test_accuracy"] for r in serial} == {r["run_key"]: r["test_accuracy"] for r in results}


def test_killing_a_parallel_sweep_kills_its_workers(tmp_path):
    data_dir = make_esnli_folder(tmp_path / "data")
    markers = tmp_path / "markers"
    markers.mkdir()
    code = ("import sys; sys.path.insert(0, {tests!r}); from sweep_workers import fake_train; "
            "from stepdistill.data import load_task_data; from stepdistill.experiments import PRESETS, run_sweep; "
            "run_sweep('esnli', load_task_data('esnli', data_dir={data!r}).splits, PRESETS['smoke'], {out!r}, "
            "train_fn=fake_train, workers=2)").format(tests=str(REPO_ROOT / "tests"), data=str(data_dir),
                                                       out=str(tmp_path / "out"))
    sweep = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env={**os.environ, "FAKE_TRAIN_DIR": str(markers), "FAKE_TRAIN_SLEEP": "120"})
    deadline = time.monotonic() + 120
    while len(os.listdir(markers)) < 2:
        assert time.monotonic() < deadline and sweep.poll() is None, "the workers did not start"
        time.sleep(0.05)
    workers = {int(name.split("-")[0]) for name in os.listdir(markers)}
    assert len(workers) == 2 and sweep.pid not in workers
    sweep.kill()  # the sweep process only, not its process group
    sweep.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:  # leave nothing running behind a failed test
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "a worker outlived the killed sweep"



def test_second_sweep_in_the_same_folder_is_refused(tmp_path):
    import fcntl

    from stepdistill.data import load_task_data

    data = load_task_data("esnli", data_dir=make_esnli_folder(tmp_path / "data"))
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "sweep.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        with pytest.raises(RuntimeError, match="another sweep is running in this folder"):
            run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=lambda *a, **k: None, echo=lambda _: None)
    assert not (out / "runs").exists()


def test_sweep_lock_is_removed_when_the_sweep_ends_also_by_an_error(tmp_path):
    from stepdistill.data import load_task_data

    data = load_task_data("esnli", data_dir=make_esnli_folder(tmp_path / "data"))
    out = tmp_path / "out"
    seen = []

    def fake_train(task, train, valid, test, config, run_dir, extra=None):
        seen.append((out / "sweep.lock").exists())  # held while the sweep runs
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train, echo=lambda _: None)
    assert seen == [True]
    assert not (out / "sweep.lock").exists()
    (out / "sweep.lock").write_text("")  # left by a SIGKILLed sweep: unlocked, so the next sweep takes it over
    with pytest.raises(RuntimeError, match="training failed"):
        run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train, echo=lambda _: None)
    assert not (out / "sweep.lock").exists()


def test_cpu_preset_task_overrides():
    esnli, anli = PRESETS["cpu"].for_task(get_task("esnli")), PRESETS["cpu"].for_task(get_task("anli1"))
    assert (esnli.max_steps, esnli.batch_size, esnli.eval_steps) == (120, 16, 40)
    assert (anli.max_steps, anli.batch_size, anli.eval_steps) == (90, 8, 30)
    assert esnli.max_input_length == anli.max_input_length == 256  # ANLI inputs average 184 tokens


# -- the real thing: smoke preset through the CLI, SIGKILLed after its first finished run, then resumed ----------

SWEEP_CMD = [sys.executable, "-m", "stepdistill.cli", "curve", "--task", "esnli", "--preset", "smoke"]


def _log_lines(out: Path, kind: str) -> list[list[str]]:
    path = out / "sweep.log"
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.startswith(kind + "\t")]


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data_dir = make_esnli_folder(root / "data")
    out = root / "out"
    command = SWEEP_CMD + ["--data-dir", str(data_dir), "--out-dir", str(out)]
    with open(root / "first.log", "w") as first_log:
        first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=first_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while not _log_lines(out, "done"):
            if first.poll() is not None:
                pytest.fail(f"the sweep ended (rc {first.returncode}) before it could be killed:\n"
                            + (root / "first.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                os.killpg(first.pid, signal.SIGKILL)
                pytest.fail("no run finished within 300 s")
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the sweep's own process group (start_new_session), nothing else
        first.wait()
    assert first.returncode == -signal.SIGKILL
    finished_before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/results.json")}
    # the resume trains the rest two at a time: the real trainer in worker processes
    second = subprocess.run(command + ["--workers", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"out": out, "data_dir": data_dir, "first_pid": first.pid,
            "finished_before": finished_before, "stdout": second.stdout}


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_a_run(resumed_sweep):
    out, first_pid = resumed_sweep["out"], str(resumed_sweep["first_pid"])
    keys = [spec.key for spec in plan_runs(PRESETS["smoke"], get_task("esnli"))]
    starts, dones = _log_lines(out, "start"), _log_lines(out, "done")
    assert sorted(key for _, key, *_ in dones) == sorted(keys)  # every run finished exactly once
    done_by_first = [key for _, key, pid, *_ in dones if pid == first_pid]
    assert done_by_first and done_by_first == keys[:len(done_by_first)]
    started_by_first = [key for _, key, pid, *_ in starts if pid == first_pid]
    assert started_by_first[:len(done_by_first)] == done_by_first and len(started_by_first) <= len(done_by_first) + 1
    started_later = [key for _, key, pid, *_ in starts if pid != first_pid]
    assert sorted(started_later) == sorted(set(keys) - set(done_by_first))  # nothing finished was started again
    assert len({pid for _, _, pid, *_ in starts}) == 2
    # the runs finished before the kill were left untouched by the resumed sweep
    assert resumed_sweep["finished_before"]
    for path, mtime in resumed_sweep["finished_before"].items():
        assert path.stat().st_mtime_ns == mtime
    assert not list((out / "runs").glob("*/*/*.partial"))
    assert "8 runs, " + str(len(done_by_first)) + " already finished" in resumed_sweep["stdout"]
    assert ", 2 at a time" in resumed_sweep["stdout"]


def _independent_aggregate(out: Path) -> dict[tuple[str, float], dict]:
    """Mean and 95% t-interval per (method, fraction), recomputed from the result files without the package."""
    names = {("standard", "gold"): "standard-finetune", ("step-by-step", "teacher"): "step-by-step-teacher"}
    groups: dict[tuple[str, float], list[dict]] = {}
    for path in (out / "runs").glob("*/*/*/results.json"):
        result = json.loads(path.read_text())
        groups.setdefault((names[(result["method"], result["label_source"])], result["fraction"]), []).append(result)
    expected = {}
    for key, runs in groups.items():
        accuracies = [r["test_accuracy"] for r in runs]
        mean = sum(accuracies) / len(accuracies)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1))
        half = T975_DF1 * std / math.sqrt(len(accuracies))  # smoke preset: 2 seeds
        expected[key] = {"mean": mean, "half": half, "n": len(runs), "count": {r["count"] for r in runs},
                         "valid": sum(r["valid_accuracy"] for r in runs) / len(runs)}
    return expected


@pytest.mark.slow
def test_smoke_report_equals_aggregation_of_run_files(resumed_sweep):
    out = resumed_sweep["out"]
    expected = _independent_aggregate(out)
    assert set(expected) == {(m, f) for m in ("standard-finetune", "step-by-step-teacher") for f in (0.0001, 0.0002)}
    for key, value in expected.items():
        assert value["n"] == 2 and value["count"] == {55 if key[1] == 0.0001 else 110}
    for path in (out / "runs").glob("*/*/*/results.json"):  # real training happened
        result = json.loads(path.read_text())
        assert result["steps"] == 4 and math.isfinite(result["train_loss"]) and result["test_count"] == 16
        assert len((path.parent / "predictions_test.jsonl").read_text().splitlines()) == 16
        assert not (path.parent / "model").exists()  # removed by the sweep (keep_models false)

    # CSV
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        value = expected[(row["method"], float(row["fraction"]))]
        assert float(row["test_accuracy_mean"]) == pytest.approx(value["mean"], abs=1e-12)
        assert float(row["ci95_half_width"]) == pytest.approx(value["half"], abs=1e-12)
        assert float(row["ci95_low"]) == pytest.approx(value["mean"] - value["half"], abs=1e-12)
        assert float(row["valid_accuracy_mean"]) == pytest.approx(value["valid"], abs=1e-12)
        assert int(row["n_seeds"]) == 2 and {int(row["count"])} == value["count"]

    # markdown table
    summary = (out / "summary.md").read_text()
    for fraction, percent, count in ((0.0001, "0.01%", "55"), (0.0002, "0.02%", "110")):
        cells = [f"{expected[(m, fraction)]['mean'] * 100:.2f} ± {expected[(m, fraction)]['half'] * 100:.2f} (n=2)"
                 for m in ("standard-finetune", "step-by-step-teacher")]
        assert f"| {percent} | {count} | {cells[0]} | {cells[1]} |" in summary
    assert "full public training split (549,367 examples)" in summary
    assert "Examples available locally: train 120, valid 16, test 16." in summary
    assert "Teacher few-shot accuracy on the evaluated test examples: 56.25%" in summary

    # plots: the series stored in each PNG are the aggregated means and intervals, teacher line at 9/16
    plotted = {"finetune": ["standard-finetune"], "distill": ["step-by-step-teacher"],
               "all": ["standard-finetune", "step-by-step-teacher"]}
    for name, methods in plotted.items():
        image = Image.open(out / f"curve_{name}.png")
        assert image.size[0] > 300
        series = json.loads(image.text["stepdistill:series"])
        assert sorted(series["methods"]) == sorted(methods)
        assert series["teacher_accuracy"] == pytest.approx(expected_teacher_test_accuracy() * 100)
        for method in methods:
            line = series["methods"][method]
            assert line["percent"] == pytest.approx([0.01, 0.02])
            means = [expected[(method, f)]["mean"] * 100 for f in (0.0001, 0.0002)]
            halves = [expected[(method, f)]["half"] * 100 for f in (0.0001, 0.0002)]
            assert line["accuracy"] == pytest.approx(means, abs=1e-9)
            assert line["ci_low"] == pytest.approx([m - h for m, h in zip(means, halves)], abs=1e-9)
            assert line["ci_high"] == pytest.approx([m + h for m, h in zip(means, halves)], abs=1e-9)

    report = json.loads((out / "report.json").read_text())
    assert report["local_split_sizes"] == {"train": 120, "valid": 16, "test": 16}
    assert report["runs_finished"] == 8


@pytest.mark.slow
def test_report_only_rebuilds_the_same_report(resumed_sweep, capsys):
    from stepdistill.experiments import curve_command
    from stepdistill.options import DataOptions

    out = resumed_sweep["out"]
    before = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    curve_command(DataOptions(task="esnli", data_dir=str(resumed_sweep["data_dir"])), preset="smoke", out_dir=str(out),
                  report_only=True)
    assert (out / "summary.csv").read_text() == before
    assert "Runs finished: 8" in capsys.readouterr().out


@pytest.mark.shared_data
def test_cpu_preset_fits_the_shared_data(shared_data_dir):
    from stepdistill.data import load_task_data

    for task, local in (("esnli", 14_949), ("anli1", 1_000)):
        data = load_task_data(task, data_dir=shared_data_dir, splits=("train",))
        assert len(data.splits["train"]) == local
        counts = check_fractions(PRESETS["cpu"], get_task(task), len(data.splits["train"]))
        assert max(counts.values()) <= local
