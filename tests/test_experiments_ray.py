"""Sweeps on Ray (`--executor ray`), on one local Ray cluster of 2 CPUs that this module starts: two runs at once, a
failing run (its error is the sweep's, logged, and the others finish), a resume after the driver is SIGKILLed
(finished runs are not redone, the killed driver's tasks die with it), the real trainer through `stepdistill curve`
with the same results as a one-process sweep, and the experiment file's `executor` field."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepdistill.experiments import PRESETS, load_results, plan_runs, run_sweep
from stepdistill.tasks import get_task

from sweep_workers import alive, fake_train_from_file
from test_experiments import make_esnli_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = [spec.key for spec in plan_runs(PRESETS["smoke"], get_task("esnli"))]

@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPUs; its workers import the test helpers (they inherit the environment it starts with)."""
    import ray

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)] + ([saved] if saved else []))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def esnli(tmp_path_factory):
    from stepdistill.data import load_task_data

    folder = make_esnli_folder(tmp_path_factory.mktemp("ray-data"))
    return folder, load_task_data("esnli", data_dir=folder)


def _settings(root: Path, **values) -> Path:
    (root / "markers").mkdir(exist_ok=True)
    (root / "fake_train.json").write_text(json.dumps({"markers": str(root / "markers"), "sleep": 0.5, **values}))
    return root / "markers"


def _trained(markers: Path) -> list[str]:
    return sorted(name.split("-", 1)[1] for name in os.listdir(markers))


def _log(out: Path, kind: str) -> list[list[str]]:
    return [line.split("\t") for line in (out / "sweep.log").read_text().splitlines() if line.startswith(kind + "\t")]


@pytest.mark.slow
def test_ray_runs_two_at_once_finishes_the_others_after_a_failure_and_resumes(ray_cluster, esnli, tmp_path):
    _, data = esnli
    markers = _settings(tmp_path, fail=KEYS[3])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="^boom in " + KEYS[3] + "$") as raised:
        run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train_from_file, echo=lambda _: None,
                  workers=2, executor="ray")
    assert type(raised.value) is ValueError  # the run's own error, not Ray's wrapper: the CLI prints one error line
    assert [line[1:2] + line[3:] for line in _log(out, "failed")] == [[KEYS[3], f"ValueError: boom in {KEYS[3]}"]]
    finished = {r["run_key"] for r in load_results(out)}
    assert KEYS[3] not in finished and set(KEYS[:3]) <= finished and len(finished) <= 5  # in flight: finished
    assert (out / "runs" / (KEYS[3] + ".partial")).is_dir()
    # two at once: some two runs' [start, end] overlap, in two Ray worker processes
    spans = sorted(tuple(map(float, (markers / name).read_text().split())) for name in os.listdir(markers))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    pids = {int(name.split("-")[0]) for name in os.listdir(markers)}
    assert len(pids) == 2 and os.getpid() not in pids

    _settings(tmp_path)  # the failure is fixed: the resume trains only what has no finished folder
    results = run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train_from_file,
                        echo=lambda _: None, workers=2, executor="ray")
    assert sorted(r["run_key"] for r in results) == sorted(KEYS)
    assert _trained(markers) == sorted([k.replace("/", "_") for k in KEYS] + [KEYS[3].replace("/", "_")])
    serial = run_sweep("esnli", data.splits, PRESETS["smoke"], tmp_path / "serial", train_fn=fake_train_from_file,
                       echo=lambda _: None)
    assert {r["run_key"]: r["test_accuracy"] for r in serial} == {r["run_key"]: r["test_accuracy"] for r in results}



