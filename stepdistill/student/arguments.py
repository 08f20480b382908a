"""From a :class:`TrainConfig` to the Hugging Face Trainer's arguments: the batch layout over processes and
``TrainingArguments``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainConfig


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_layout(global_batch: int, processes: int, per_device_cap: int | None = None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) whose product times ``processes`` is ``global_batch``."""
    if global_batch % processes:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {processes} processes")
    per_process = global_batch // processes
    per_device = min(per_process, per_device_cap or per_process)
    while per_process % per_device:
        per_device -= 1
    return per_device, per_process // per_device


# TrainConfig fields that TrainingArguments takes under the same name and meaning
SAME_NAMED = ("max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
              "optim", "eval_steps", "save_total_limit", "logging_steps", "report_to", "seed", "bf16", "fp16",
              "deepspeed", "fsdp", "dataloader_num_workers", "disable_tqdm")


def training_arguments(config: TrainConfig, checkpoint_dir: Path, per_device: int, accumulation: int):
    from transformers import TrainingArguments

    # transformers renamed gradient_checkpointing to activation_checkpointing within 5.x; we support all of 5.x
    checkpointing_arg = "activation_checkpointing"
    if checkpointing_arg not in TrainingArguments.__dataclass_fields__:
        checkpointing_arg = "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        **{name: getattr(config, name) for name in SAME_NAMED},
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=config.eval_batch_size,
        eval_strategy="steps",
        save_strategy="steps",
        save_steps=config.save_steps or config.eval_steps,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        **{checkpointing_arg: config.gradient_checkpointing},
        dataloader_pin_memory=torch.cuda.is_available(),
        # CPU-only machines: needed for multi-process CPU (gloo) training and for bf16 autocast on CPU
        use_cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available(),
        remove_unused_columns=False,  # our collator reads the rationale columns the model signature lacks
        label_names=["labels"],
        average_tokens_across_devices=True,
        # ranks may run different numbers of forward passes (a micro-batch without rationales skips one): a buffer
        # broadcast at every forward would then deadlock them; our buffers (rotary tables) are constants
        ddp_broadcast_buffers=False,
    )
