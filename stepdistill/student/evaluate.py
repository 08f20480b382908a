"""Scoring a student: classification by ranking candidate labels by likelihood, free-form answers by generation.

Ranking costs about one forward pass per batch, far less than generating text and string-matching it: a seq2seq
student runs its encoder once and scores every candidate in one decoder pass; a causal student runs the shared
prompt once and reuses its KV cache for every candidate (see :mod:`.families`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..tasks import Task
from .examples import (label_first_candidate, label_first_label, missing_rationales, rationale_input_text,
                       usable_rationale)
from .families import family_of


def _autocast(device, bf16: bool):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _inference(model, bf16: bool):
    """No gradients, eval mode (restored afterwards), optional bf16 autocast. A model that is not a torch module
    (an ONNX export's sessions) has no modes to switch and runs as exported."""
    import torch

    if not isinstance(model, torch.nn.Module):
        if bf16:
            raise ValueError("bf16 autocast applies to PyTorch students; an ONNX export runs as exported "
                             "(fp32, or int8 with export --quantize int8)")
        with torch.no_grad():
            yield
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(model.device, bf16):
            yield
    finally:
        model.train(was_training)


def rank_scores(model, tokenizer, inputs: list[str], choices: list[list[str]], batch_size: int = 64,
                max_input_length: int = 512, bf16: bool = False, normalization: str = "sum",
                family=None, end: bool = True) -> list[list[float]]:
    """Log-likelihood of every candidate of every input: the sum over the candidate's tokens (end of sequence
    included; ``end=False``: not, the candidate is the start of a longer target), or with ``normalization="mean"``
    the per-token mean. ``family``: default from the model's config."""
    if len(inputs) != len(choices):
        raise ValueError(f"{len(inputs)} inputs but {len(choices)} candidate lists")
    family = family or family_of(model)
    with _inference(model, bf16):
        return family.rank_scores(model, tokenizer, inputs, choices, batch_size, max_input_length, normalization,
                                  **({} if end else {"end": False}))


def generate_texts(model, tokenizer, inputs: list[str], batch_size: int = 64, max_input_length: int = 512,
                   max_new_tokens: int = 64, bf16: bool = False, family=None) -> list[str]:
    """Greedy generation for every input, in input order."""
    family = family or family_of(model)
    with _inference(model, bf16):
        return family.generate(model, tokenizer, inputs, batch_size, max_input_length, max_new_tokens)


def predict_records(model, tokenizer, task: Task, records: list[dict[str, Any]], label_prefix: str = "[label] ",
                    rationale_prefix: str = "[rationale] ", batch_size: int = 64, max_input_length: int = 512,
                    max_target_length: int = 256, label_max_new_tokens: int = 32, rationales: bool = False,
                    bf16: bool = False, rank_normalization: str = "sum", family=None, method: str = "standard",
                    missing_rationale: str = "error", rationale_first: bool = False) -> list[dict[str, Any]]:
    """Predicted label (ranked when the record has candidates, else generated) and optionally a generated rationale.

    ``records`` need ``input`` and, for ranking, ``choices`` (None or missing: the task's ``choices`` or generation).
    ``method`` (the training method) says how to read the student: ``single-task`` generates rationale and label
    and the task's teacher parser reads the label (unparsable: prediction None); ``single-task-label-first`` ranks
    candidates as the start of its target (free-form: generates, the label is the text before the separator);
    ``rationale-input`` reads ``record["rationale"]`` appended to the input (a record without one is an error, or
    with ``missing_rationale="bare"`` read as its input alone).
    ``rationale_first`` (step-by-step students): generate each rationale first, then predict the label from the
    input with that rationale appended (as rationale-input reads it); the rationale is in each row's "rationale".
    """
    family = family or family_of(model)
    generated_rationales = None
    if rationale_first:
        if method != "step-by-step":
            raise ValueError(f"rationale-first prediction needs a step-by-step student (it has a rationale task), "
                             f"not method {method!r}")
        generated_rationales = generate_texts(model, tokenizer, [rationale_prefix + r["input"] for r in records],
                                              batch_size, max_input_length, max_target_length, bf16, family)
        records = [{**record, "input": rationale_input_text(record["input"], text.strip())}
                   for record, text in zip(records, generated_rationales)]
        rationales = False
    if method == "single-task":
        return _predict_single_task(model, tokenizer, task, records, label_prefix, batch_size, max_input_length,
                                    max_target_length + label_max_new_tokens, rationales, bf16, family)
    if method == "rationale-input":
        missing = missing_rationales(records)
        if missing and missing_rationale != "bare":
            raise ValueError(f"method rationale-input: {len(missing)} of {len(records)} examples have no rationale "
                             f"to append to the input (first: id {missing[0]})")
        records = [{**record, "input": rationale_input_text(record["input"], record["rationale"].strip())}
                   if usable_rationale(record) else record for record in records]
        rationales = False  # the student never generates rationales: it reads them
    label_first = method == "single-task-label-first"
    inputs = [label_prefix + record["input"] for record in records]
    choices = [record.get("choices") or (task.choices(record.get("fields") or {}) if not task.free_form else None)
               for record in records]
    ranked = [i for i, c in enumerate(choices) if c]
    generated = [i for i, c in enumerate(choices) if not c]
    out: list[dict[str, Any]] = [{"id": record.get("id"), "prediction": None} for record in records]
    if ranked:
        scored = [[label_first_candidate(c) for c in choices[i]] if label_first else choices[i] for i in ranked]
        scores = rank_scores(model, tokenizer, [inputs[i] for i in ranked], scored,
                             batch_size, max_input_length, bf16, rank_normalization, family, end=not label_first)
        for i, row in zip(ranked, scores):
            best = max(range(len(row)), key=row.__getitem__)
            # label-first scores are of "<label>." prefixes: kept apart from the plain ones that
            # accuracy_by_rank_normalization re-normalises by the plain candidates' lengths
            out[i].update(prediction=choices[i][best], **{"prefix_scores" if label_first else "scores":
                                                          dict(zip(choices[i], row))})
    if generated:
        texts = generate_texts(model, tokenizer, [inputs[i] for i in generated], batch_size, max_input_length,
                               max_target_length + label_max_new_tokens if label_first else label_max_new_tokens,
                               bf16, family)
        for i, text in zip(generated, texts):
            out[i]["prediction"] = label_first_label(text) if label_first else text
            if label_first:
                out[i]["output"] = text
    if label_first:
        rationales = False  # there is no rationale task to ask (a generated label-first text is in "output")
    if rationales:
        generated_rationales = generate_texts(model, tokenizer, [rationale_prefix + r["input"] for r in records],
                                              batch_size, max_input_length, max_target_length, bf16, family)
    for row, text in zip(out, generated_rationales or []):
        row["rationale"] = text
    return out


def _predict_single_task(model, tokenizer, task, records, label_prefix, batch_size, max_input_length, max_new_tokens,
                         rationales, bf16, family) -> list[dict[str, Any]]:
    """The single-task student writes ``<rationale> So the answer is <label>.`` (the task's answer format, at most
    ``max_new_tokens`` tokens); the task's teacher parser reads the label, None when it cannot."""
    texts = generate_texts(model, tokenizer, [label_prefix + record["input"] for record in records], batch_size,
                           max_input_length, max_new_tokens, bf16, family)
    out = []
    for record, text in zip(records, texts):
        parsed = task.parse_teacher(text, record.get("fields"))
        row = {"id": record.get("id"), "prediction": parsed.label, "output": text, "parse_error": parsed.error}
        if rationales:
            row["rationale"] = parsed.rationale
        out.append(row)
    return out


def evaluate_records(model, tokenizer, task: Task, records: list[dict[str, Any]], **options: Any
                     ) -> tuple[float, list[dict[str, Any]]]:
    """Label accuracy against ``record["label"]`` (gold) and per-example predictions (options: see predict_records)."""
    if not records:
        raise ValueError("nothing to evaluate: the split is empty")
    predictions = predict_records(model, tokenizer, task, records, **options)
    for record, row in zip(records, predictions):
        row["gold"] = record["label"]
        row["correct"] = row["prediction"] is not None and bool(  # unparsable output (single-task): wrong
            task.is_correct(row["prediction"], record["label"], record.get("fields")))
    return sum(row["correct"] for row in predictions) / len(predictions), predictions


def accuracy_by_rank_normalization(task: Task, records: list[dict[str, Any]], rows: list[dict[str, Any]], tokenizer,
                                   normalization: str) -> dict[str, Any] | None:
    """Accuracy of the ranked ``rows`` (``evaluate_records`` output) under both normalizations, from their one
    scoring pass: a candidate's summed and per-token mean log-probability differ by its token count alone. None when
    nothing was ranked."""
    from .models import encode_targets

    ranked = [(record, row) for record, row in zip(records, rows) if row.get("scores")]
    if not ranked:
        return None
    candidates = sorted({c for _, row in ranked for c in row["scores"]})
    lengths = {c: len(ids) for c, ids in zip(candidates, encode_targets(tokenizer, candidates))}
    correct = {"sum": 0, "mean": 0}
    for record, row in ranked:
        summed = {c: s * lengths[c] if normalization == "mean" else s for c, s in row["scores"].items()}
        for name, score in (("sum", summed), ("mean", {c: s / lengths[c] for c, s in summed.items()})):
            best = max(score, key=score.get)
            correct[name] += bool(task.is_correct(best, record["label"], record.get("fields")))
    return {"ranked": len(ranked), "used": normalization, **{k: v / len(ranked) for k, v in correct.items()}}


def rank_normalization_for(task: Task, configured: str | None) -> str:
    """The configured normalization, else the task's own (``Task.rank_normalization``)."""
    return configured or task.rank_normalization
