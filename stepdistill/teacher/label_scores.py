"""The teacher's distribution over the candidate labels, as cache fields (the contract of issue 24):

    "label_logprobs": {label: natural-log probability, for every candidate of the example},
    "label_logprobs_source": "scores" | "top_logprobs" | "votes",
    "label_logprob_rest": log of the mass the teacher gave to no candidate (top_logprobs), else null

- ``scores``: a model scored every candidate (the local HF teacher after its own rationale, a ``student:`` teacher
  as its ranking does): the candidates' sequence log-probabilities, log-softmaxed over the candidates.
- ``top_logprobs``: an API's log-probabilities on the answer tokens (:func:`from_top_logprobs`).
- ``votes``: self-consistency (n > 1): ``(count + 1) / (votes cast + candidates)``, logged.

Free-form tasks (SVAMP) have no candidates and get none. Records keep the fields when status is ok or filtered (a
filtered answer is still the teacher's distribution, which calibration needs) and lose them otherwise.
"""

from __future__ import annotations

import math
from typing import Any

from ..tasks import Task, TeacherParse

FIELDS = ("label_logprobs", "label_logprobs_source", "label_logprob_rest")
FLOOR = 1e-6  # the least probability written: log(1e-6) for a candidate no mass was left for

TeacherTokens = list[tuple[str, float, list[tuple[str, float]]]]


def candidates(task: Task, fields: dict[str, Any]) -> list[str] | None:
    """The example's candidate labels as the task spells them (None: free-form, nothing to score)."""
    return None if task.free_form else task.choices(fields)


def check_supported(task: Task, teacher: Any, params: Any) -> None:
    """--label-logprobs on a task or teacher that cannot give them: one ValueError naming why and what can."""
    if not params.label_logprobs:
        return
    if task.free_form:
        raise ValueError(f"--label-logprobs: task {task.name} is free-form (its answers are generated, not chosen "
                         "from candidates): there is no label distribution to record")
    if params.n > 1 or teacher.label_source is not None:
        return
    kind = teacher.kind
    what = ("the released outputs (replay teacher) carry no scores" if kind == "replay"
            else f"the {kind} teacher gives no scores")
    raise ValueError(f"--label-logprobs: {what}; label log-probabilities come from openai:MODEL or openai-batch:MODEL "
                     "(top_logprobs), hf:PATH or student:RUN_DIR (candidate scores), or --n K (self-consistency votes)")


def _fields(values: dict[str, float], source: str, rest: float | None) -> dict[str, Any]:
    return {"label_logprobs": {label: float(value) for label, value in values.items()},
            "label_logprobs_source": source, "label_logprob_rest": rest}


def from_scores(labels: list[str], scores: dict[str, float]) -> dict[str, Any]:
    """Every candidate scored (sequence log-probabilities): log-softmax over the candidates."""
    values = [float(scores[label]) for label in labels]
    top = max(values)
    total = top + math.log(sum(math.exp(value - top) for value in values))
    return _fields({label: value - total for label, value in zip(labels, values)}, "scores", None)


def from_votes(task: Task, labels: list[str], votes: dict[str, int], fields: dict[str, Any]) -> dict[str, Any]:
    """Self-consistency vote shares with add-one smoothing: (count + 1) / (votes cast + candidates)."""
    counts = {label: sum(count for voted, count in votes.items() if task.is_correct(voted, label, fields))
              for label in labels}
    cast = sum(counts.values())
    return _fields({label: math.log((counts[label] + 1) / (cast + len(labels))) for label in labels}, "votes", None)


def answer_start(output: str, parsed: TeacherParse) -> int | None:
    """Where the label the parser read begins in ``output``: the first occurrence of its text after the rationale
    (None when the parser found no label or its text is not in the output)."""
    raw = parsed.raw_label
    if parsed.label is None or not raw:
        return None
    after = 0
    if parsed.rationale:
        at = output.find(parsed.rationale)
        after = at + len(parsed.rationale) if at >= 0 else 0
    at = output.find(raw, after)
    return at if at >= 0 else None


def _completes(token: str, remaining: str) -> bool:
    # the token spells the rest of the candidate, maybe followed by punctuation or space ("entailment." ends it)
    return token.startswith(remaining) and not any(ch.isalnum() for ch in token[len(remaining):])


