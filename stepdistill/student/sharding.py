"""Sharded training (FSDP2, and DeepSpeed ZeRO-3 for scoring) on the Hugging Face Trainer: what it needs beyond
``TrainingArguments(fsdp=...)``.

- On CPUs, accelerate (1.16) turns ``--fsdp`` into plain DDP without a word (its FSDP state exists for GPU-like
  devices only), though torch's ``fully_shard`` runs on gloo: :func:`use_fsdp_on_cpu` switches it back on, so the
  option means the same on a CPU cluster as on GPUs.
- T5 ties ``encoder.embed_tokens`` and ``decoder.embed_tokens`` to ``shared`` by parameter, as separate modules;
  FSDP2 refuses one parameter in two groups, so :func:`share_tied_embeddings` leaves ``shared`` its only owner.
- Scoring calls submodules (the encoder alone, which holds sharded norms of the root group) and runs a different
  number of forwards on each rank, which FSDP's per-forward all-gathers and its forward-order bookkeeping (used to
  prefetch in the next backward) cannot follow: :func:`scoring_model` scores on a gathered plain copy.
- Every sharded forward gathers with all ranks, so a rank may not skip the rationale pass of a micro-batch without
  rationales (:func:`rationale_inputs`).
"""

from __future__ import annotations

import os
from itertools import chain

import torch


def fsdp_requested(config) -> bool:
    """``--fsdp`` given, or ``accelerate launch`` with an FSDP config (experiments/accelerate/fsdp.yaml): the
    launcher sets FSDP_VERSION too (an Accelerator given an FSDP plugin sets ACCELERATE_USE_FSDP alone, and leaves
    it set for any later run in the process)."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and "FSDP_VERSION" in os.environ
    return bool(config.fsdp) or launched


def use_fsdp_on_cpu(trainer) -> None:
    """Make a CPU multi-process Trainer that was asked for FSDP run FSDP, not the DDP accelerate falls back to."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if not fsdp_requested(trainer.args) or state.distributed_type != DistributedType.MULTI_CPU:
        return
    # in both shared states: every later AcceleratorState() copies the process state's distributed_type over its own
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    # the Trainer's own settings (--fsdp), else the launcher's (its FSDP_* environment)
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**(trainer.args.fsdp_plugin_args or {}))
    trainer.is_fsdp_enabled = True


class EmbeddingView(torch.nn.Module):
    """Looks tokens up in another embedding module without holding its weight, so the weight has one owner."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self._embedding = [embedding]  # in a list: not a registered submodule (not in the state dict)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self._embedding[0].weight

    def forward(self, input_ids):
        return self._embedding[0](input_ids)  # runs the owner's FSDP hooks: its group is gathered


def prepare_for_fsdp(model: torch.nn.Module, config) -> None:
    """Refuse what FSDP was not proven with here; share the tied embeddings (:func:`share_tied_embeddings`)."""
    unproven = [name for name, on in (("--lora-r", config.lora), ("--shared-encoder", config.shared_encoder)) if on]
    if unproven:
        raise ValueError(f"--fsdp with {' and '.join(unproven)} is not supported (not checked under sharding); "
                         "leave --fsdp off (DDP) for it")
    share_tied_embeddings(model)


def share_tied_embeddings(model: torch.nn.Module) -> None:
    """Replace every other embedding module whose weight is the input embedding's (T5's encoder and decoder
    ``embed_tokens``) by an :class:`EmbeddingView` of it: the same lookup, one parameter in one FSDP group. The
    saved weights lack those tied keys, as transformers saves them anyway."""
    shared = model.get_input_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child is not shared and isinstance(child, torch.nn.Embedding) and child.weight is shared.weight:
                setattr(parent, name, EmbeddingView(shared))


def scoring_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself, or for a sharded one (FSDP2, DeepSpeed ZeRO-3) a plain gathered copy of it: every rank holds
    the whole student, without the sharding hooks, so ranks may score different records (and call submodules) with
    no collective. Called on all ranks at once (the gather is one)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        plain_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclassed
    elif any(hasattr(parameter, "ds_id") for parameter in model.parameters()):  # ZeRO-3 partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        plain_class = type(model)
    else:
        return model
    with torch.device("meta"):
        plain = plain_class(model.config)
    plain.load_state_dict(weights, assign=True, strict=False)  # lacks the EmbeddingView keys: tied below
    buffers = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):  # non-persistent buffers (rotary tables) are not in the weights
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, buffers[name], persistent=False)
    plain.tie_weights()
    unset = [name for name, tensor in chain(plain.named_parameters(), plain.named_buffers()) if tensor.is_meta]
    if unset:
        raise RuntimeError(f"gathering the sharded student for scoring left {', '.join(unset)} unset")
    plain.generation_config = model.generation_config
    return plain.eval()


def rationale_inputs(inputs: dict) -> dict:
    """The rationale task's inputs of a micro-batch, or, when it has none (no example with a usable rationale), one
    label-task row with no target: under FSDP every rank must run the same forwards (each all-gathers), so the pass
    runs with a zero loss instead of being skipped."""
    if inputs["rationale_labels"].ne(-100).any():
        return inputs
    return {"rationale_input_ids": inputs["input_ids"][:1], "rationale_attention_mask": inputs["attention_mask"][:1],
            "rationale_labels": inputs["labels"][:1].new_full(inputs["labels"][:1].shape, -100)}
