"""Training progress for people watching: a tqdm bar on a terminal, plain periodic lines in logs and CI.

    run_training(..., callbacks=[ProgressCallback()])

The Trainer's own bar is off (``TrainConfig.disable_tqdm``): it redraws with carriage returns, which a log file
keeps as one endless line, and it knows nothing of our valid accuracy.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from tqdm.auto import tqdm
from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    """Steps, latest training loss and ETA while training, and one line per evaluation with valid accuracy.

    Args:
        every_steps: In plain mode, print a line every this many steps (None: by time only).
        every_seconds: In plain mode, print a line when this many seconds passed since the last one (None: by steps
            only). With both, whichever comes first.
        stream: Where to write (default ``sys.stderr``).
        prefix: Put before every line, e.g. the run's name when several runs share one terminal.
        bar: True for a tqdm bar, False for plain lines; None (default): a bar when ``stream`` is a terminal.
    """

    def __init__(self, every_steps: int | None = None, every_seconds: float | None = 30.0, stream: IO | None = None,
                 prefix: str = "", bar: bool | None = None):
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be at least 1, got {every_steps}")
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.stream, self.prefix, self.bar_mode = stream, prefix, bar
        self.bar = None
        self.loss: float | None = None
        self.started = self.last_line = 0.0
        self.first_step = 0
        self.line_due = False  # a plain line waits for this step's loss, logged after on_step_end

    def _out(self) -> IO:
        return self.stream or sys.stderr

    def _use_bar(self) -> bool:
        if self.bar_mode is not None:
            return self.bar_mode
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(self.prefix + text, file=self._out())
        else:
            print(self.prefix + text, file=self._out(), flush=True)

    def _status(self, step: int, total: int) -> str:
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        eta = elapsed / done * (total - step) if done > 0 else None
        loss = f" loss {self.loss:.4f}" if self.loss is not None else ""
        return (f"step {step}/{total} ({100 * step / max(total, 1):.0f}%){loss} elapsed "
                f"{tqdm.format_interval(elapsed)} eta {tqdm.format_interval(eta) if eta is not None else '?'}")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started = self.last_line = time.perf_counter()
        self.first_step = state.global_step  # a resumed run: the ETA counts only the steps done here
        if self._use_bar():
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.prefix.strip() or "train",
                            file=self._out(), dynamic_ncols=True)
        else:
            self._write(f"training {state.max_steps} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
        if self.line_due and state.is_world_process_zero:
            self.line_due = False
            self._write(self._status(state.global_step, state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        step = state.global_step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        by_time = self.every_seconds is not None and now - self.last_line >= self.every_seconds
        if by_steps or by_time:
            self.last_line = now
            if control.should_log:  # the Trainer logs this step's loss next: print the line with it
                self.line_due = True
            else:
                self._write(self._status(step, state.max_steps))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or "eval_accuracy" not in metrics:
            return
        self._write(f"step {state.global_step}/{state.max_steps}: valid accuracy "
                    f"{100 * metrics['eval_accuracy']:.1f}%")

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._write(f"done: {self._status(state.global_step, state.max_steps)}")
