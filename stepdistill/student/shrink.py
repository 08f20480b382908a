"""A student cut from its teacher (issue 24, item 6), as DistilBERT was initialised: ``shrink:PATH:SPEC`` copies the
chosen layers of a checkpoint, with its embeddings, final norm(s) and output head, into a smaller model of the same
architecture. PATH: a checkpoint folder, a ``stepdistill train`` run folder or an export (:mod:`.local_models`).

SPEC (layer indices count from 0, in increasing order, no repeats):
  ``layers=0,2,4``        decoder-only models (Llama, SmolLM2, Qwen2, Mistral: ``model.layers``): these decoder
                          layers; T5: these blocks of the encoder AND of the decoder
  ``enc=0,2;dec=1``       T5: encoder and decoder blocks apart (a part left out keeps all its blocks); quote it in
                          a shell, ``;`` ends a command there
  ``layers=all``          every layer: a copy of the checkpoint (its outputs are the checkpoint's)

T5 keeps its relative position bias in block 0 of each stack and every other block reuses it, so the new block 0
always gets the source's block-0 bias, whichever source block it copies (else dropping block 0 would lose it).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

PREFIX = "shrink:"
OPTION = "--model"
_BLOCK_KEY = re.compile(r"^(encoder\.block|decoder\.block|model\.layers)\.(\d+)\.(.*)$")
_RELATIVE_BIAS = "relative_attention_bias"


def is_shrink(name: str | Path) -> bool:
    return str(name).startswith(PREFIX)


def parse_shrink(name: str) -> tuple[str, dict[str, list[int] | str]]:
    """(PATH, {part: indices or "all"}) of ``shrink:PATH:SPEC``; parts ``layers``, ``enc``, ``dec``. The indices
    are checked against the model in :func:`shrink_model`."""
    body = str(name)[len(PREFIX):]
    path, _, spec = body.rpartition(":")
    where = f"option {OPTION}: {name!r}"
    if not path or "=" not in spec:
        raise ValueError(f"{where}: expected shrink:PATH:layers=0,2,4 (or layers=all, or enc=0,2;dec=1 for T5)")
    parts: dict[str, list[int] | str] = {}
    for item in spec.split(";"):
        key, _, value = item.strip().partition("=")
        key = key.strip()
        if key not in ("layers", "enc", "dec"):
            raise ValueError(f"{where}: unknown part {key!r} (layers=, enc=, dec=)")
        if key in parts:
            raise ValueError(f"{where}: {key}= given twice")
        parts[key] = _indices(value.strip(), f"{where}: {key}={value.strip()}")
    if "layers" in parts and len(parts) > 1:
        raise ValueError(f"{where}: give layers= or enc=/dec=, not both")
    return path, parts


def _indices(value: str, where: str) -> list[int] | str:
    if value == "all":
        return "all"
    if not re.fullmatch(r"\d+(,\d+)*", value):
        raise ValueError(f"{where}: expected layer indices like 0,2,4 or all")
    indices = [int(v) for v in value.split(",")]
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError(f"{where}: layer indices must increase without repeats")
    return indices


def _stacks(model) -> dict[str, tuple[str, str, int]]:
    """{part: (state-dict prefix, config field of the layer count, number of layers)} of a supported model."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        if not (hasattr(model, "encoder") and hasattr(model.encoder, "block") and hasattr(config, "num_layers")):
            raise ValueError(f"option {OPTION}: shrink supports T5-style encoder-decoders (encoder.block), not "
                             f"{type(model).__name__}")
        return {"enc": ("encoder.block", "num_layers", len(model.encoder.block)),
                "dec": ("decoder.block", "num_decoder_layers", len(model.decoder.block))}
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(config, "num_hidden_layers"):
        raise ValueError(f"option {OPTION}: shrink supports decoder-only models with model.layers (Llama, SmolLM2, "
                         f"Qwen2, Mistral), not {type(model).__name__}")
    return {"dec": ("model.layers", "num_hidden_layers", len(inner.layers))}


def chosen_layers(model, parts: dict[str, list[int] | str], name: str = "shrink") -> dict[str, list[int]]:
    """{state-dict prefix: source layer indices} for this model, the spec checked against its layer counts."""
    stacks = _stacks(model)
    if "enc" in parts and "enc" not in stacks:
        raise ValueError(f"option {OPTION}: {name!r}: enc= needs an encoder-decoder; this model is decoder-only "
                         "(use layers=)")
    chosen = {}
    for part, (prefix, _, count) in stacks.items():
        spec = parts.get("layers", parts.get(part, "all"))
        indices = list(range(count)) if spec == "all" else list(spec)
        if not indices:
            raise ValueError(f"option {OPTION}: {name!r}: no layers chosen")
        if indices[-1] >= count:
            raise ValueError(f"option {OPTION}: {name!r}: layer {indices[-1]} does not exist ({prefix} has "
                             f"{count} layers, 0-{count - 1})")
        chosen[prefix] = indices
    return chosen


def shrink_model(source, parts: dict[str, list[int] | str], name: str = "shrink"):
    """A new model of ``source``'s class with only the chosen layers, every weight copied from ``source``."""
    import torch

    chosen = chosen_layers(source, parts, name)
    config = copy.deepcopy(source.config)
    for part, (prefix, field, count) in _stacks(source).items():
        setattr(config, field, len(chosen[prefix]))
        # per-layer config lists (Qwen2's layer_types, ...) keep the chosen layers' entries
        for key, value in list(vars(config).items()):
            if part == "dec" and isinstance(value, list) and len(value) == count and key.startswith("layer"):
                setattr(config, key, [value[i] for i in chosen[prefix]])
    target = type(source)(config).to(source.dtype)
    target.generation_config = copy.deepcopy(source.generation_config)
    weights = source.state_dict()
    mapped = {}
    for key in target.state_dict():
        match = _BLOCK_KEY.match(key)
        if match is None:
            mapped[key] = weights[key]  # embeddings, final norms, output head
            continue
        prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
        # T5: the position bias of block 0 serves the whole stack
        source_index = 0 if _RELATIVE_BIAS in rest else chosen[prefix][index]
        mapped[key] = weights[f"{prefix}.{source_index}.{rest}"]
    with torch.no_grad():
        target.load_state_dict(mapped, strict=True)
    return target.train(source.training)


def load_shrunk(name: str):
    """(model, tokenizer) for ``shrink:PATH:SPEC``."""
    from .local_models import load_local_model

    path, parts = parse_shrink(name)
    source, tokenizer = load_local_model(path, OPTION)
    return shrink_model(source, parts, name), tokenizer
