"""FSDP (``--fsdp "full_shard auto_wrap"``) on 2 CPU processes (gloo, torchrun) against 1 process, for a T5 and a Llama
student: the same losses step by step, the same scores and accuracy; the save, the resume and the rank-scoring
evaluation under sharded parameters. One launch of each kind serves every test here (fsdp_worker.py)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stepdistill.student.trainer import read_log

from student_toy import toy_records, toy_task

HERE = Path(__file__).parent
MODELS = ("tiny", "tiny-llama")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    _run([sys.executable, str(HERE / "fsdp_worker.py"), str(root / "one")], root)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(HERE / "fsdp_worker.py"), str(root / "two"), "full_shard auto_wrap", "--resume"], root)
    return root


def _losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_log(run_dir) if "loss" in row]


def _scores(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line)["scores"] for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()]


def _approx_scores(scores: list[dict[str, float]]):
    return [pytest.approx(row, abs=1e-4) for row in scores]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_fsdp_on_two_processes_matches_one(runs, model):
    one, two = runs / "one" / model / "full", runs / "two" / model / "full"
    results_one = json.loads((one / "results.json").read_text())
    results_two = json.loads((two / "results.json").read_text())
    assert (results_one["processes"], results_two["processes"]) == (1, 2)
    # really sharded: every parameter a DTensor, each rank holding about half of the elements
    for rank in (0, 1):
        held = json.loads((two / f"params.rank{rank}.json").read_text())
        assert held["sharded"] == held["params"] > 0
        assert 0.45 * held["elements"] < held["local_elements"] < 0.55 * held["elements"]
    assert json.loads((one / "params.rank0.json").read_text())["sharded"] == 0
    assert len(_losses(one)) == 4
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4)
    assert results_two["valid_accuracy"] == results_one["valid_accuracy"]
    assert results_two["test_accuracy"] == results_one["test_accuracy"]
    # rank scoring under sharded parameters: every candidate's score, 7 test records scored 4 + 3 over the ranks
    assert len(_scores(two)) == 7
    assert _scores(two) == _approx_scores(_scores(one))


@pytest.mark.slow
def test_fsdp_resume_continues_the_same_run(runs):
    full, resumed = runs / "two" / "tiny" / "full", runs / "two" / "tiny" / "resumed"
    assert json.loads((resumed / "results.json").read_text())["steps"] == 4
    assert os.listdir(resumed / "checkpoints") == ["checkpoint-4"]  # steps 1-2 came from the checkpoint
    assert len(_losses(resumed)) == 4  # the first two restored with the checkpoint's state, the last two trained
    assert _losses(resumed) == pytest.approx(_losses(full), rel=1e-5)
    assert _scores(resumed) == _approx_scores(_scores(full))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_fsdp_saved_model_predicts_what_the_run_scored(runs, model):
    from stepdistill.student.predict import load_trained_student, predict

    run_dir = runs / "two" / model / "full"
    student = load_trained_student(run_dir, task=toy_task())
    rows = predict(student, [record["input"] for record in toy_records()[:7]])
    assert [row["scores"] for row in rows] == _approx_scores(_scores(run_dir))
