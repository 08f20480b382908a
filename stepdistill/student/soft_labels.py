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
    """The collated label-task rows of a micro-batch with soft labels: the candidate rows (each soft-label example's
    candidates; each other example with a label target, its label), in batch-row order, with ``candidate_rows`` (the
    batch row of each), ``candidate_slots`` (its column in the soft table; -1: a hard-label-only row) and
    ``candidate_hard`` (its tokens are the example's hard target: the gold candidate, or the label of a row without
    a soft target); the teacher's log-probs as a padded (soft-label examples, most candidates) table with its mask,
    ``soft_rows`` (the batch rows of the soft-label examples) and ``labels_are_gold`` (every
    soft-label example's label tokens are its gold candidate's, so the candidate rows give the hard loss too).
    Seq2seq: the rows are decoder labels (the encoder reads each batch row once); causal: the example's prompt, then
    the candidate (the training row layout), in ``candidate_input_ids``."""
    import torch

    from .collate import length_mask, pad_rows

    soft_rows = [i for i, f in enumerate(features) if f["candidate_ids"]]
    inputs, labels, rows, slots, hard = [], [], [], [], []
    labels_are_gold = True
    for i, feature in enumerate(features):
        prompt_length = sum(1 for t in feature["labels"] if t == -100) if labels_follow_inputs else 0
        prompt = feature["input_ids"][:prompt_length]
        target = feature["labels"][prompt_length:] if labels_follow_inputs else feature["labels"]
        if feature["candidate_ids"]:
            candidates = feature["candidate_ids"]
            labels_are_gold &= target == candidates[feature["gold_index"]]
        elif any(t != -100 for t in target):
            candidates = [target]
        else:  # a further sampled rationale's row: no label target
            continue
        for slot, candidate in enumerate(candidates):
            inputs.append(prompt + candidate)
            labels.append([-100] * len(prompt) + candidate)
            rows.append(i)
            slots.append(slot if feature["candidate_ids"] else -1)
            hard.append(slot == feature["gold_index"] if feature["candidate_ids"] else True)
    width = max([len(features[i]["candidate_ids"]) for i in soft_rows], default=1)
    teacher = torch.zeros((len(soft_rows), width), dtype=torch.float32)
    mask = torch.zeros((len(soft_rows), width), dtype=torch.bool)
    for r, i in enumerate(soft_rows):
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
        "candidate_rows": torch.tensor(rows, dtype=torch.long),
        "candidate_slots": torch.tensor(slots, dtype=torch.long),
        "candidate_hard": torch.tensor(hard, dtype=torch.bool),
        "labels_are_gold": torch.tensor(labels_are_gold),
        "soft_rows": torch.tensor(soft_rows, dtype=torch.long),
        "soft_teacher": teacher,
        "soft_mask": mask,
    }


def label_task_sums(family, model, inputs: dict[str, Any], temperature: float, normalization: str, unwrapped=None,
                    chunks: int = 1):
    """(hard cross-entropy sum, hard target tokens, KL sum (without T^2), soft-label examples) of a micro-batch's
    label task in ONE pass over its candidate rows (``labels_are_gold``): the gold candidate's row is the label
    row, so the hard loss needs no pass of its own, and a seq2seq student encodes each input once for all its
    candidates. The rows run in at most ``chunks`` length-sorted chunks, as :func:`.loss.token_loss_sum`."""
    from .loss import token_loss_sum

    def chunk_sums(model, input_ids, attention_mask, labels, unwrapped, rows=None):
        return _candidate_sums(family, model, inputs, rows, temperature, normalization, unwrapped, hard=True)

    return token_loss_sum(family, model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], chunks,
                          unwrapped, pass_sums=chunk_sums, pass_rows=True)


