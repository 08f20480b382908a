"""Benchmark: the loss curve and peak memory per process of one training run, under one process, DDP or FSDP.

Run it three ways on the same student and batches (the trainer derives per-device batches and accumulation from
the number of processes, so the updates are the same) and compare what each rank prints:

    python experiments/bench_fsdp.py --out runs/one                        # 1 process
    torchrun --nproc_per_node 2 experiments/bench_fsdp.py --out runs/ddp   # 2 processes, DDP (gloo on CPUs)
    torchrun --nproc_per_node 2 experiments/bench_fsdp.py --out runs/fsdp --fsdp "full_shard auto_wrap"
    accelerate launch --config_file experiments/accelerate/fsdp.yaml experiments/bench_fsdp.py --out runs/fsdp

The student is the tiny T5 widened by ``--d-model``/``--layers`` (default 512 and 6+6: 44M parameters, so that its
weights, gradients and Adam states, 16 bytes a parameter, outweigh the framework's own memory), trained step by step
on the 16-example toy task of the tests. Printed per rank: the parameters it holds, the memory of the weights and
optimizer states it holds after a step (what sharding divides), its resident memory before training, at the peak of
the training steps and at its overall peak (scoring and saving gather the whole student on every rank), and rank 0
the loss of every step. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "student"))


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (resident at its peak since the last reset) of this process."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--fsdp", default="", help='the Trainer\'s fsdp option, e.g. "full_shard auto_wrap"')
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    from stepdistill.student.trainer import TrainConfig, read_log, run_training
    from student_toy import toy_records, toy_task

    def local(tensor):
        from torch.distributed.tensor import DTensor

        return tensor.to_local() if isinstance(tensor, DTensor) else tensor

    class Memory(TrainerCallback):
        def on_train_begin(self, _args, state, control, model=None, **kwargs):
            from torch.distributed.tensor import DTensor

            self.before = memory_mb("VmRSS")
            self.held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak of the training steps alone

        def on_step_end(self, _args, state, control, model=None, optimizer=None, **kwargs):  # before evaluating
            self.training_peak = memory_mb("VmHWM")
            # the tensors this rank holds after a step (gradients are freed by then): weights and optimizer states
            tensors = list(model.parameters()) + [
                value for states in optimizer.state.values() for value in states.values() if torch.is_tensor(value)]
            self.state_mb = sum(local(t).numel() * t.element_size() for t in tensors) / 2**20

    memory = Memory()
    records = toy_records(without_rationale=(2, 11))
    d_model = args.d_model
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=args.steps, batch_size=8,
                         per_device_batch_size=2, learning_rate=1e-3, eval_steps=args.steps, logging_steps=1,
                         seed=5, max_target_length=16, fsdp=args.fsdp,
                         tiny_overrides={"d_model": d_model, "d_ff": 4 * d_model, "d_kv": 64, "num_heads": d_model // 64,
                                         "num_layers": args.layers, "num_decoder_layers": args.layers})
    results = run_training(toy_task(), records, records, records[:7], config, Path(args.out), callbacks=[memory])
    rank = int(os.environ.get("RANK", "0"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rank": rank, "processes": results["processes"], "fsdp": bool(args.fsdp),
                      "rss_before_training_mb": round(memory.before),
                      "peak_rss_training_steps_mb": round(memory.training_peak), "peak_rss_mb": round(peak),
                      "weights_and_optimizer_states_mb": round(memory.state_mb),
                      "parameters_held": memory.held}), flush=True)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        print(json.dumps({"losses": [round(row["loss"], 5) for row in read_log(Path(args.out)) if "loss" in row],
                          "test_accuracy": results["test_accuracy"]}), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
