"""Run by test_fsdp.py, under torchrun (2 processes, FSDP) or plain python (1 process): for the tiny T5 and the tiny
Llama, one run of 4 steps each, and with --resume the T5 run again, resumed from its step-2 checkpoint (one launch
for all the runs).

    fsdp_worker.py OUT_DIR [FSDP] [--resume]    writes OUT_DIR/<model>/full (and OUT_DIR/tiny/resumed)

Each rank also writes ``params.rank<r>.json`` into the run folder: how many parameters it holds as shards
(DTensors) and how many elements it holds locally, seen at the first step.
"""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from stepdistill.student.trainer import TrainConfig, run_training

from student_toy import toy_records, toy_task


class RecordParameters(TrainerCallback):
    def __init__(self, run_dir: Path, rank: int):
        self.path = run_dir / f"params.rank{rank}.json"

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.path.exists():
            return
        from torch.distributed.tensor import DTensor

        params = list(model.parameters())
        self.path.write_text(json.dumps({
            "params": len(params), "sharded": sum(isinstance(p, DTensor) for p in params),
            "local_elements": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
            "elements": sum(p.numel() for p in params)}))


def train(model: str, run_dir: Path, fsdp: str, rank: int, resume: str | None = None) -> None:
    records = toy_records(without_rationale=(2, 11))  # micro-batches without rationales: one pass fewer, unless FSDP
    config = TrainConfig(model=model, method="step-by-step", max_steps=4, batch_size=8, per_device_batch_size=2,
                         learning_rate=3e-3, eval_steps=2, logging_steps=1, seed=5, max_target_length=16,
                         fsdp=fsdp, keep_checkpoints=True, resume_from_checkpoint=resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    # test: 7 records, so the ranks score 4 and 3 (scoring must not need them in step)
    run_training(toy_task(), records, records, records[:7], config, run_dir,
                 callbacks=[RecordParameters(run_dir, rank)])


if __name__ == "__main__":
    import torch.distributed as dist

    out, fsdp = Path(sys.argv[1]), (sys.argv[2:3] + [""])[0]
    rank = int(__import__("os").environ.get("RANK", "0"))
    for model in ("tiny", "tiny-llama"):
        train(model, out / model / "full", fsdp, rank)
    if "--resume" in sys.argv:  # the resume is the same for either family
        checkpoint = out / "tiny" / "full" / "checkpoints" / "checkpoint-2"
        train("tiny", out / "tiny" / "resumed", fsdp, rank, resume=str(checkpoint))
    if dist.is_initialized():  # leave the gloo group cleanly: a rank exiting mid-teardown aborts its peer
        dist.barrier()
        dist.destroy_process_group()
