"""Soft labels: the label task learns the teacher's distribution over the candidate labels, not only its label.

    label_task = (1 - soft_weight) * CE(hard label, token mean) + soft_weight * T^2 * KL(p_teacher,T || p_student,T)

  - p_teacher,T = softmax(label_logprobs / T) over the example's candidates (``task.choices``), from the cache
    field ``label_logprobs`` (rationales.attach_rationales joins it; values need not sum to 1);
  - p_student,T = softmax(scores / T), the scores those of ranking (:meth:`families.*.rank_scores`): each candidate's
    sequence log-probability after ``<label prefix> + input``, summed or per-token mean (the run's
    rank_normalization), computed here with gradients, for seq2seq (the encoder once per example, as ranking) and
    causal students (one row per candidate);
  - the KL is summed over examples and divided by the number of soft-label examples in the WHOLE global batch (all
    micro-batches on all processes, counted in StepByStepTrainer._get_num_items_in_batch), as the token losses are
    by their global token counts: any micro-batch or device layout gives the same update;
  - T^2 keeps the soft term's gradients at the hard term's scale as T changes (Hinton et al., 2015).

Step-by-step then combines as before: alpha * label_task + (1 - alpha) * rationale_task. ``soft_weight``,
``temperature`` and ``alpha`` may follow schedules (:mod:`.schedules`).
"""

from __future__ import annotations

import math
from typing import Any

FIELD = "label_logprobs"
WHERE_FROM = ("caches from `stepdistill generate --label-logprobs true` with an API, HF or student: teacher "
              "carry it; the replayed PaLM outputs have none")


def check_task(task) -> None:
    """Free-form tasks have no candidate set to put a distribution on."""
    if task is None or task.free_form:
        name = getattr(task, "name", "?")
        raise ValueError(f"task {name}: free-form answers have no candidate labels, so no soft labels "
                         "(--soft-weight, method distill); use method standard or step-by-step without them")


def soft_target(record: dict[str, Any], label: str, task) -> tuple[dict[str, Any] | None, str | None]:
    """({"choices", "teacher" (log-probs in choice order), "gold_index" (the hard label's)}, None), or (None, reason)
    for an example without a usable teacher record. A usable record without the field is an error."""
    distribution = record.get(FIELD)
    if distribution is None:
        if record.get("teacher_error") is not None:  # the teacher failed here: hard label only, counted
            return None, record["teacher_error"]
        raise ValueError(f"example {record.get('id')}: its teacher record has no '{FIELD}' (soft labels: "
                         f"--soft-weight, method distill); {WHERE_FROM}")
    choices = record.get("choices") or task.choices(record.get("fields") or {})
    if not isinstance(distribution, dict) or set(distribution) != set(choices or []):
        raise ValueError(f"example {record.get('id')}: field '{FIELD}': keys must be exactly its candidates "
                         f"{sorted(choices or [])}, got {sorted(distribution) if isinstance(distribution, dict) else distribution!r}")
    values = [distribution[c] for c in choices]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"example {record.get('id')}: field '{FIELD}': values must be finite log-probabilities, "
                         f"got {values}")
    if label not in choices:
        raise ValueError(f"example {record.get('id')}: its label {label!r} is not one of its candidates {choices}")
    return {"choices": list(choices), "teacher": [float(v) for v in values], "gold_index": choices.index(label)}, None


