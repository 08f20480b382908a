"""One student interface per model family: how training rows are tokenised, how the target tokens' loss is summed,
how candidate labels are scored and how text is generated. The trainer, evaluation and ``predict`` call only this.

  ``seq2seq``  encoder-decoder (T5, warm-started BERT pairs): the encoder reads the prompt, the decoder the target.
               With ``decoder_prefixes`` (``TrainConfig.shared_encoder``) a prompt's task prefix goes to the decoder
               instead, as forced tokens without loss: both tasks then read the same encoder input, and training
               runs the encoder once per batch for both.
  ``causal``   decoder-only (``AutoModelForCausalLM``: Llama, SmolLM2, ...): one row = prompt + separator + target
               + eos. Prompt and target are tokenised separately and their ids concatenated, so no BPE merge
               crosses the boundary and a candidate is scored on exactly the ids it was trained on; only target
               tokens carry loss.

Callers run scoring and generation under ``torch.no_grad()`` (see :mod:`.evaluate`).
"""

from __future__ import annotations

from typing import Any

from .models import encode_targets

PROMPT_SEPARATOR = "\n"  # ends every causal prompt, between the input text and the target
RANK_NORMALIZATIONS = ("sum", "mean")


def _length_batches(lengths: list[int], batch_size: int):
    """Index batches of similar length (little padding); callers restore input order through the indices."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _candidate_scores(token_logprobs, mask, normalization: str) -> list[float]:
    """Summed (or per-token mean) log-probability of each row's target tokens."""
    if normalization not in RANK_NORMALIZATIONS:
        raise ValueError(f"rank normalization must be one of {RANK_NORMALIZATIONS}, got {normalization!r}")
    total = (token_logprobs * mask).sum(-1)
    if normalization == "mean":
        total = total / mask.sum(-1).clamp(min=1)
    return total.tolist()


def _target_table(tokenizer, choices: list[list[str]], end: bool = True) -> dict[str, list[int]]:
    """Each candidate's target tokens; ``end=False`` drops the end token (the candidate is scored as the START of a
    longer target, e.g. the label-first ablation's ``<label>. <rationale>``)."""
    candidates = sorted({c for cs in choices for c in cs})
    return {c: ids if end else ids[:-1] for c, ids in zip(candidates, encode_targets(tokenizer, candidates))}


