"""Scoring a student: classification by ranking candidate labels by likelihood, free-form answers by generation.

Ranking runs the encoder ONCE per batch and reuses its output for every candidate of every example in one decoder
pass, so scoring three NLI labels costs about one short decoder pass more than a single forward, far less than
generating text and string-matching it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..tasks import Task
from .models import encode_targets  # candidates scored as the very targets the student was trained on


def _autocast(device, bf16: bool):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _encoded_batches(model, tokenizer, inputs: list[str], batch_size: int, max_input_length: int):
    """(input indices, tokenized batch on the model's device), batches of similar length (little padding);
    callers put results back in input order through the indices."""
    order = sorted(range(len(inputs)), key=lambda i: (len(inputs[i]), i))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        enc = tokenizer([inputs[i] for i in batch], padding=True, truncation=True,
                        max_length=max_input_length, return_tensors="pt").to(model.device)
        yield batch, enc


@contextlib.contextmanager
def _inference(model, bf16: bool):
    """No gradients, eval mode (restored afterwards), optional bf16 autocast."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(model.device, bf16):
            yield
    finally:
        model.train(was_training)


def rank_scores(model, tokenizer, inputs: list[str], choices: list[list[str]], batch_size: int = 64,
                max_input_length: int = 512, bf16: bool = False) -> list[list[float]]:
    """Log-likelihood (sum over the candidate's tokens, end of sequence included) of every candidate of every input."""
    import torch

    if len(inputs) != len(choices):
        raise ValueError(f"{len(inputs)} inputs but {len(choices)} candidate lists")
    device = model.device
    candidates = sorted({c for cs in choices for c in cs})
    target_ids: dict[str, list[int]] = dict(zip(candidates, encode_targets(tokenizer, candidates)))
    scores: list[list[float]] = [[] for _ in inputs]
    with _inference(model, bf16):
        for batch, enc in _encoded_batches(model, tokenizer, inputs, batch_size, max_input_length):
            hidden = model.get_encoder()(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
            rows = [(b, c) for b, i in enumerate(batch) for c in choices[i]]
            longest = max(len(target_ids[c]) for _, c in rows)
            labels = torch.full((len(rows), longest), -100, dtype=torch.long)
            for r, (_, candidate) in enumerate(rows):
                ids = target_ids[candidate]
                labels[r, :len(ids)] = torch.tensor(ids)
            labels = labels.to(device)
            row_of = torch.tensor([b for b, _ in rows], device=device)
            logits = model(encoder_outputs=(hidden[row_of],), attention_mask=enc.attention_mask[row_of],
                           decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            mask = labels.ne(-100)
            token_scores = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            row_scores = token_scores.sum(-1).tolist()
            for (b, _), score in zip(rows, row_scores):
                scores[batch[b]].append(score)
    return scores


def generate_texts(model, tokenizer, inputs: list[str], batch_size: int = 64, max_input_length: int = 512,
                   max_new_tokens: int = 64, bf16: bool = False) -> list[str]:
    """Greedy generation for every input, in input order."""
    outputs: list[str] = [""] * len(inputs)
    with _inference(model, bf16):
        for batch, enc in _encoded_batches(model, tokenizer, inputs, batch_size, max_input_length):
            generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text.strip()
    return outputs


def predict_records(model, tokenizer, task: Task, records: list[dict[str, Any]], label_prefix: str = "[label] ",
                    rationale_prefix: str = "[rationale] ", batch_size: int = 64, max_input_length: int = 512,
                    max_target_length: int = 256, label_max_new_tokens: int = 32, rationales: bool = False,
                    bf16: bool = False) -> list[dict[str, Any]]:
    """Predicted label (ranked when the record has candidates, else generated) and optionally a generated rationale.

    ``records`` need ``input`` and, for ranking, ``choices`` (None or missing: the task's ``choices`` or generation).
    """
    inputs = [label_prefix + record["input"] for record in records]
    choices = [record.get("choices") or (task.choices(record.get("fields") or {}) if not task.free_form else None)
               for record in records]
    ranked = [i for i, c in enumerate(choices) if c]
    generated = [i for i, c in enumerate(choices) if not c]
    out: list[dict[str, Any]] = [{"id": record.get("id"), "prediction": None} for record in records]
    if ranked:
        scores = rank_scores(model, tokenizer, [inputs[i] for i in ranked], [choices[i] for i in ranked],
                             batch_size, max_input_length, bf16)
        for i, row in zip(ranked, scores):
            best = max(range(len(row)), key=row.__getitem__)
            out[i].update(prediction=choices[i][best], scores=dict(zip(choices[i], row)))
    if generated:
        texts = generate_texts(model, tokenizer, [inputs[i] for i in generated], batch_size, max_input_length,
                               label_max_new_tokens, bf16)
        for i, text in zip(generated, texts):
            out[i]["prediction"] = text
    if rationales:
        texts = generate_texts(model, tokenizer, [rationale_prefix + record["input"] for record in records],
                               batch_size, max_input_length, max_target_length, bf16)
        for row, text in zip(out, texts):
            row["rationale"] = text
    return out


def evaluate_records(model, tokenizer, task: Task, records: list[dict[str, Any]], **options: Any
                     ) -> tuple[float, list[dict[str, Any]]]:
    """Label accuracy against ``record["label"]`` (gold) and per-example predictions (options: see predict_records)."""
    if not records:
        raise ValueError("nothing to evaluate: the split is empty")
    predictions = predict_records(model, tokenizer, task, records, **options)
    for record, row in zip(records, predictions):
        row["gold"] = record["label"]
        row["correct"] = bool(task.is_correct(row["prediction"], record["label"], record.get("fields")))
    return sum(row["correct"] for row in predictions) / len(predictions), predictions