def from_top_logprobs(labels: list[str], tokens: TeacherTokens, output: str, start: int) -> dict[str, Any] | None:
    """Candidate probabilities from an API's per-token log-probabilities of ``output``, whose answer label begins
    at character ``start``.

    Hand-written: no library maps top-k token lists onto label strings. From the token holding the answer's first
    character, along the generated tokens: at each position, an alternative token (or the generated one) that
    completes a candidate's remaining text, or starts it and leaves the generated path, adds
    ``exp(path so far + its logprob)`` to that candidate (a token fitting several candidates goes to none); the
    candidates whose text the generated token starts go on to the next position (a generated token that ends one
    candidate and starts a longer one, "bank" and "bank account", leaves it to the next token). Probabilities are
    conditional on the text before the answer, as generated. So a multi-token label sums its
    tokens' log-probabilities as far as the top lists reach; beyond a point where it leaves the generated path its
    remaining tokens are taken as certain. Comparison ignores case ("Neutral" and "neutral" parse alike).
    Candidates with no mass share the rest: ``log(max(rest / missing, 1e-6))``; ``label_logprob_rest`` is
    ``log(max(rest, 1e-6))`` with rest = 1 - the candidates' sum. None when the tokens do not spell the output up
    to the label.
    """
    offsets, text = [], ""
    for token, _, _ in tokens:
        offsets.append(len(text))
        text += token
    label_end = start + max(len(label) for label in labels)
    if not text.startswith(output[:min(label_end, len(output))]) or start >= len(text):
        return None
    first = max(k for k, offset in enumerate(offsets) if offset <= start and tokens[k][0])
    prefix = tokens[first][0][:start - offsets[first]].lower()
    remaining = {label: prefix + label.lower() for label in labels}
    mass = dict.fromkeys(labels, 0.0)
    path = 0.0
    for generated, generated_logprob, alternatives in tokens[first:]:
        if not remaining:
            break
        options = dict(alternatives)
        options.setdefault(generated, generated_logprob)
        chosen = generated.lower()
        going_on = {label for label, rest in remaining.items() if chosen and rest.startswith(chosen) and rest != chosen}
        for token, logprob in options.items():
            lowered = token.lower()
            owners = {label for label, rest in remaining.items()
                      if lowered and (_completes(lowered, rest)
                                      or token != generated and rest.startswith(lowered) and rest != lowered)}
            if token == generated and going_on:  # "bank" while "bank account" goes on: the next token decides
                owners = {label for label in owners if remaining[label] != lowered}
            if len(owners) == 1:
                mass[owners.pop()] += math.exp(path + logprob)
        deferred = {label: "" for label, rest in remaining.items() if going_on and rest == chosen}
        remaining = {**{label: remaining[label][len(chosen):] for label in going_on}, **deferred}
        path += generated_logprob
    for label, rest in remaining.items():  # the output ended right after a deferred label
        if not rest:
            mass[label] += math.exp(path)
    rest = max(0.0, 1.0 - sum(mass.values()))
    missing = [label for label in labels if mass[label] <= 0.0]
    values = {label: math.log(mass[label]) if mass[label] > 0.0 else math.log(max(rest / len(missing), FLOOR))
              for label in labels}
    return _fields(values, "top_logprobs", math.log(max(rest, FLOOR)))


def record_fields(task: Task, fields: dict[str, Any], reply: Any) -> dict[str, Any]:
    """The label fields for a one-output reply that carries scores or token log-probabilities ({} otherwise)."""
    labels = candidates(task, fields)
    if not labels or reply.error or len(reply.outputs) != 1:
        return {}
    scores = reply.label_scores[0] if reply.label_scores else None
    if scores:
        return from_scores(labels, scores)
    tokens = reply.token_logprobs[0] if reply.token_logprobs else None
    if tokens:
        output = reply.outputs[0]
        start = answer_start(output, task.parse_teacher(output, fields))
        if start is not None:
            return from_top_logprobs(labels, tokens, output, start) or {}
    return {}


async def score_after_rationales(task: Task, teacher: Any, jobs: list[Any], replies: list[Any]) -> None:
    """Local teachers (``teacher.score_candidates``): every candidate's teacher-forced log-probability after the
    teacher's own answer up to where its label begins (the rationale and the answer cue, in the prompt's format);
    set as ``reply.label_scores``. Whitespace before the label goes with the candidate (`` entailment``), as the
    model would write it. Replies without a parsed label get none."""
    queries, where = [], []
    for i, (job, reply) in enumerate(zip(jobs, replies)):
        labels = candidates(task, job.fields)
        if not labels or reply.error or len(reply.outputs) != 1:
            continue
        output = reply.outputs[0]
        start = answer_start(output, task.parse_teacher(output, job.fields))
        if start is None:
            continue
        head = output[:start].rstrip()
        queries.append((job.prompt, head, [output[len(head):start] + label for label in labels]))
        where.append((i, labels))
    if queries:
        for (i, labels), row in zip(where, await teacher.score_candidates(queries)):
            if row is not None:
                replies[i].label_scores = [dict(zip(labels, row))]


def settle(record: dict[str, Any], task: Task, fields: dict[str, Any]) -> dict[str, Any]:
    """After :func:`~stepdistill.teacher.generator.finalize`: vote shares for self-consistency records; the fields
    kept for ok and filtered records only."""
    if record.get("status") not in ("ok", "filtered"):
        for name in FIELDS:
            record.pop(name, None)
        return record
    labels = candidates(task, fields)
    if labels and record.get("outputs") and record.get("votes") is not None:
        record.update(from_votes(task, labels, record["votes"], fields))
    return record


def response_token_logprobs(choices: list[Any]) -> list[TeacherTokens | None] | None:
    """Each choice's tokens as (token, logprob, alternatives), from the chat format
    (``logprobs.content[j] = {token, logprob, top_logprobs: [{token, logprob}]}``) or the completions one
    (``logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}]}``); None when no choice has any."""

    def get(obj: Any, name: str) -> Any:  # typed response objects, or plain dicts (a batch answer unvalidated)
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    out: list[TeacherTokens | None] = []
    for choice in choices:
        logprobs = get(choice, "logprobs")
        content = get(logprobs, "content") if logprobs is not None else None
        if content:
            out.append([(str(get(entry, "token")), float(get(entry, "logprob")),
                         [(str(get(alt, "token")), float(get(alt, "logprob"))) for alt in get(entry, "top_logprobs") or []])
                        for entry in content])
        elif logprobs is not None and get(logprobs, "tokens"):
            tops = get(logprobs, "top_logprobs") or [None] * len(get(logprobs, "tokens"))
            out.append([(str(token), float(logprob), [(str(t), float(v)) for t, v in (top or {}).items()])
                        for token, logprob, top in zip(get(logprobs, "tokens"), get(logprobs, "token_logprobs"), tops)])
        else:
            out.append(None)
    return out if any(entry is not None for entry in out) else None