class Seq2SeqFamily:
    name = "seq2seq"
    labels_follow_inputs = False  # labels are the decoder's own sequence, not aligned with input_ids

    def __init__(self, decoder_prefixes: tuple[str, ...] = ()):
        self.decoder_prefixes = tuple(decoder_prefixes)
        self._prefix_ids: dict[tuple[int, str], list[int]] = {}  # tokenised once, not at every training step

    def split_prompt(self, prompt: str) -> tuple[str, str]:
        """(encoder text, decoder prefix): the prompt's task prefix moves to the decoder with ``decoder_prefixes``."""
        for prefix in self.decoder_prefixes:
            if prompt.startswith(prefix):
                return prompt[len(prefix):], prefix
        return prompt, ""

    def prefix_ids(self, tokenizer, prefix: str) -> list[int]:
        """The decoder's forced tokens for a task prefix (no eos)."""
        if not prefix:
            return []
        key = (id(tokenizer), prefix)
        if key not in self._prefix_ids:
            self._prefix_ids[key] = tokenizer(prefix.strip(), add_special_tokens=False)["input_ids"]
        return self._prefix_ids[key]

    def _decoder_inputs(self, model, labels, prefix: list[int]):
        """(decoder input ids, number of forced positions before the targets): the targets shifted right, after the
        forced prefix tokens."""
        import torch

        if prefix:
            forced = torch.tensor(prefix, dtype=labels.dtype, device=labels.device).expand(labels.shape[0], -1)
            labels = torch.cat([forced, labels], 1)
        return model.prepare_decoder_input_ids_from_labels(labels=labels), len(prefix)

    def training_rows(self, tokenizer, prompts: list[str], targets: list[str], max_input_length: int,
                      max_target_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """(encoder input ids, decoder labels) per example."""
        if not prompts:
            return [], []
        inputs = tokenizer(prompts, truncation=True, max_length=max_input_length)["input_ids"]
        return inputs, encode_targets(tokenizer, targets, max_target_length)

    def loss_sum(self, model, input_ids, attention_mask, labels, unwrapped=None):
        """(sum of target-token cross-entropies, target token count) of one right-padded batch. ``unwrapped``: the
        model without its DDP/FSDP wrapper (for ``prepare_decoder_input_ids_from_labels``)."""
        decoder_input_ids = (unwrapped or model).prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        return self._target_loss(logits, labels)

    @staticmethod
    def _target_loss(logits, labels):
        import torch

        total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
        return total, labels.ne(-100).sum()

    def shared_loss_sums(self, model, tokenizer, input_ids, attention_mask, labels, rationale_rows, rationale_labels,
                         label_prefix: str, rationale_prefix: str, unwrapped=None):
        """((label loss sum, tokens), (rationale loss sum, tokens)) with ONE encoder pass: the label pass computes
        the encoder states, the rationale pass reuses those of its rows (``rationale_rows``); gradients from both
        tasks reach the encoder through them."""
        base = unwrapped or model
        decoder_ids, forced = self._decoder_inputs(base, labels, self.prefix_ids(tokenizer, label_prefix))
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_ids)
        label = self._target_loss(out.logits[:, forced:], labels)
        if rationale_rows.numel() == 0:
            return label, (label[0].new_zeros(()), label[1].new_zeros(()))
        decoder_ids, forced = self._decoder_inputs(base, rationale_labels, self.prefix_ids(tokenizer, rationale_prefix))
        hidden = out.encoder_last_hidden_state[rationale_rows]
        logits = model(encoder_outputs=(hidden,), attention_mask=attention_mask[rationale_rows],
                       decoder_input_ids=decoder_ids).logits
        return label, self._target_loss(logits[:, forced:], rationale_labels)

    def _encoder_batches(self, model, tokenizer, prompts, batch_size, max_input_length):
        """(indices, encoder inputs, decoder prefix ids) per batch; one batch holds one task prefix only."""
        split = [self.split_prompt(p) for p in prompts]
        for prefix in sorted({prefix for _, prefix in split}):
            members = [i for i, (_, p) in enumerate(split) if p == prefix]
            for batch in _length_batches([len(split[i][0]) for i in members], batch_size):
                batch = [members[b] for b in batch]
                enc = tokenizer([split[i][0] for i in batch], padding=True, truncation=True,
                                max_length=max_input_length, return_tensors="pt").to(model.device)
                yield batch, enc, self.prefix_ids(tokenizer, prefix)

    @staticmethod
    def encoder_states(model, input_ids, attention_mask):
        """The encoder's last hidden states (an ONNX student runs its encoder graph here instead)."""
        return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @staticmethod
    def decoder_logits(model, encoder_states, attention_mask, decoder_input_ids):
        """The decoder's logits at every position, reading the given encoder states."""
        return model(encoder_outputs=(encoder_states,), attention_mask=attention_mask,
                     decoder_input_ids=decoder_input_ids).logits

    def rank_scores(self, model, tokenizer, prompts: list[str], choices: list[list[str]], batch_size: int,
                    max_input_length: int, normalization: str = "sum", end: bool = True) -> list[list[float]]:
        """Log-likelihood of every candidate: the encoder runs ONCE per batch, its output is reused for every
        candidate of every example in one decoder pass."""
        import torch

        device = model.device
        target_ids = _target_table(tokenizer, choices, end)
        scores: list[list[float]] = [[] for _ in prompts]
        for batch, enc, prefix in self._encoder_batches(model, tokenizer, prompts, batch_size, max_input_length):
            hidden = self.encoder_states(model, enc.input_ids, enc.attention_mask)
            rows = [(b, c) for b, i in enumerate(batch) for c in choices[i]]
            labels = torch.full((len(rows), max(len(target_ids[c]) for _, c in rows)), -100, dtype=torch.long)
            for r, (_, candidate) in enumerate(rows):
                labels[r, :len(target_ids[candidate])] = torch.tensor(target_ids[candidate])
            labels = labels.to(device)
            row_of = torch.tensor([b for b, _ in rows], device=device)
            decoder_ids, forced = self._decoder_inputs(model, labels, prefix)
            logits = self.decoder_logits(model, hidden[row_of], enc.attention_mask[row_of], decoder_ids)[:, forced:]
            mask = labels.ne(-100)
            token_logprobs = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1))
            for (b, _), score in zip(rows, _candidate_scores(token_logprobs.squeeze(-1), mask, normalization)):
                scores[batch[b]].append(score)
        return scores

    def generate(self, model, tokenizer, prompts: list[str], batch_size: int, max_input_length: int,
                 max_new_tokens: int) -> list[str]:
        """Greedy generation (stops at eos), in input order."""
        import torch

        outputs = [""] * len(prompts)
        for batch, enc, prefix in self._encoder_batches(model, tokenizer, prompts, batch_size, max_input_length):
            forced = {}
            if prefix:  # the decoder starts with its start token and the task prefix
                start = model.generation_config.decoder_start_token_id
                start = model.config.decoder_start_token_id if start is None else start
                forced["decoder_input_ids"] = torch.tensor([[start, *prefix]] * len(batch), device=model.device)
            generated = model.generate(**enc, **forced, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            generated = generated[:, 1 + len(prefix):] if prefix else generated
            for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text.strip()
        return outputs


class CausalFamily:
    name = "causal"
    labels_follow_inputs = True  # labels[t] is the id at input position t (-100 on the prompt)

    def __init__(self, separator: str = PROMPT_SEPARATOR):
        self.separator = separator

    def prompt_ids(self, tokenizer, prompts: list[str], max_input_length: int) -> list[list[int]]:
        """The prompt text (with the tokenizer's own bos, if it adds one) cut to fit, then the separator's ids."""
        if not prompts:
            return []
        separator = tokenizer(self.separator, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompts, truncation=True, max_length=max(1, max_input_length - len(separator)))["input_ids"]
        return [row + separator for row in ids]

    def training_rows(self, tokenizer, prompts: list[str], targets: list[str], max_input_length: int,
                      max_target_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """(prompt + target ids, labels: -100 on the prompt, the target ids after it) per example."""
        prompt_rows = self.prompt_ids(tokenizer, prompts, max_input_length)
        target_rows = encode_targets(tokenizer, targets, max_target_length) if targets else []
        return ([p + t for p, t in zip(prompt_rows, target_rows)],
                [[-100] * len(p) + t for p, t in zip(prompt_rows, target_rows)])

    def loss_sum(self, model, input_ids, attention_mask, labels, unwrapped=None):
        """(sum of target-token cross-entropies, target token count): the logit at position t predicts token t+1."""
        import torch

        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        shifted = labels[:, 1:]
        total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), shifted.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
        return total, shifted.ne(-100).sum()

    def _left_padded(self, rows: list[list[int]], pad_id: int, device):
        """Left-padded ids, mask and position ids counted from each row's first real token (as in training)."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(device), mask.to(device), positions.to(device)

    def rank_scores(self, model, tokenizer, prompts: list[str], choices: list[list[str]], batch_size: int,
                    max_input_length: int, normalization: str = "sum", end: bool = True) -> list[list[float]]:
        """Log-likelihood of every candidate: one forward over the batch's prompts, whose KV cache is then copied
        to every (example, candidate) row and extended by the candidates' tokens in a second pass."""
        import torch

        device = model.device
        target_ids = _target_table(tokenizer, choices, end)
        prompt_rows = self.prompt_ids(tokenizer, prompts, max_input_length)
        scores: list[list[float]] = [[] for _ in prompts]
        for batch in _length_batches([len(r) for r in prompt_rows], batch_size):
            ids, mask, positions = self._left_padded([prompt_rows[i] for i in batch], tokenizer.pad_token_id, device)
            # only the last prompt position's logits are needed (a full (batch, prompt, vocab) tensor is not)
            prompt_out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1)
            rows = [(b, c) for b, i in enumerate(batch) for c in choices[i]]
            row_of = torch.tensor([b for b, _ in rows], device=device)
            # transformers 5.x renamed past_key_values to cache (keep both spellings working)
            cache_name = "cache" if "cache" in prompt_out.keys() else "past_key_values"
            cache = prompt_out[cache_name]
            cache.reorder_cache(row_of)  # index_select on the batch axis: one cache row per candidate row
            longest = max(len(target_ids[c]) for _, c in rows)
            candidates = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
            candidate_mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for r, (_, candidate) in enumerate(rows):
                candidates[r, :len(target_ids[candidate])] = torch.tensor(target_ids[candidate])
                candidate_mask[r, :len(target_ids[candidate])] = 1
            candidates, candidate_mask = candidates.to(device), candidate_mask.to(device)
            start = mask.sum(-1)[row_of].unsqueeze(-1)
            candidate_out = model(input_ids=candidates, attention_mask=torch.cat([mask[row_of], candidate_mask], -1),
                                  position_ids=start + torch.arange(longest, device=device), use_cache=True,
                                  **{cache_name: cache})
            # candidate token j is predicted by the prompt's last logit (j = 0) or by candidate position j - 1
            logits = torch.cat([prompt_out.logits[row_of, -1:], candidate_out.logits[:, :-1]], 1)
            token_logprobs = torch.log_softmax(logits.float(), -1).gather(-1, candidates.unsqueeze(-1)).squeeze(-1)
            for (b, _), score in zip(rows, _candidate_scores(token_logprobs, candidate_mask, normalization)):
                scores[batch[b]].append(score)
        return scores

    def generate(self, model, tokenizer, prompts: list[str], batch_size: int, max_input_length: int,
                 max_new_tokens: int) -> list[str]:
        """Greedy generation from left-padded prompt batches (KV cache, stops at eos), in input order."""
        outputs = [""] * len(prompts)
        prompt_rows = self.prompt_ids(tokenizer, prompts, max_input_length)
        for batch in _length_batches([len(r) for r in prompt_rows], batch_size):
            ids, mask, _ = self._left_padded([prompt_rows[i] for i in batch], tokenizer.pad_token_id, model.device)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                outputs[i] = text.strip()
        return outputs


FAMILIES = ("seq2seq", "causal")


def family_of(model_or_config: Any, separator: str = PROMPT_SEPARATOR, decoder_prefixes: tuple[str, ...] = ()):
    """The family of a model (or its config): ``is_encoder_decoder`` decides (warm-started BERT pairs: seq2seq).
    ``decoder_prefixes``: the task prefixes a shared-encoder seq2seq student reads in its decoder."""
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "is_encoder_decoder", False):
        return Seq2SeqFamily(decoder_prefixes)
    if decoder_prefixes:
        raise ValueError("shared_encoder needs an encoder-decoder student (seq2seq); this one is decoder-only")
    return CausalFamily(separator)
