"""Batching of tokenised training rows: the two-task collator, the length-grouped global-batch sampler, the
length-sorted micro-batches of one optimizer step and the length-sorted chunks a micro-batch can run in."""

from __future__ import annotations

import random
from typing import Any


def pad_rows(rows: list[list[int]], value: int):
    """Right-padded (rows, longest) long tensor (at least one column)."""
    import torch

    out = torch.full((len(rows), max([len(r) for r in rows], default=1) or 1), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def length_mask(rows: list[list[int]], width: int):
    """Attention mask of right-padded rows, from their lengths (a causal LM may pad with its own eos id)."""
    import torch

    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()


class MultiTaskCollator:
    """Pads the label task and, separately, the rationale task of the examples that have one (their targets are
    much longer than labels, so one shared padded batch would waste work on label rows)."""

    def __init__(self, pad_token_id: int, labels_follow_inputs: bool = False):
        self.pad_token_id = pad_token_id
        self.labels_follow_inputs = labels_follow_inputs  # causal rows: the soft-label rows repeat the prompt

    def _inputs(self, rows: list[list[int]]):
        ids = pad_rows(rows, self.pad_token_id)
        return ids, length_mask(rows, ids.shape[1])

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        with_rationale = [f for f in features if f["rationale_labels"]]
        input_ids, attention_mask = self._inputs([f["input_ids"] for f in features])
        rationale_input_ids, rationale_attention_mask = self._inputs([f["rationale_input_ids"] for f in with_rationale])
        soft = {}
        if "candidate_ids" in features[0]:  # soft labels: every candidate of every example (student/soft_labels.py)
            from .soft_labels import soft_label_batch

            soft = soft_label_batch(features, self.pad_token_id, self.labels_follow_inputs)
        return {
            **soft,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_rows([f["labels"] for f in features], -100),
            "rationale_input_ids": rationale_input_ids,
            "rationale_attention_mask": rationale_attention_mask,
            "rationale_labels": pad_rows([f["rationale_labels"] for f in with_rationale], -100),
            # the batch rows of the rationale task's rows (a shared encoder reuses the label task's encoder states)
            "rationale_rows": torch.tensor([i for i, f in enumerate(features) if f["rationale_labels"]],
                                           dtype=torch.long),
            "example_index": torch.tensor([f["example_index"] for f in features], dtype=torch.long),
        }


class GlobalBatchLengthSampler:
    """Random order in which each GLOBAL batch holds examples of similar length.

    Hand-written because transformers' LengthGroupedSampler groups per process, so its batches (and results)
    change with the device count; here the order depends only on (seed, epoch, global batch size)."""

    def __init__(self, lengths: list[int], global_batch: int, seed: int, group_batches: int = 16):
        self.lengths, self.global_batch, self.seed, self.group_batches = lengths, global_batch, seed, group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.global_batch * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            sorted_group = sorted(order[start:start + group], key=lambda i: -self.lengths[i])
            batches += [sorted_group[b:b + self.global_batch] for b in range(0, len(sorted_group), self.global_batch)]
        # a short final batch stays last so every other global batch is complete
        full, tail = [b for b in batches if len(b) == self.global_batch], [b for b in batches if len(b) < self.global_batch]
        rng.shuffle(full)
        for batch in full + tail:
            yield from batch


def length_sorted_micro_batches(micro_batches: list[dict[str, Any]], lengths, row, collate) -> list[dict[str, Any]]:
    """One optimizer step's micro-batches with their rows re-dealt longest first into micro-batches of the same
    sizes: the step holds the same examples (the same summed loss and update), and each micro-batch pads only to
    rows of similar length. ``lengths[i]``: the work of dataset row i; ``row(i)``: that row as the collator reads it."""
    indices = [i for batch in micro_batches for i in batch["example_index"].tolist()]
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    dealt, start = [], 0
    for batch in micro_batches:
        size = len(batch["example_index"])
        dealt.append(collate([row(i) for i in order[start:start + size]]))
        start += size
    return dealt


def default_length_chunks(device_type: str) -> int:
    """At most 4 chunks on a CPU with one torch thread (e-SNLI, tiny T5, batch 32: 1.3x faster steps). Otherwise 1:
    with two threads the smaller matrices lost what the padding saved (measured 0.95x); GPUs are unmeasured."""
    import torch

    return 4 if device_type == "cpu" and torch.get_num_threads() == 1 else 1


def length_sorted_chunks(input_lengths: list[int], target_lengths: list[int], max_chunks: int,
                         min_saving: float = 0.2) -> list[list[int]]:
    """Row groups of a batch: rows sorted by input length (longest first), the chunk whose halving saves most is
    halved while that cuts its padded area (rows x (longest input + longest target)) by ``min_saving`` or more, up
    to ``max_chunks`` groups. Batches of similar lengths stay whole: there, small chunks cost more than they save
    (the arithmetic demo: 1.3x slower steps in 4 fixed chunks)."""
    order = sorted(range(len(input_lengths)), key=lambda i: (-input_lengths[i], i))

    def area(rows: list[int]) -> int:
        return len(rows) * (max(input_lengths[r] for r in rows) + max(target_lengths[r] for r in rows))

    chunks = [order]
    while len(chunks) < max_chunks:
        best = None
        for index, rows in enumerate(chunks):
            if len(rows) < 2:
                continue
            half = len(rows) // 2
            saving = 1 - (area(rows[:half]) + area(rows[half:])) / area(rows)
            if saving >= min_saving and (best is None or saving > best[0]):
                best = (saving, index, rows[:half], rows[half:])
        if best is None:
            break
        _, index, first, second = best
        chunks[index:index + 1] = [first, second]
    return chunks
