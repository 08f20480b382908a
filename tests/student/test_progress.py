"""ProgressCallback on a real tiny training run: plain lines for logs, a tqdm bar on a terminal."""

import io
import re

import pytest

from stepdistill.student.progress import ProgressCallback
from stepdistill.student.trainer import TrainConfig, read_log, run_training
from student_toy import toy_records, toy_task


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _train(tmp_path, progress: ProgressCallback, name: str):
    records = toy_records()
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=6, batch_size=8, learning_rate=2e-3,
                         eval_steps=3, logging_steps=2, max_target_length=16)
    return run_training(toy_task(), records, records[:4], [], config, tmp_path / name, callbacks=[progress])


def test_plain_lines_every_n_steps_with_loss_eta_and_valid_accuracy(tmp_path):
    stream = io.StringIO()
    results = _train(tmp_path, ProgressCallback(every_steps=2, every_seconds=None, stream=stream, prefix="[toy] "),
                     "plain")
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("[toy] ") for line in lines) and "\r" not in stream.getvalue()
    losses = {row["step"]: row["loss"] for row in read_log(tmp_path / "plain") if "loss" in row}
    accuracies = dict(results["valid_curve"])
    expected = ["[toy] training 6 steps",
                f"[toy] step 2/6 (33%) loss {losses[2]:.4f}",
                f"[toy] step 3/6: valid accuracy {100 * accuracies[3]:.1f}%",
                f"[toy] step 4/6 (67%) loss {losses[4]:.4f}",
                f"[toy] step 6/6 (100%) loss {losses[6]:.4f}",
                f"[toy] step 6/6: valid accuracy {100 * accuracies[6]:.1f}%",
                f"[toy] done: step 6/6 (100%) loss {losses[6]:.4f}"]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected):
        assert line.startswith(start), (line, start)
    assert re.search(r"step 2/6 \(33%\) loss [\d.]+ elapsed \d\d:\d\d eta \d\d:\d\d$", lines[1]), lines[1]


def test_time_based_lines_when_no_step_interval(tmp_path):
    stream = io.StringIO()
    _train(tmp_path, ProgressCallback(every_steps=None, every_seconds=0.0, stream=stream, bar=False), "timed")
    steps = re.findall(r"^step (\d)/6 \(", stream.getvalue(), flags=re.M)
    assert steps == ["1", "2", "3", "4", "5", "6"]  # a 0 s interval: a line after every step


def test_bar_on_a_terminal(tmp_path):
    stream = Terminal()
    results = _train(tmp_path, ProgressCallback(stream=stream), "bar")
    text = stream.getvalue()
    assert "\r" in text and "6/6" in text and "loss=" in text  # tqdm redraws one line: steps, loss, ETA
    assert f"step 3/6: valid accuracy {100 * dict(results['valid_curve'])[3]:.1f}%" in text
    assert "training 6 steps" not in text  # no plain lines next to the bar


def test_rejects_a_zero_step_interval():
    with pytest.raises(ValueError, match="every_steps must be at least 1, got 0"):
        ProgressCallback(every_steps=0)
