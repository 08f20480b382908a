"""Student models: ``tiny`` (a small T5 plus a SentencePiece tokenizer trained on the task's own text, no hub needed),
``tiny-llama`` (a small decoder-only Llama plus a byte-level BPE trained on the task's text), a warm-started
encoder-decoder (``minilm2minilm`` or ``encoder+decoder``, see :mod:`.warmstart`), chosen layers of a local
checkpoint (``shrink:PATH:layers=0,2``, see :mod:`.shrink`), a short pretrained name
(``smollm2-135m``, through :func:`stepdistill.pretrained.resolve_pretrained`) or any hub name / local path of a
seq2seq or causal-LM checkpoint (the family comes from the checkpoint config's ``is_encoder_decoder``).

The tiny students are written to a folder with ``save_pretrained`` and then loaded back with ``from_pretrained``, so
from then on they behave exactly like downloaded checkpoints.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

TINY_NAME = "tiny"
TINY_LLAMA_NAME = "tiny-llama"

# Small enough to train in minutes on 2 CPU cores, big enough to learn short multi-step arithmetic.
TINY_CONFIG: dict[str, Any] = dict(
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=3,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=64,
    dropout_rate=0.0,
    feed_forward_proj="relu",
    tie_word_embeddings=True,  # T5 v1.0 style: shared in/out embedding, output scaled by d_model**-0.5
)
TINY_VOCAB_SIZE = 800
# The decoder-only counterpart: 2 layers, 64 wide (about 0.2M parameters with the tiny vocabulary).
TINY_LLAMA_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
LLAMA_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3


def train_sentencepiece(texts: Iterable[str], out_dir: str | Path, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Train a T5-style SentencePiece unigram model (pad=0, eos=1, unk=2) on ``texts``; returns the .model path."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for text in texts for line in str(text).splitlines() if line.strip()]
    if not lines:
        raise ValueError("cannot train a tokenizer: no text given")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out_dir / "spiece"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora cannot always fill the requested size
        model_type="unigram",
        character_coverage=1.0,
        split_digits=True,  # one token per digit: numbers stay composable for arithmetic
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's layout
        num_threads=1,
        minloglevel=2,
    )
    return out_dir / "spiece.model"


def build_tiny_student(texts: Iterable[str], out_dir: str | Path, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE,
                       **config_overrides: Any) -> Path:
    """Train a tokenizer on ``texts``, build a randomly initialised small T5, ``save_pretrained`` both to ``out_dir``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = train_sentencepiece(texts, tmp, vocab_size)
        tokenizer = T5Tokenizer(**T5Tokenizer.convert_to_native_format(vocab_file=str(spm_path), extra_ids=0))
        tokenizer.save_pretrained(out_dir)
        shutil.copy(spm_path, out_dir / "spiece.model")  # hub T5 checkpoints ship it too
    config = T5Config(**{**TINY_CONFIG, **config_overrides}, vocab_size=len(tokenizer),
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    from .quiet import no_progress_bars

    with no_progress_bars():
        model.save_pretrained(out_dir)
    return out_dir


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE (digits split one per token, ``<s>`` prepended like Llama's) wrapped as a transformers fast
    tokenizer with pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [line for text in texts for line in str(text).splitlines() if line.strip()]
    if not lines:
        raise ValueError("cannot train a tokenizer: no text given")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(LLAMA_SPECIALS),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_tiny_llama(texts: Iterable[str], out_dir: str | Path, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE,
                     **config_overrides: Any) -> Path:
    """Train a byte-level BPE on ``texts``, build a randomly initialised small Llama, ``save_pretrained`` both."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .quiet import no_progress_bars

    out_dir = Path(out_dir)
    tokenizer = train_byte_level_bpe(texts, vocab_size)
    tokenizer.save_pretrained(out_dir)
    config = LlamaConfig(**{**TINY_LLAMA_CONFIG, **config_overrides}, vocab_size=len(tokenizer),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with no_progress_bars():
        model.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS = {TINY_NAME: build_tiny_student, TINY_LLAMA_NAME: build_tiny_llama}


def student_texts(records: list[dict], label_prefix: str, rationale_prefix: str) -> list[str]:
    """All text a student reads or writes for these records: the tokenizer's training corpus."""
    texts = [label_prefix + rationale_prefix]
    for record in records:
        texts += [record["input"], record["label"]]
        texts += [text for text in (record.get("rationale"), record.get("teacher_label")) if text]
        texts += record.get("choices") or []
    return texts


def load_student(name_or_path: str | Path, texts: Iterable[str] | None = None, build_dir: str | Path | None = None,
                 seed: int = 0, tiny_overrides: dict[str, Any] | None = None):
    """(model, tokenizer) for ``tiny`` / ``tiny-llama`` (built into ``build_dir`` from ``texts``), a warm-started
    encoder-decoder (``minilm2minilm``, ``encoder+decoder``), ``shrink:PATH:layers=...`` (chosen layers of a local
    checkpoint, :mod:`.shrink`), a short pretrained name, a hub name or a local folder of a seq2seq or causal-LM
    checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from ..pretrained import resolve_pretrained
    from .quiet import no_progress_bars
    from .shrink import is_shrink, load_shrunk
    from .warmstart import is_warm_start, warm_start

    if is_shrink(name_or_path):  # layers of a local checkpoint (issue 24: a student cut from its teacher)
        with no_progress_bars():
            return load_shrunk(str(name_or_path))
    if str(name_or_path) in TINY_BUILDERS:
        if texts is None or build_dir is None:
            raise ValueError(f"model {str(name_or_path)!r} needs the task's texts and a folder to build the "
                             "tokenizer and model in")
        overrides = dict(tiny_overrides or {})
        vocab_size = overrides.pop("vocab_size", TINY_VOCAB_SIZE)
        name_or_path = TINY_BUILDERS[str(name_or_path)](texts, build_dir, seed=seed, vocab_size=vocab_size,
                                                        **overrides)
    if is_warm_start(name_or_path):
        with no_progress_bars():
            return warm_start(name_or_path)
    source = resolve_pretrained(str(name_or_path))
    try:
        with no_progress_bars():
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
            loader = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            model = loader.from_pretrained(source)
    except OSError as exc:
        raise ValueError(f"cannot load student model {str(name_or_path)!r}: not 'tiny', 'tiny-llama', a local "
                         f"checkpoint folder or a reachable hub name ({exc})") from exc
    if not config.is_encoder_decoder:
        prepare_causal_tokenizer(tokenizer)
    return model, tokenizer


def prepare_causal_tokenizer(tokenizer) -> None:
    """A causal student needs eos (ends targets) and a pad id (batches; masks come from lengths, so eos may pad)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos token to end causal-LM targets with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def target_end_id(tokenizer) -> int:
    """The token that ends every decoder target: ``eos`` (T5 ``</s>``; ``[SEP]`` on warm-started BERT tokenizers)."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos or [SEP] token to end targets with")
    return end


def encode_targets(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Decoder targets (labels) for training and rank scoring alike: the text's tokens WITHOUT the tokenizer's own
    special tokens (no ``[CLS]``), cut to ``max_length - 1`` (None: not cut), then the end token. The decoder input
    is these labels shifted right behind ``decoder_start_token_id`` (``prepare_decoder_input_ids_from_labels``)."""
    if not texts:
        return []
    end = target_end_id(tokenizer)
    cut = {} if max_length is None else {"truncation": True, "max_length": max(1, max_length - 1)}
    ids = tokenizer(list(texts), add_special_tokens=False, **cut)["input_ids"]
    return [row + [end] for row in ids]
