"""Offline token-level distillation from the cache (issue 24, item 3): ``--token-kd-source cache`` distils the
teacher's top-k log-probabilities per generated token (``generate --token-logprobs K``, the cache's ``token_topk``;
``teacher_token_topk`` on a data-layer record) into the RATIONALE task, where teacher and student share a
vocabulary. No teacher runs during training.

Vocabulary: every stored token string (generated and alternatives) must be a token of the student's tokenizer
(``get_vocab()``); else one ``error:`` line names the record, the token and both tokenizers. (The tokenizer's *name*
is not compared: one tokenizer lives under many paths; its tokens are what must agree.)

Alignment: the student's rationale target is its own tokenisation of the rationale, a prefix of the teacher's
completion. Both token sequences are laid out as strings (token strings concatenated; the student's leading and
trailing special tokens left out) and the student's is found in the teacher's; a student token aligns with the
teacher position holding the same token string at the same place. Positions that do not align (another split of
the same text, the end-of-sequence token, text beyond the stored positions) or whose top list holds fewer than k
distinct tokens are skipped: they keep their cross-entropy alone and are counted in results.json
(``token_kd_alignment``).

Per aligned token, the divergence (:func:`.kd.token_divergence`: fkl, rkl or jsd with beta, T^2) over the top-k
support (k: the smallest ``k`` of the training records, where caches of several K are mixed), ``--token-kd-rest``:

  ``renorm``  the teacher's top-k renormalised against the student's logits gathered at those ids, softmaxed
              over the k (both distributions restricted to the support);
  ``bucket``  k + 1 buckets: the top-k as they are, plus the rest (teacher: 1 - sum of its top-k, at least 1e-6;
              student: its full-vocabulary mass outside the k ids).

The rationale task's loss is, per target token, ``CE`` where skipped and ``(1 - W) * CE + W * KD`` where aligned,
summed and divided by the rationale target-token count of the whole global batch, as the cross-entropy is
(:mod:`.loss`): any micro-batch or device split gives the same update. The label task is unchanged.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

RESTS = ("renorm", "bucket")
FLOOR = 1e-6  # the least rest mass the teacher is given (its log would be -inf)


def offline_enabled(config) -> bool:
    return config.token_kd_source == "cache"


def align(student_tokens: list[str], teacher_tokens: list[str], special: set[str] = frozenset()) -> list[int | None]:
    """For each student token, the teacher position with the same token string at the same place of the text laid
    out from the tokens (None: no such position). Hand-written: the tokens of one vocabulary compared as strings."""
    starts, text = [], ""
    for token in teacher_tokens:
        starts.append(len(text))
        text += token
    at_start = {start: i for i, start in enumerate(starts)}
    # special tokens before and after the text (bos, eos) are no text; inside it (an <unk>) they are tokens as any
    first = next((j for j, token in enumerate(student_tokens) if token not in special), len(student_tokens))
    last = max((j for j, token in enumerate(student_tokens) if token not in special), default=-1)
    offsets, spelled = [], ""
    for j, token in enumerate(student_tokens):
        outside = j < first or j > last
        offsets.append(None if outside else len(spelled))
        spelled += "" if outside else token
    if not spelled:
        return [None] * len(student_tokens)
    base = text.find(spelled)
    # the first tokens may be split otherwise (a leading space joined to the text before): place the rest, at
    # most 3 tokens in (past that the texts differ)
    skip = 0
    while base < 0 and skip + 1 < min(len(student_tokens), 4):
        skip += 1
        rest = offsets[skip]
        if rest is None:
            continue
        found = text.find(spelled[rest:])
        base = found - rest if found >= 0 else -1
    if base < 0:
        return [None] * len(student_tokens)
    out: list[int | None] = []
    for token, offset in zip(student_tokens, offsets):
        i = at_start.get(base + offset) if offset is not None else None
        out.append(i if i is not None and teacher_tokens[i] == token else None)
    return out


def topk_divergence(student_logits, teacher_ids, teacher_logprobs, rest: str = "renorm", divergence: str = "fkl",
                    beta: float = 0.5, temperature: float = 1.0):
    """Per-token divergence over the top-k support (see the module docstring): ``student_logits`` (tokens, vocab),
    ``teacher_ids`` / ``teacher_logprobs`` (tokens, k)."""
    import torch

    from .kd import token_divergence

    student = student_logits.float()
    teacher = teacher_logprobs.detach().float()
    if rest == "renorm":
        return token_divergence(student.gather(-1, teacher_ids), teacher, divergence, beta, temperature)
    if rest != "bucket":
        raise ValueError(f"rest must be one of {RESTS}, got {rest!r}")
    full = torch.logsumexp(student, -1, keepdim=True)
    inside = student.gather(-1, teacher_ids) - full
    outside = torch.logsumexp(student.scatter(-1, teacher_ids, float("-inf")), -1, keepdim=True) - full
    teacher_rest = torch.log((1 - teacher.exp().sum(-1, keepdim=True)).clamp(min=FLOOR))
    return token_divergence(torch.cat([inside, outside], -1), torch.cat([teacher, teacher_rest], -1), divergence,
                            beta, temperature)


def _check_record(topk: dict[str, Any], vocabulary: dict[str, int], tokenizer, example_id: str) -> None:
    """The field's shape (one ValueError naming the record), then every token in the student's vocabulary."""
    where = f"option --token-kd-source cache: record {example_id}: field token_topk"
    try:
        tokens, logprobs, chosen = topk["tokens"], topk["logprobs"], topk["chosen"]
        int(topk["k"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: expected k, chosen, tokens and logprobs (generate --token-logprobs K)") from None
    if not (len(tokens) == len(logprobs) == len(chosen)):
        raise ValueError(f"{where}: chosen, tokens and logprobs differ in length ({len(chosen)}, {len(tokens)}, "
                         f"{len(logprobs)})")
    for position, (row, values) in enumerate(zip(tokens, logprobs)):
        if len(row) != len(values):
            raise ValueError(f"{where}: position {position}: {len(row)} tokens but {len(values)} logprobs")
    for token in [*topk["chosen"], *(t for row in topk["tokens"] for t in row)]:
        if token not in vocabulary:
            raise ValueError(
                f"option --token-kd-source cache: record {example_id}: the teacher's token {token!r} (tokenizer "
                f"{topk.get('tokenizer')!r}) is not a token of the student's tokenizer "
                f"({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r}); offline token "
                "distillation needs the same vocabulary")


def build_alignment(examples: list[dict[str, Any]], records: list[dict[str, Any]], dataset, tokenizer,
                    family) -> tuple[dict[int, tuple[Any, Any, Any]], dict[str, int]]:
    """Per training row with a rationale (its dataset index): tensors of its aligned tokens' target-token
    ordinals (m,), teacher top-k ids (m, k) and log-probabilities (m, k); and the counts of what aligned and what
    was skipped why."""
    import torch

    by_id = {str(record["id"]): record.get("teacher_token_topk") for record in records}
    vocabulary = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    # caches of several --token-logprobs K: every row uses the smallest K (the lists are most likely first)
    k = min((int(topk["k"]) for topk in by_id.values() if topk), default=0)
    table, counts = {}, Counter()
    for i, example in enumerate(examples):
        if example["rationale"] is None:
            continue
        labels = dataset[i]["rationale_labels"]
        targets = [t for t in (labels[1:] if family.labels_follow_inputs else labels) if t != -100]
        counts["rationale_tokens"] += len(targets)
        topk = by_id.get(str(example["id"]))
        if not topk:
            counts["examples_without_token_topk"] += 1
            counts["skipped_no_token_topk"] += len(targets)
            continue
        _check_record(topk, vocabulary, tokenizer, str(example["id"]))
        ordinals, ids, logprobs = [], [], []
        for j, position in enumerate(align(tokenizer.convert_ids_to_tokens(targets), topk["chosen"], special)):
            if position is None:
                counts["skipped_unaligned"] += 1
            elif len(set(topk["tokens"][position][:k])) < k:
                counts["skipped_short_top_k"] += 1
            else:
                ordinals.append(j)
                ids.append([vocabulary[token] for token in topk["tokens"][position][:k]])
                logprobs.append(topk["logprobs"][position][:k])
        counts["aligned"] += len(ordinals)
        if ordinals:  # tensors once here, not at every step
            table[i] = (torch.tensor(ordinals), torch.tensor(ids), torch.tensor(logprobs, dtype=torch.float32))
    if counts["rationale_tokens"] and not counts["aligned"]:
        raise ValueError("option --token-kd-source cache: no rationale token of any training example aligns with "
                         "the teacher's stored tokens (generate the cache with --token-logprobs K, by a teacher "
                         "with the student's tokenizer)")
    return table, {name: counts[name] for name in ("rationale_tokens", "aligned", "skipped_unaligned",
                                                   "skipped_short_top_k", "skipped_no_token_topk",
                                                   "examples_without_token_topk")}


class OfflineDistiller:
    """The aligned teacher top-k of the training rows and the pending rationale terms of one ``compute_loss``.
    The trainer tells it the dataset indices of a batch's rationale rows (:meth:`set_rows`), and each length chunk
    of the rationale pass its rows in the batch (``token_loss_sum(..., pass_rows=True)``)."""

    offline = True

    def __init__(self, config, table, counts, family):
        self.config = config
        self.family = family
        self.table = table
        self.counts = counts
        self.rows: list[int] = []
        self._aligned = 0  # aligned tokens of the pass under way (its chunks summed), for the log
        self.pending: dict[str, tuple[Any, Any, int]] = {}
        self.log_names = ["rationale_token_kd_loss"]

    def set_rows(self, inputs) -> None:
        """The dataset indices of a batch's rationale rows, in their order."""
        self.rows = inputs["example_index"][inputs["rationale_rows"]].tolist()
        self._aligned = 0

    def chunk_sums(self, model, input_ids, attention_mask, labels, unwrapped=None, rows=None):
        """(CE sum, target tokens, KD sum over the aligned tokens, their CE sum) of a chunk of rationale rows
        (``rows``: their indices in the batch; None: all, in order); the aligned-token count summed for the log."""
        import torch
        import torch.nn.functional as F

        logits, targets, per_row = self._forward(model, input_ids, attention_mask, labels, unwrapped)
        ce_each = F.cross_entropy(logits.float(), targets, reduction="none")
        starts = [0] + torch.cumsum(per_row, 0).tolist()[:-1]
        chunk_rows = self.rows if rows is None else [self.rows[r] for r in rows]
        entries = [(start, self.table[row]) for start, row in zip(starts, chunk_rows) if row in self.table]
        zero = ce_each.sum() * 0
        if not entries:
            return ce_each.sum(), targets.new_tensor(len(targets)), zero, zero
        device = logits.device
        index = torch.cat([entry[0] + start for start, entry in entries]).to(device)
        kd = topk_divergence(logits[index], torch.cat([entry[1] for _, entry in entries]).to(device),
                             torch.cat([entry[2] for _, entry in entries]).to(device), self.config.token_kd_rest,
                             self.config.kd_divergence, self.config.jsd_beta, self.config.kd_temperature)
        self._aligned += len(index)
        return ce_each.sum(), targets.new_tensor(len(targets)), kd.sum(), ce_each[index].sum()

    def _forward(self, model, input_ids, attention_mask, labels, unwrapped=None):
        """(logits at the target tokens, target ids, target tokens per row), rows in order."""
        if self.family.labels_follow_inputs:  # causal: the logit at position t predicts token t + 1
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
            labels = labels[:, 1:]
        else:
            base = unwrapped if unwrapped is not None else model
            decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = model(input_ids=input_ids, attention_mask=attention_mask,
                           decoder_input_ids=decoder_input_ids).logits
        keep = labels.ne(-100)
        return logits[keep], labels[keep], keep.sum(1)

    def record(self, task: str, kd, ce_aligned, count) -> None:
        self.pending[task] = (kd, ce_aligned, self._aligned)
        self._aligned = 0

    def compose(self, label_sum, rationale_sum, log: dict[str, list[float]] | None):
        w = self.config.token_kd_weight
        if "rationale" in self.pending:
            kd, ce_aligned, aligned = self.pending["rationale"]
            rationale_sum = rationale_sum - w * ce_aligned + w * kd
            if log is not None and aligned:
                log["rationale_token_kd_loss"].append((kd / aligned).item())
        self.pending = {}
        return [label_sum, rationale_sum]

    def without_projections(self, model):
        return contextlib.nullcontext()

    def timing(self) -> dict[str, Any]:
        """What results.json records: the settings and the alignment counts."""
        config = self.config
        return {"kd": {"source": "cache", "token_kd_weight": config.token_kd_weight,
                       "divergence": config.kd_divergence, "jsd_beta": config.jsd_beta,
                       "temperature": config.kd_temperature, "rest": config.token_kd_rest},
                "token_kd_alignment": self.counts}


def build_offline_distiller(config, examples, records, dataset, tokenizer, family) -> OfflineDistiller | None:
    """The distiller of a run with ``--token-kd-source cache`` (None without)."""
    if not offline_enabled(config):
        return None
    table, counts = build_alignment(examples, records, dataset, tokenizer, family)
    return OfflineDistiller(config, table, counts, family)
