"""Two CPU processes under torchrun see the same global batches, losses and accuracy as one process."""

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from stepdistill.student.trainer import batch_layout, read_log

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batches(run_dir: Path) -> dict[int, list[int]]:
    """Example indices per optimizer step, over all ranks and micro-batches."""
    batches = defaultdict(list)
    for path in run_dir.glob("batch_ids.rank*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            batches[row["step"]] += row["example_index"]
    return {step: sorted(ids) for step, ids in batches.items()}


def _run(cmd: list[str], cwd: Path) -> None:
    # the toy helpers, then whatever stepdistill this test runs against (a source tree on PYTHONPATH, or installed)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def test_batch_layout_keeps_the_global_batch():
    assert batch_layout(64, 1) == (64, 1)
    assert batch_layout(64, 4) == (16, 1)
    assert batch_layout(64, 2, per_device_cap=8) == (8, 4)
    assert batch_layout(48, 1, per_device_cap=10) == (8, 6)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        batch_layout(64, 3)


@pytest.mark.parametrize("order,model,kind", [("random", "tiny", "text"), ("grouped", "tiny", "text"),
                                              ("random", "tiny-llama", "text"),
                                              ("random", "tiny", "soft")])  # + soft labels (soft_labels.py)
def test_two_processes_match_one(tmp_path, order, model, kind):
    _run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one"), order, model, kind], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(HERE / "ddp_worker.py"), str(tmp_path / "two"), order, model, kind], tmp_path)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (one["processes"], one["per_device_batch_size"], one["gradient_accumulation_steps"]) == (1, 2, 4)
    assert (two["processes"], two["per_device_batch_size"], two["gradient_accumulation_steps"]) == (2, 2, 2)
    assert len(list((tmp_path / "two").glob("batch_ids.rank*.jsonl"))) == 2

    batches_one, batches_two = _global_batches(tmp_path / "one"), _global_batches(tmp_path / "two")
    assert sorted(batches_one) == [0, 1, 2, 3]
    assert all(len(ids) == 8 for ids in batches_one.values())
    assert batches_two == batches_one

    # the per-task token means span both processes: the global loss is the same, step by step
    loss = lambda run: [row["loss"] for row in read_log(tmp_path / run) if "loss" in row]
    assert len(loss("one")) == 4
    assert loss("two") == pytest.approx(loss("one"), rel=1e-4)
    soft_loss = lambda run: [row.get("soft_loss") for row in read_log(tmp_path / run) if "loss" in row]
    assert (soft_loss("one")[0] is not None) == (kind == "soft")
    assert two["valid_accuracy"] == one["valid_accuracy"]
    assert two["test_accuracy"] == one["test_accuracy"]
