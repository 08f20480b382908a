"""The step-by-step loss, in one place:

    loss = alpha * label_loss + (1 - alpha) * rationale_loss

each task's loss the sum of its target tokens' cross-entropies divided by its target token count over the WHOLE
global batch (all gradient-accumulation micro-batches on all processes), so long rationales cannot swamp the label
loss and the update is the same on any number of devices. ``standard`` uses the label loss alone.
"""

from __future__ import annotations

from .collate import length_sorted_chunks


def token_loss_sum(family, model, input_ids, attention_mask, labels, chunks: int = 1, unwrapped=None,
                   pass_sums=None, pass_rows: bool = False):
    """(sum of the target tokens' cross-entropies, number of target tokens) of a right-padded batch.
    ``pass_sums``: another function of one chunk (``family.loss_sum``'s arguments) whose tuple of sums is summed
    over the chunks instead (:mod:`.online_kd`: the cross-entropy, tokens and the distillation terms);
    ``pass_rows``: it also gets ``rows=``, the chunk's row indices in the batch (None: all, in order;
    :mod:`.offline_kd` finds each row's stored teacher top-k by them).

    The rows run in at most ``chunks`` length-sorted chunks (:func:`length_sorted_chunks`), each cut to its own
    longest row: the sum is that of one padded batch (same examples, same update) without computing most of the
    padding (e-SNLI batches of 32, tiny T5: inputs padded as one batch are 1.8x the real tokens, 1.2x in 4 chunks).
    ``family``: the student's :mod:`.families` interface; ``unwrapped``: the model without its DDP/FSDP wrapper."""
    import torch

    input_lengths = attention_mask.sum(1)
    target_lengths = labels.ne(-100).sum(1)
    # causal rows hold their target inside the input: the input length is the whole row
    chunk_targets = torch.zeros_like(target_lengths) if family.labels_follow_inputs else target_lengths
    groups = length_sorted_chunks(input_lengths.tolist(), chunk_targets.tolist(), chunks) if chunks > 1 else []
    sums = None
    for rows in groups if len(groups) > 1 else [None]:  # one group: the batch as it is, rows in their own order
        rows = slice(None) if rows is None else torch.tensor(rows, device=input_ids.device)
        width = max(1, int(input_lengths[rows].max()))
        target_width = width if family.labels_follow_inputs else max(1, int(target_lengths[rows].max()))
        extra = {"rows": None if isinstance(rows, slice) else rows.tolist()} if pass_rows else {}
        chunk = (pass_sums or family.loss_sum)(model, input_ids[rows, :width], attention_mask[rows, :width],
                                               labels[rows, :target_width], unwrapped, **extra)
        sums = chunk if sums is None else tuple(a + b for a, b in zip(sums, chunk))
    return sums


def shared_encoder_loss_sums(family, model, tokenizer, input_ids, attention_mask, labels, rationale_rows,
                             rationale_labels, prefixes: tuple[str, str], chunks: int = 1, unwrapped=None):
    """((label sum, tokens), (rationale sum, tokens)) with one encoder pass per chunk for both tasks
    (``family.shared_loss_sums``), the rows in at most ``chunks`` length-sorted chunks as in :func:`token_loss_sum`.
    ``rationale_rows``: the batch rows that ``rationale_labels`` belong to, in order."""
    import torch

    input_lengths = attention_mask.sum(1)
    label_lengths = labels.ne(-100).sum(1)
    rationale_lengths = rationale_labels.ne(-100).sum(1)
    rationale_of = {row: j for j, row in enumerate(rationale_rows.tolist())}
    targets = [int(label_lengths[b]) + (int(rationale_lengths[rationale_of[b]]) if b in rationale_of else 0)
               for b in range(len(input_ids))]
    groups = length_sorted_chunks(input_lengths.tolist(), targets, chunks) if chunks > 1 else []
    sums = None
    for rows in groups if len(groups) > 1 else [list(range(len(input_ids)))]:
        index = torch.tensor(rows, device=input_ids.device)
        mine = [(position, rationale_of[b]) for position, b in enumerate(rows) if b in rationale_of]
        positions = torch.tensor([p for p, _ in mine], dtype=torch.long, device=input_ids.device)
        which = torch.tensor([j for _, j in mine], dtype=torch.long, device=input_ids.device)
        width = max(1, int(input_lengths[index].max()))
        rationale_width = max(1, int(rationale_lengths[which].max())) if mine else 1
        chunk = family.shared_loss_sums(model, tokenizer, input_ids[index, :width], attention_mask[index, :width],
                                        labels[index, :max(1, int(label_lengths[index].max()))], positions,
                                        rationale_labels[which, :rationale_width], *prefixes, unwrapped)
        sums = chunk if sums is None else tuple((a[0] + b[0], a[1] + b[1]) for a, b in zip(sums, chunk))
    return sums


def step_by_step_loss(label_sum, rationale_sum, n_label, n_rationale, alpha: float, two_tasks: bool):
    """(loss, label_loss, rationale_loss) from the summed cross-entropies and the token counts to divide by."""
    label_loss, rationale_loss = label_sum / n_label, rationale_sum / n_rationale
    return task_mix(label_loss, rationale_loss, alpha, two_tasks), label_loss, rationale_loss


def task_mix(label_loss, rationale_loss, alpha: float, two_tasks: bool):
    """The step-by-step total: ``alpha * label + (1 - alpha) * rationale``, or the label task alone."""
    return alpha * label_loss + (1 - alpha) * rationale_loss if two_tasks else label_loss