@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_finished_runs(ray_cluster, esnli, tmp_path):
    """The driver connects to the cluster by address (as to a real one) and is SIGKILLed with two runs in flight."""
    folder, data = esnli
    markers = _settings(tmp_path, slow={KEYS[2]: 300, KEYS[3]: 300})
    out = tmp_path / "out"
    code = ("import sys; sys.path.insert(0, {tests!r}); from sweep_workers import alive, fake_train_from_file; "
            "from stepdistill.data import load_task_data; from stepdistill.experiments import PRESETS, run_sweep; "
            "run_sweep('esnli', load_task_data('esnli', data_dir={data!r}).splits, PRESETS['smoke'], {out!r}, "
            "train_fn=fake_train_from_file, workers=2, executor='ray', ray_address={address!r})").format(
                tests=str(REPO_ROOT / "tests"), data=str(folder), out=str(out), address=ray_cluster)
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # inherits RAY_AUTH_MODE=token, set by ray.init
    deadline = time.monotonic() + 240
    while len(_log(out, "done") if (out / "sweep.log").exists() else []) < 2 or len(os.listdir(markers)) < 4:
        assert time.monotonic() < deadline and driver.poll() is None, "the runs did not start"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    in_flight = {int(name.split("-")[0]) for name in os.listdir(markers)
                 if name.split("-", 1)[1] in (KEYS[2].replace("/", "_"), KEYS[3].replace("/", "_"))}
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in in_flight) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in in_flight), "a task outlived its killed driver"
    finished_before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/results.json")}
    assert {str(p.parent.relative_to(out / "runs")) for p in finished_before} == set(KEYS[:2])

    _settings(tmp_path)
    results = run_sweep("esnli", data.splits, PRESETS["smoke"], out, train_fn=fake_train_from_file,
                        echo=lambda _: None, workers=2, executor="ray", ray_address=ray_cluster)
    assert sorted(r["run_key"] for r in results) == sorted(KEYS)
    # each run trained once, but the two killed in flight: twice
    assert _trained(markers) == sorted([k.replace("/", "_") for k in KEYS] + [k.replace("/", "_") for k in KEYS[2:4]])
    for path, mtime in finished_before.items():
        assert path.stat().st_mtime_ns == mtime
    assert not list((out / "runs").glob("*/*/*.partial"))


@pytest.mark.slow
def test_curve_on_ray_trains_the_same_students_as_one_process(ray_cluster, esnli, tmp_path, capsys):
    """The real trainer in Ray workers, through `stepdistill curve --executor ray` (in this process: the module's
    cluster serves it), against the same two runs trained here one after the other."""
    from stepdistill.cli import main
    from stepdistill.experiments import get_preset

    folder, data = esnli
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"base": "smoke", "methods": ["step-by-step-teacher"], "seeds": [0, 1],
                                  "fractions": {"esnli": [0.0001]}, "max_steps": 2, "eval_steps": 2,
                                  "valid_size": 8, "test_size": 8}))
    out = tmp_path / "ray"
    main(["curve", "--task", "esnli", "--data-dir", str(folder), "--preset", str(preset), "--out-dir", str(out),
          "--executor", "ray", "--workers", "2"])
    printed = capsys.readouterr().out
    assert "2 runs, 0 already finished" in printed and "2 at a time on Ray" in printed
    serial = {r["run_key"]: r for r in run_sweep("esnli", data.splits, get_preset(str(preset)), tmp_path / "serial",
                                                 echo=lambda _: None)}
    on_ray = {r["run_key"]: r for r in load_results(out)}
    assert sorted(on_ray) == sorted(serial) and len(on_ray) == 2
    for key, result in on_ray.items():
        assert result["steps"] == 2 and result["torch_threads"] == 1
        for field in ("train_loss", "valid_accuracy", "test_accuracy", "valid_curve"):
            assert result[field] == serial[key][field], (key, field)
        ray_predictions = (out / "runs" / key / "predictions_test.jsonl").read_text()
        assert ray_predictions == (tmp_path / "serial" / "runs" / key / "predictions_test.jsonl").read_text()
    assert json.loads((out / "report.json").read_text())["runs_finished"] == 2


def test_bad_executor_is_one_error_line(tmp_path, capsys):
    from stepdistill.cli import main
    from stepdistill.experiments.experiment_file import load_experiment

    with pytest.raises(SystemExit):
        main(["curve", "--task", "esnli", "--data-dir", str(tmp_path), "--executor", "dask"])
    assert capsys.readouterr().err == ("error: option --executor: Expected a typing.Literal['process', 'ray']. "
                                       "Got value: dask\n")
    with pytest.raises(SystemExit, match="^error: option --gpus-per-run: only the ray executor reserves GPUs"):
        main(["curve", "--task", "esnli", "--data-dir", str(tmp_path), "--gpus-per-run", "1"])
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("task: esnli\nteacher: replay:x\nexecutor: ray\nray_address: ray://head:10001\n"
                          "gpus_per_run: 0.5\n")
    loaded = load_experiment(experiment)
    assert (loaded.executor, loaded.ray_address, loaded.gpus_per_run) == ("ray", "ray://head:10001", 0.5)
    experiment.write_text("task: esnli\nteacher: replay:x\nexecutor: dask\n")
    with pytest.raises(ValueError, match=f"^{experiment}: field 'executor': expected one of process, ray, got 'dask'$"):
        load_experiment(experiment)
