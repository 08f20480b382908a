"""LoRA adapters (peft) on any student, seq2seq or causal: wrapping for training, reloading for ``predict`` and
merging into a plain model for export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig

PEFT_TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}


def default_target_modules(model) -> list[str]:
    """peft's per-architecture default (T5: q, v; Llama: q_proj, v_proj; BERT: query, value); a warm-started
    encoder-decoder gets its two halves' defaults."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    config = model.config
    types = [config.encoder.model_type, config.decoder.model_type] if config.model_type == "encoder-decoder" \
        else [config.model_type]
    targets = sorted({module for kind in types for module in DEFAULTS.get(kind, [])})
    if not targets:
        raise ValueError(f"no default LoRA target modules for model type {config.model_type!r}: "
                         "set lora_target_modules (e.g. '[q_proj, v_proj]')")
    return targets


def apply_lora(model, config: TrainConfig, family: str) -> tuple[Any, dict[str, Any]]:
    """(the peft-wrapped model with only the adapters trainable, the LoRA settings to save with the student)."""
    from peft import LoraConfig, get_peft_model

    targets = list(config.lora_target_modules or default_target_modules(model))
    lora_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=targets, task_type=PEFT_TASK_TYPES[family])
    wrapped = get_peft_model(model, lora_config)
    return wrapped, {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "target_modules": targets}


def load_adapters(base_model, adapter_dir: str | Path):
    """The base model with the adapters saved in ``adapter_dir`` (for inference)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir))


def is_lora_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