def soft_loss_sum(family, model, inputs: dict[str, Any], temperature: float, normalization: str, unwrapped=None,
                  sharded: bool = False):
    """(KL sum over the micro-batch's soft-label examples (without T^2), their number), for a label task whose hard
    loss comes from its own pass (online token KD, labels that are not the gold candidate's tokens). ``sharded``
    (FSDP, DeepSpeed): a micro-batch without any still runs one forward, weighted 0, as every rank must."""
    if inputs["soft_rows"].numel() == 0 and not sharded:
        return inputs["soft_teacher"].new_zeros(()), inputs["soft_rows"].new_zeros(())
    return _candidate_sums(family, model, inputs, None, temperature, normalization, unwrapped, hard=False)[2:]


def _candidate_sums(family, model, inputs, rows, temperature, normalization, unwrapped, hard: bool):
    """(hard CE sum, hard tokens, KL sum, soft-label examples) over the candidate rows of the batch rows ``rows``
    (None: all); ``hard=False``: the soft-label examples' rows only."""
    import torch

    batch_rows, slots = inputs["candidate_rows"], inputs["candidate_slots"]
    device, n_batch = batch_rows.device, len(inputs["input_ids"])
    chunk = torch.arange(n_batch, device=device) if rows is None else torch.tensor(rows, dtype=torch.long,
                                                                                    device=device)
    position = torch.full((n_batch,), -1, dtype=torch.long, device=device)
    position[chunk] = torch.arange(len(chunk), device=device)
    wanted = position[batch_rows] >= 0
    if not hard:
        wanted &= slots >= 0
    mine = wanted.nonzero().squeeze(1)
    mine = mine[torch.sort(position[batch_rows[mine]], stable=True).indices]  # grouped by example, chunk order
    zero = inputs["soft_teacher"].new_zeros(())
    if mine.numel() == 0:  # nothing to score: one plain pass, weighted 0, keeps every process's forwards in step
        total, _ = family.loss_sum(model, inputs["input_ids"][chunk[:1]], inputs["attention_mask"][chunk[:1]],
                                   inputs["labels"][chunk[:1]], unwrapped)
        return 0.0 * total, inputs["soft_rows"].new_zeros(()), 0.0 * total, inputs["soft_rows"].new_zeros(())
    labels = inputs["candidate_labels"][mine]
    if family.labels_follow_inputs:  # the logit at position t predicts token t + 1
        attention = inputs["candidate_attention_mask"][mine]
        width = max(1, int(attention.sum(1).max()))
        logits = model(input_ids=inputs["candidate_input_ids"][mine, :width],
                       attention_mask=attention[:, :width]).logits[:, :-1]
        sums, counts = _row_sums(logits, labels[:, 1:width])
    else:
        sums, counts = _seq2seq_row_sums(model, inputs, batch_rows[mine], labels, unwrapped)
    is_hard = inputs["candidate_hard"][mine]
    hard_sum, hard_tokens = -sums[is_hard].sum(), counts[is_hard].sum()
    soft = slots[mine] >= 0
    if not soft.any():
        return hard_sum, hard_tokens, zero, inputs["soft_rows"].new_zeros(())
    example_of = torch.full((n_batch,), -1, dtype=torch.long, device=device)
    example_of[inputs["soft_rows"]] = torch.arange(len(inputs["soft_rows"]), device=device)
    examples = example_of[batch_rows[mine][soft]]
    scores = sums[soft] / counts[soft].clamp(min=1) if normalization == "mean" else sums[soft]
    mask = inputs["soft_mask"]
    table = torch.zeros(mask.shape, dtype=scores.dtype, device=device).index_put((examples, slots[mine][soft]), scores)
    present = torch.unique(examples)
    kl = kl_sum(table[present], inputs["soft_teacher"][present].to(scores.dtype), mask[present], temperature)
    return hard_sum, hard_tokens, kl, inputs["soft_rows"].new_tensor(len(present))


