"""A generation run's summary: what came from the cache, what was generated, failures by reason, tokens, cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    examples: int = 0
    cached: int = 0  # answered from the cache, no request
    generated: int = 0  # new records this run
    failed_this_run: int = 0  # new records that are request or parse failures
    ok: int = 0
    parse_failures: Counter = field(default_factory=Counter)  # over all examples, by reason
    request_failures: Counter = field(default_factory=Counter)  # over all examples, after retries, by reason
    filtered: int = 0  # examples whose rationales the gold filter dropped
    rationales_dropped: int = 0
    agree: int = 0  # teacher label equals gold (over all examples)
    requests: int = 0  # attempts sent this run, retries included
    retried: Counter = field(default_factory=Counter)  # failed attempts that were retried, by reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    partial_line_dropped: bool = False
    elapsed_s: float = 0.0

    @property
    def agreement(self) -> float:
        return self.agree / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {name: (dict(value.most_common()) if isinstance(value, Counter) else value)
               for name, value in self.__dict__.items()}
        out["agreement"] = round(self.agreement, 6)
        return out


def format_summary(summary: Summary) -> str:
    s = summary
    lines = [f"{s.examples:,} examples: {s.cached:,} from the cache, {s.generated:,} generated "
             f"({s.requests:,} requests) in {s.elapsed_s:.1f}s",
             f"usable rationales: {s.ok:,}; teacher-label agreement with gold: {s.agreement:.1%} ({s.agree:,}/{s.examples:,})"]
    if s.parse_failures:
        lines.append("parse failures by reason: " + ", ".join(f"{k} {v:,}" for k, v in s.parse_failures.most_common()))
    if s.request_failures:
        lines.append("request failures (after retries) by reason: "
                     + ", ".join(f"{k} {v:,}" for k, v in s.request_failures.most_common()))
    if s.retried:
        lines.append("retried attempts by reason: " + ", ".join(f"{k} {v:,}" for k, v in s.retried.most_common()))
    if s.filtered:
        lines.append(f"dropped by the gold filter: {s.filtered:,} examples ({s.rationales_dropped:,} rationales)")
    return "\n".join(lines + spend_lines(s))


def spend_lines(s) -> list[str]:
    """The closing lines of a run's summary (generation or synthesis): tokens, cost, a dropped partial line."""
    cost = "n/a (no price for this model)" if s.cost is None else f"${s.cost:.4f}"
    lines = [f"tokens this run: {s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion; cost {cost}"]
    if s.partial_line_dropped:
        lines.append("a partial final line from an interrupted run was dropped from the cache")
    return lines
