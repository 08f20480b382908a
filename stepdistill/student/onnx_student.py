"""A student exported to ONNX (``stepdistill export --format onnx``), run through onnxruntime on the CPU with the
same ranking and greedy generation as the PyTorch families, so that ``predict`` and ``serve`` take an ONNX folder
unchanged.

The graphs (their names and inputs are the contract with :mod:`stepdistill.serving.onnx_export`, which writes them):

  ``seq2seq``  ``encoder``: (input_ids, attention_mask) -> last_hidden_state; ``decoder``: (decoder_input_ids,
               encoder_hidden_states, attention_mask) -> logits at every decoder position. Ranking runs the encoder
               once per batch and the decoder once over every candidate, as :class:`~.families.Seq2SeqFamily` does.
  ``causal``   ``model``: (input_ids, attention_mask, position_ids, keep) -> logits at the positions ``keep``
               lists. No KV cache: ranking runs prompt + candidate as one row per (example, candidate), so the
               prompt is computed once per candidate (the PyTorch path computes it once and copies its cache);
               one graph without cache tensors keeps the interface independent of transformers' cache classes,
               and ``keep`` bounds the logits to the candidate positions (a vocabulary row per kept position).

Generation (labels of free-form tasks, rationales) is greedy without a cache: every new token re-runs the decoder
(seq2seq) or the whole sequence (causal) and keeps the last position, so its cost grows with the square of the
length; fine for labels and short rationales. Tensors move between torch (the families' batching and scoring code)
and numpy (onnxruntime) without copies where the dtypes allow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .families import CausalFamily, Seq2SeqFamily, _candidate_scores, _length_batches, _target_table

ONNX_FORMAT = "onnx"
GRAPHS = {"seq2seq": ("encoder", "decoder"), "causal": ("model",)}
GRAPH_INPUTS = {"encoder": ("input_ids", "attention_mask"),
                "decoder": ("decoder_input_ids", "encoder_hidden_states", "attention_mask"),
                "model": ("input_ids", "attention_mask", "position_ids", "keep")}
GRAPH_OUTPUTS = {"encoder": "last_hidden_state", "decoder": "logits", "model": "logits"}


def is_onnx_meta(meta: dict[str, Any]) -> bool:
    return meta.get("format") == ONNX_FORMAT


class OnnxStudentModel:
    """The onnxruntime sessions of one export, where ``predict`` expects a transformers model (CPU only).

    ``threads``: intra-op threads per session (default: torch's thread count, which follows OMP_NUM_THREADS, so
    that a comparison with the PyTorch student uses the same cores)."""

    def __init__(self, folder: str | Path, spec: dict[str, Any], threads: int | None = None):
        import torch

        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError(f"{folder}: an ONNX export runs through onnxruntime: pip install 'stepdistill[onnx]'"
                             ) from None

        folder = Path(folder)
        self.family_name = spec["family"]
        if self.family_name not in GRAPHS:
            raise ValueError(f"{folder}: ONNX export of unknown family {self.family_name!r} (expected "
                             f"{' or '.join(GRAPHS)})")
        graphs = spec.get("graphs") or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # no memory arena: with it, a process that served varied batch shapes kept growing (e-SNLI, tiny T5: 294 MB
        # after the first batch of 64, 421 MB after three more; 243 and 255 MB without, at about the same speed)
        options.enable_cpu_mem_arena = False
        self.sessions = {}
        for graph in GRAPHS[self.family_name]:
            path = folder / graphs.get(graph, f"{graph}.onnx")
            if not path.is_file():
                raise FileNotFoundError(f"{folder}: ONNX export without its {graph} graph ({path.name} is missing)")
            self.sessions[graph] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.decoder_start_token_id = spec.get("decoder_start_token_id")
        self.pad_token_id = spec.get("pad_token_id")
        eos = spec.get("eos_token_id")
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.quantize = spec.get("quantize")
        self.device = torch.device("cpu")  # the families move tokenised batches to model.device

    def run(self, graph: str, **inputs):
        """One graph's output as a torch tensor (inputs: torch tensors named as in :data:`GRAPH_INPUTS`)."""
        import torch

        feed = {name: inputs[name].detach().cpu().numpy() for name in GRAPH_INPUTS[graph]}
        return torch.from_numpy(self.sessions[graph].run([GRAPH_OUTPUTS[graph]], feed)[0])

    def prepare_decoder_input_ids_from_labels(self, labels):
        """Labels shifted right behind the decoder start token, -100 as padding (what T5 and EncoderDecoder do)."""
        from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

        return shift_tokens_right(labels, self.pad_token_id, self.decoder_start_token_id)

    def family(self, separator: str, decoder_prefixes: tuple[str, ...] = ()):
        """The family object that ``predict`` and evaluation call, running these sessions."""
        if self.family_name == "seq2seq":
            return OnnxSeq2SeqFamily(decoder_prefixes)
        if decoder_prefixes:
            raise ValueError("shared_encoder needs an encoder-decoder student (seq2seq); this one is decoder-only")
        return OnnxCausalFamily(separator)


def _greedy_step(logits, done, pad_id: int, eos_ids: list[int]):
    """(next token per row: the argmax, padding once a row has ended; whether each row has ended now)."""
    import torch

    next_ids = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))
    return next_ids, done | torch.isin(next_ids, torch.tensor(eos_ids, dtype=torch.long))