def soft_label_batch(features: list[dict[str, Any]], pad_token_id: int, labels_follow_inputs: bool) -> dict[str, Any]:
    """The collated soft-label rows of a micro-batch: one training row per (example, candidate), in example order
    (row-major), the teacher's log-probs as a padded (examples, most candidates) table with its mask, the hard
    label's index, and ``soft_rows`` (the batch rows these examples are). Seq2seq: the candidates as decoder labels
    (the encoder reads the batch row once, :func:`seq2seq_candidate_scores`); causal: rows of the example's prompt,
    then the candidate (the training row layout), in ``candidate_input_ids``."""
    import torch

    from .collate import length_mask, pad_rows

    rows = [i for i, f in enumerate(features) if f["candidate_ids"]]
    inputs, labels = [], []
    for i in rows:
        feature = features[i]
        prompt = feature["input_ids"]
        if labels_follow_inputs:  # the prompt is the row's part without loss
            prompt = prompt[:sum(1 for t in feature["labels"] if t == -100)]
        for candidate in feature["candidate_ids"]:
            if labels_follow_inputs:
                inputs.append(prompt + candidate)
            labels.append([-100] * len(prompt) + candidate if labels_follow_inputs else candidate)
    width = max([len(features[i]["candidate_ids"]) for i in rows], default=1)
    teacher = torch.zeros((len(rows), width), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, i in enumerate(rows):
        values = features[i]["teacher_logprobs"]
        teacher[r, :len(values)] = torch.tensor(values, dtype=torch.float32)
        mask[r, :len(values)] = True
    causal = {}
    if labels_follow_inputs:
        input_ids = pad_rows(inputs, pad_token_id)
        causal = {"candidate_input_ids": input_ids, "candidate_attention_mask": length_mask(inputs, input_ids.shape[1])}
    return {
        **causal,
        "candidate_labels": pad_rows(labels, -100),
        "soft_rows": torch.tensor(rows, dtype=torch.long),
        "soft_teacher": teacher,
        "soft_mask": mask,
        "soft_gold": torch.tensor([features[i]["gold_index"] for i in rows], dtype=torch.long),
    }


def candidate_scores(family, model, input_ids, attention_mask, labels, normalization: str = "sum", unwrapped=None):
    """Each row's summed (or per-token mean) target log-probability, with gradients: ranking's score."""
    if family.labels_follow_inputs:  # the logit at position t predicts token t + 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return _row_scores(logits, labels[:, 1:], normalization)
    decoder_input_ids = (unwrapped or model).prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    return _row_scores(logits, labels, normalization)


def seq2seq_candidate_scores(model, inputs: dict[str, Any], normalization: str = "sum", unwrapped=None):
    """:func:`candidate_scores` of a seq2seq micro-batch's candidate rows with the encoder run ONCE per example (as
    ranking does), its states reused by every candidate's decoder pass. Both passes go through ``model`` (the
    DDP/FSDP wrapper), as the shared-encoder loss does."""
    import torch

    rows, mask = inputs["soft_rows"], inputs["soft_mask"]
    attention = inputs["attention_mask"][rows]
    width = max(1, int(attention.sum(1).max()))
    input_ids, attention = inputs["input_ids"][rows, :width], attention[:, :width]
    labels = inputs["candidate_labels"]
    decoder_input_ids = (unwrapped or model).prepare_decoder_input_ids_from_labels(labels=labels)
    counts = mask.sum(1)
    first = counts.cumsum(0) - counts  # each example's first candidate row: the encoder pass's decoder input
    encoded = model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=decoder_input_ids[first])
    row_of = torch.arange(len(rows), device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    logits = model(encoder_outputs=(encoded.encoder_last_hidden_state[row_of],), attention_mask=attention[row_of],
                   decoder_input_ids=decoder_input_ids).logits
    return _row_scores(logits, labels, normalization)


def _row_scores(logits, targets, normalization: str):
    """Summed (or per-token mean) log-probability of each row's targets (-100: not a target)."""
    import torch

    mask = targets.ne(-100)
    # log-softmax over the vocabulary at the target positions only (not at every prompt position)
    token_logprobs = torch.log_softmax(logits[mask].float(), -1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    row = torch.arange(len(targets), device=targets.device).unsqueeze(1).expand_as(targets)[mask]
    total = torch.zeros(len(targets), dtype=token_logprobs.dtype, device=targets.device).index_add(0, row,
                                                                                                   token_logprobs)
    if normalization == "mean":
        total = total / mask.sum(-1).clamp(min=1)
    return total


def kl_sum(student_scores, teacher_logprobs, mask, temperature: float):
    """sum over examples of KL(softmax(teacher / T) || softmax(student / T)), over each example's candidates
    (``mask``; padded columns count for nothing). ``student_scores`` and ``teacher_logprobs``: (examples, width)."""
    import torch

    log_student = torch.log_softmax((student_scores / temperature).masked_fill(~mask, float("-inf")), -1)
    log_teacher = torch.log_softmax((teacher_logprobs / temperature).masked_fill(~mask, float("-inf")), -1)
    terms = torch.where(mask, log_teacher.exp() * (log_teacher - log_student), torch.zeros_like(log_student))
    return terms.sum()


def soft_loss_sum(family, model, inputs: dict[str, Any], temperature: float, normalization: str, unwrapped=None,
                  sharded: bool = False):
    """(sum over the micro-batch's soft-label examples of the KL term (without T^2), their number). ``sharded``
    (FSDP, DeepSpeed): a micro-batch without any still runs one forward, weighted 0, as every rank must."""
    mask = inputs["soft_mask"]
    if mask.shape[0] == 0:
        count = inputs["soft_rows"].new_zeros(())
        if not sharded:
            return inputs["soft_teacher"].new_zeros(()), count
        scores = candidate_scores(family, model, inputs["input_ids"][:1], inputs["attention_mask"][:1],
                                  inputs["labels"][:1], normalization, unwrapped)
        return 0.0 * scores.sum(), count
    if family.labels_follow_inputs:
        flat = candidate_scores(family, model, inputs["candidate_input_ids"], inputs["candidate_attention_mask"],
                                inputs["candidate_labels"], normalization, unwrapped)
    else:
        flat = seq2seq_candidate_scores(model, inputs, normalization, unwrapped)
    scores = flat.new_zeros(mask.shape).masked_scatter(mask, flat)  # row-major: the collator's order
    return kl_sum(scores, inputs["soft_teacher"].to(flat.dtype), mask, temperature), inputs["soft_rows"].new_tensor(
        mask.shape[0])


def label_task_loss(hard_loss, soft_sum, n_soft, soft_weight: float, temperature: float):
    """(1 - w) * hard + w * T^2 * (KL sum / soft-label examples of the global batch)."""
    return (1 - soft_weight) * hard_loss + soft_weight * temperature ** 2 * soft_sum / n_soft