def _seq2seq_row_sums(model, inputs, batch_rows, labels, unwrapped):
    """Each candidate row's (target log-probability sum, target tokens), the encoder run once per batch row (rows
    grouped by it): its pass decodes the row's first candidate, and the other candidates reuse its states. Both
    passes go through ``model`` (the DDP/FSDP wrapper), as the shared-encoder loss does."""
    import torch

    labels = labels[:, :max(1, int(labels.ne(-100).sum(1).max()))]
    decoder_input_ids = (unwrapped or model).prepare_decoder_input_ids_from_labels(labels=labels)
    first = torch.ones(len(batch_rows), dtype=torch.bool, device=batch_rows.device)
    first[1:] = batch_rows[1:] != batch_rows[:-1]
    attention = inputs["attention_mask"][batch_rows[first]]
    width = max(1, int(attention.sum(1).max()))
    attention = attention[:, :width]
    rest = ~first
    encoded = model(input_ids=inputs["input_ids"][batch_rows[first], :width], attention_mask=attention,
                    decoder_input_ids=decoder_input_ids[first], use_cache=bool(rest.any()))
    first_sums, first_counts = _row_sums(encoded.logits, labels[first])
    sums = first_sums.new_zeros(len(batch_rows)).index_add(0, first.nonzero().squeeze(1), first_sums)
    counts = first_counts.new_zeros(len(batch_rows)).index_add(0, first.nonzero().squeeze(1), first_counts)
    if rest.any():
        which = first.cumsum(0)[rest] - 1  # each other candidate's encoded row
        logits = model(encoder_outputs=(encoded.encoder_last_hidden_state[which],), attention_mask=attention[which],
                       decoder_input_ids=decoder_input_ids[rest], **_cross_attention_reuse(encoded, which)).logits
        rest_sums, rest_counts = _row_sums(logits, labels[rest])
        sums = sums.index_add(0, rest.nonzero().squeeze(1), rest_sums)
        counts = counts.index_add(0, rest.nonzero().squeeze(1), rest_counts)
    return sums, counts


def _cross_attention_reuse(encoded, which) -> dict[str, Any]:
    """``{"cache": ...}`` holding the first pass's cross-attention keys and values, one row per candidate row
    (``which``): the decoder then does not project the repeated encoder states again in every layer. {} where the
    model returned no encoder-decoder cache."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = encoded.get("cache", encoded.get("past_key_values"))
    if not isinstance(cache, EncoderDecoderCache):
        return {}
    cross = DynamicCache()
    for index, layer in enumerate(cache.cross_attention_cache.layers):
        cross.update(layer.keys[which], layer.values[which], index)
    return {"cache": EncoderDecoderCache(DynamicCache(), cross), "use_cache": False}


def _row_sums(logits, targets):
    """(summed log-probability of each row's targets, their number); -100: not a target."""
    import torch

    mask = targets.ne(-100)
    # log-softmax over the vocabulary at the target positions only (not at every prompt position)
    token_logprobs = torch.log_softmax(logits[mask].float(), -1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    row = torch.arange(len(targets), device=targets.device).unsqueeze(1).expand_as(targets)[mask]
    total = torch.zeros(len(targets), dtype=token_logprobs.dtype, device=targets.device).index_add(0, row,
                                                                                                   token_logprobs)
    return total, mask.sum(-1)


def kl_sum(student_scores, teacher_logprobs, mask, temperature: float):
    """sum over examples of KL(softmax(teacher / T) || softmax(student / T)), over each example's candidates
    (``mask``; padded columns count for nothing). ``student_scores`` and ``teacher_logprobs``: (examples, width)."""
    import torch

    log_student = torch.log_softmax((student_scores / temperature).masked_fill(~mask, float("-inf")), -1)
    log_teacher = torch.log_softmax((teacher_logprobs / temperature).masked_fill(~mask, float("-inf")), -1)
    terms = torch.where(mask, log_teacher.exp() * (log_teacher - log_student), torch.zeros_like(log_student))
    return terms.sum()


def label_task_loss(hard_loss, soft_sum, n_soft, soft_weight: float, temperature: float):
    """(1 - w) * hard + w * T^2 * (KL sum / soft-label examples of the global batch)."""
    return (1 - soft_weight) * hard_loss + soft_weight * temperature ** 2 * soft_sum / n_soft