class OnnxSeq2SeqFamily(Seq2SeqFamily):
    """:class:`Seq2SeqFamily` (tokenising, forced decoder prefixes, ranking) with its two model calls on ONNX graphs."""

    @staticmethod
    def encoder_states(model, input_ids, attention_mask):
        return model.run("encoder", input_ids=input_ids, attention_mask=attention_mask)

    @staticmethod
    def decoder_logits(model, encoder_states, attention_mask, decoder_input_ids):
        return model.run("decoder", decoder_input_ids=decoder_input_ids, encoder_hidden_states=encoder_states,
                         attention_mask=attention_mask)

    def generate(self, model, tokenizer, prompts: list[str], batch_size: int, max_input_length: int,
                 max_new_tokens: int) -> list[str]:
        """Greedy generation (stops at eos), in input order: the decoder re-runs over its whole prefix per token."""
        import torch

        outputs = [""] * len(prompts)
        for batch, enc, prefix in self._encoder_batches(model, tokenizer, prompts, batch_size, max_input_length):
            hidden = self.encoder_states(model, enc.input_ids, enc.attention_mask)
            start = [model.decoder_start_token_id, *prefix]
            ids = torch.tensor([start] * len(batch), dtype=torch.long)
            done = torch.zeros(len(batch), dtype=torch.bool)
            for _ in range(max_new_tokens):
                logits = self.decoder_logits(model, hidden, enc.attention_mask, ids)[:, -1]
                next_ids, done = _greedy_step(logits, done, model.pad_token_id, model.eos_token_ids)
                ids = torch.cat([ids, next_ids[:, None]], 1)
                if done.all():
                    break
            for i, text in zip(batch, tokenizer.batch_decode(ids[:, len(start):], skip_special_tokens=True)):
                outputs[i] = text.strip()
        return outputs


class OnnxCausalFamily(CausalFamily):
    """:class:`CausalFamily` (prompt ids, left padding) with ranking and generation on the cache-less ONNX graph."""

    @staticmethod
    def _logits(model, ids, mask, keep):
        import torch

        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's first real token, as in training
        return model.run("model", input_ids=ids, attention_mask=mask, position_ids=positions,
                         keep=torch.as_tensor(keep, dtype=torch.long))

    def rank_scores(self, model, tokenizer, prompts: list[str], choices: list[list[str]], batch_size: int,
                    max_input_length: int, normalization: str = "sum", end: bool = True) -> list[list[float]]:
        """Log-likelihood of every candidate: one row per (example, candidate), the left-padded prompt followed by
        the candidate's tokens but its last; the logits kept are the prompt's last position and the candidate's."""
        import torch

        target_ids = _target_table(tokenizer, choices, end)
        prompt_rows = self.prompt_ids(tokenizer, prompts, max_input_length)
        scores: list[list[float]] = [[] for _ in prompts]
        for batch in _length_batches([len(r) for r in prompt_rows], batch_size):
            ids, mask, _ = self._left_padded([prompt_rows[i] for i in batch], tokenizer.pad_token_id, model.device)
            rows = [(b, c) for b, i in enumerate(batch) for c in choices[i]]
            row_of = torch.tensor([b for b, _ in rows])
            longest = max(len(target_ids[c]) for _, c in rows)
            candidates = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
            candidate_mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for r, (_, candidate) in enumerate(rows):
                candidates[r, :len(target_ids[candidate])] = torch.tensor(target_ids[candidate])
                candidate_mask[r, :len(target_ids[candidate])] = 1
            width = ids.shape[1]
            # candidate token j is predicted at position width - 1 + j: the prompt's last one, then the candidate's
            logits = self._logits(model, torch.cat([ids[row_of], candidates[:, :-1]], 1),
                                  torch.cat([mask[row_of], candidate_mask[:, :-1]], 1),
                                  torch.arange(width - 1, width - 1 + longest))
            token_logprobs = torch.log_softmax(logits.float(), -1).gather(-1, candidates.unsqueeze(-1)).squeeze(-1)
            for (b, _), score in zip(rows, _candidate_scores(token_logprobs, candidate_mask, normalization)):
                scores[batch[b]].append(score)
        return scores

    def generate(self, model, tokenizer, prompts: list[str], batch_size: int, max_input_length: int,
                 max_new_tokens: int) -> list[str]:
        """Greedy generation from left-padded prompt batches (stops at eos), in input order: every new token re-runs
        the whole sequence and keeps the last position's logits."""
        import torch

        outputs = [""] * len(prompts)
        prompt_rows = self.prompt_ids(tokenizer, prompts, max_input_length)
        for batch in _length_batches([len(r) for r in prompt_rows], batch_size):
            ids, mask, _ = self._left_padded([prompt_rows[i] for i in batch], tokenizer.pad_token_id, model.device)
            width = ids.shape[1]
            done = torch.zeros(len(batch), dtype=torch.bool)
            for _ in range(max_new_tokens):
                logits = self._logits(model, ids, mask, [ids.shape[1] - 1])[:, -1]
                next_ids, done = _greedy_step(logits, done, tokenizer.pad_token_id, [tokenizer.eos_token_id])
                ids = torch.cat([ids, next_ids[:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(next_ids)[:, None]], 1)
                if done.all():
                    break
            for i, text in zip(batch, tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)):
                outputs[i] = text.strip()
        return outputs


def load_onnx_model(folder: str | Path, meta: dict[str, Any]) -> OnnxStudentModel:
    """The sessions of the ONNX export in ``folder`` (its meta file's ``onnx`` section names the graphs)."""
    spec = dict(meta.get("onnx") or {})
    spec.setdefault("family", meta.get("family"))
    spec.setdefault("quantize", meta.get("quantize"))
    return OnnxStudentModel(folder, spec)
