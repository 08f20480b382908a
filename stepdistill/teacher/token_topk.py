"""The teacher's top-k log-probabilities per generated token, as one cache field (issue 24, item 3: offline
token-level distillation; ``generate --token-logprobs K``):

    "token_topk": {"tokenizer": the teacher's model name (whose tokenizer spelled the tokens),
                   "k": K,
                   "chosen": [the generated token at each position],
                   "chosen_logprobs": [its natural-log probability],
                   "tokens": [[the K most likely tokens at each position, most likely first]],
                   "logprobs": [[their natural-log probabilities]]}

Positions are the completion's tokens in order, at most ``max_new_tokens`` of them (the record stays bounded); an
API gives at most 20 alternatives per position (its limit), a local teacher up to :data:`MAX_K`. Tokens are
strings as the teacher spells them (an API: decoded text; a local HF teacher: its tokenizer's token strings, so
that a student with the same vocabulary maps them back to ids). Log-probabilities are rounded to 6 decimals.
Records keep the field when their status is ok or filtered, as they keep ``label_logprobs``.
"""

from __future__ import annotations

from typing import Any

FIELD = "token_topk"
API_MAX_K = 20  # the OpenAI API's top_logprobs limit
MAX_K = 100  # a local teacher's cap: 100 alternatives per token keep a 256-token record near 0.5 MB


def check_supported(teacher: Any, params: Any) -> None:
    """One ValueError naming why --token-logprobs cannot be honoured (before any request)."""
    k = params.token_logprobs
    if not k:
        return
    if params.n > 1:
        raise ValueError("--token-logprobs: needs --n 1 (the tokens of one completion; with self-consistency "
                         "the rationale kept is a vote's, not one completion's)")
    source = getattr(teacher, "token_topk_source", None)
    if source is None:
        raise ValueError(f"--token-logprobs: the {teacher.kind} teacher gives no per-token log-probabilities; they "
                         "come from openai:MODEL or openai-batch:MODEL (top_logprobs)")
    if source == "api" and k > API_MAX_K:
        raise ValueError(f"--token-logprobs: at most {API_MAX_K} for an API teacher (its top_logprobs limit), got {k}")


def from_tokens(tokenizer: str, tokens: list[tuple[str, float, list[tuple[str, float]]]], k: int,
                max_positions: int) -> dict[str, Any]:
    """The field from a reply's (token, logprob, [(alternative, logprob), ...]) list: at most ``max_positions``
    positions and ``k`` alternatives each (sorted by log-probability, most likely first)."""
    kept = tokens[:max_positions]
    tops = [sorted(alternatives, key=lambda item: -item[1])[:k] for _, _, alternatives in kept]
    return {"tokenizer": tokenizer, "k": k,
            "chosen": [token for token, _, _ in kept],
            "chosen_logprobs": [round(float(logprob), 6) for _, logprob, _ in kept],
            "tokens": [[token for token, _ in top] for top in tops],
            "logprobs": [[round(float(logprob), 6) for _, logprob in top] for top in tops]}


def record_fields(teacher: Any, params: Any, reply: Any) -> dict[str, Any]:
    """``{"token_topk": ...}`` for a one-output reply with token log-probabilities ({} otherwise)."""
    if not params.token_logprobs or reply.error or len(reply.outputs) != 1 or not reply.token_logprobs:
        return {}
    tokens = reply.token_logprobs[0]
    if not tokens:
        return {}
    return {FIELD: from_tokens(teacher.model, tokens, params.token_logprobs, params.max_new_tokens)}


def settle(record: dict[str, Any]) -> dict[str, Any]:
    """Kept for ok and filtered records only."""
    if record.get("status") not in ("ok", "filtered"):
        record.pop(FIELD, None)
    return record
