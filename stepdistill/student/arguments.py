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


# CPU micro-batch budget, in rows x longest row tokens (both tasks' passes) x width x layers: under it a micro-batch
# trains as fast as the whole batch in less memory; over it, smaller micro-batches save memory at no cost in speed
# (experiments/bench_micro_batch.py; figures in docs/training.md)
CPU_MICRO_BATCH_BUDGET = 2 ** 24


def row_tokens(dataset, labels_follow_inputs: bool) -> int:
    """The longest training row's tokens over both tasks' passes (their graphs are alive together until backward)."""
    if labels_follow_inputs:  # causal rows hold their targets inside the inputs
        return max(len(a) + len(b) for a, b in zip(dataset["input_ids"], dataset["rationale_input_ids"]))
    return max(dataset["length"])


def auto_micro_batch(model_config, tokens: int, device_type: str) -> int | None:
    """The per-device micro-batch cap of ``per_device_batch_size=None`` (None: no cap, the whole per-process batch).
    On CPU, the most rows that keep rows x ``tokens`` x width x layers under :data:`CPU_MICRO_BATCH_BUDGET`; on
    accelerators no cap (their memory, not cache size, sets the limit: choose per_device_batch_size yourself)."""
    if device_type != "cpu":
        return None
    width = getattr(model_config, "d_model", None) or getattr(model_config, "hidden_size", None)
    layers = (getattr(model_config, "num_layers", 0) + getattr(model_config, "num_decoder_layers", 0)
              if getattr(model_config, "is_encoder_decoder", False) else getattr(model_config, "num_hidden_layers", 0))
    if not width or not layers:
        return None
    return max(1, CPU_MICRO_BATCH_BUDGET // (max(tokens, 1) * width * layers))


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
        # issue 24: the hidden-state projections are used outside the student's forward; DDP's search for unused
        # parameters would mark them ready at the forward and again at the backward (every parameter is used)
        **({"ddp_find_unused_parameters": False} if config.hidden_weight > 0 else {}),
    )
