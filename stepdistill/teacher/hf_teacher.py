"""The local teacher: a Hugging Face causal LM, batched and left-padded, with the chat template of instruct models.

In chat mode the few-shot prompt becomes a conversation (:func:`chat_messages`): each demonstration is a user turn
(its question) and an assistant turn (its answer, from the answer cue such as ``Reasonings:``, ``Answer:`` or
``A:``), and the query is a last user turn followed by the cue as the start of the assistant's message, which the
model continues. The generated text is then what a raw completion model writes after the same cue, so the tasks'
parsers and the template's stop strings apply unchanged; an instruct model's end-of-turn token ends the answer
like an end-of-sequence.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from .teachers import GenerationParams, Reply, Teacher

log = logging.getLogger("stepdistill.teacher")

DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMPT_FORMATS = ("auto", "chat", "raw")


def auto_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    positions = [text.find(s) for s in stop if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def split_answer_cue(prompt: str) -> tuple[str, str]:
    """(everything before the last line, the last line) when the last line is an answer cue ending in ':'."""
    head, newline, last = prompt.rpartition("\n")
    if newline and head.strip() and last.rstrip().endswith(":"):
        return head.rstrip(), last.strip()
    return prompt, ""


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A few-shot prompt as chat turns; the last message is the assistant's answer cue, to be continued.

    Demonstrations are the blank-line separated blocks that contain the cue line: the lines above it become a user
    turn, the cue line and the rest the assistant's answer (so an instruct model sees answers in the template's
    format, each closing its turn). A block without the cue (an instruction) goes into the next user turn. A
    prompt whose last line is not a cue is one user message.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    head, cue = split_answer_cue(prompt)
    if not cue:
        return [*messages, {"role": "user", "content": prompt}]
    pending: list[str] = []  # text for the next user turn
    blocks = head.split("\n\n")
    for block in blocks[:-1]:
        lines = block.split("\n")
        at = next((k for k, line in enumerate(lines) if k and line.startswith(cue)), None)
        if at is None:
            pending.append(block)
            continue
        messages.append({"role": "user", "content": "\n\n".join([*pending, "\n".join(lines[:at])])})
        messages.append({"role": "assistant", "content": "\n".join(lines[at:])})
        pending = []
    messages.append({"role": "user", "content": "\n\n".join([*pending, blocks[-1]])})
    messages.append({"role": "assistant", "content": cue})
    return messages


class HFTeacher(Teacher):
    """A causal LM from a local folder, a hub name or a short name of :mod:`stepdistill.pretrained`.

    Args:
        path: Model folder, hub name, or a short name such as ``smollm2-135m`` (resolved by ``resolve_pretrained``).
        device: ``auto`` (cuda, then mps, then cpu) or a torch device string.
        batch_size: Prompts per generate call.
        dtype: ``auto`` (bfloat16 on cuda, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``.
        prompt_format: ``auto`` (the chat template when the tokenizer has one), ``chat`` or ``raw`` (the prompt text
            as it is).
        system_prompt: A system message before the prompt in chat mode (None: the chat template's default).
    """

    kind = "hf"
    max_concurrency = 1  # one batch at a time on the device
    label_source = "scores"
    token_topk_source = "local"  # --token-logprobs: from the logits of every generated token, up to 100

    def __init__(self, path: str, device: str = "auto", batch_size: int = 8, dtype: str = "auto",
                 prompt_format: str = "auto", system_prompt: str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"hf teacher: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"hf teacher: prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        if batch_size < 1:
            raise ValueError(f"hf teacher: batch_size must be >= 1, got {batch_size}")
        self.path = str(path)
        self.model = Path(self.path).name if Path(self.path).exists() else self.path
        self.device_name = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.prompt_format = prompt_format
        self.system_prompt = system_prompt
        self._model = self._tokenizer = None
        self._resolved: tuple[str, str] | None = None  # (device, dtype name)
        self._stop_strings_work = True

    def __repr__(self) -> str:
        return (f"HFTeacher(path={self.path!r}, device={self.device_name!r}, batch_size={self.batch_size}, "
                f"dtype={self.dtype!r}, prompt_format={self.prompt_format!r})")

    # -- loading ----------------------------------------------------------------------------------------------
    def _device_and_dtype(self) -> tuple[str, str]:
        if self._resolved is None:
            import torch

            device = auto_device() if self.device_name == "auto" else self.device_name
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"hf teacher: device {device!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
            dtype = ("bfloat16" if device.startswith("cuda") else "float32") if self.dtype == "auto" else self.dtype
            self._resolved = (device, dtype)
        return self._resolved

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from ..pretrained import resolve_pretrained

            self.path = resolve_pretrained(self.path)  # a short name becomes its converted local folder
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
            except OSError as exc:  # no such folder, or a hub name without the hub
                raise ValueError(f"hf teacher: cannot load a tokenizer from {self.path!r}: {exc}") from None
            tokenizer.padding_side = "left"  # generation continues at the right edge of every row
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if self.prompt_format == "chat" and not tokenizer.chat_template:
                raise ValueError(f"hf teacher: prompt_format 'chat' but the tokenizer of {self.path!r} has no chat template")
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def uses_chat(self) -> bool:
        tokenizer = self._load_tokenizer()
        return self.prompt_format == "chat" or self.prompt_format == "auto" and bool(tokenizer.chat_template)

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            tokenizer = self._load_tokenizer()
            device, dtype = self._device_and_dtype()
            try:
                model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
            except OSError as exc:
                raise ValueError(f"hf teacher: cannot load a causal LM from {self.path!r}: {exc}") from None
            self._model, self.device = model.to(device).eval(), device
            # every token that ends an answer: the tokenizer's end of sequence and the model's (an instruct model's
            # end-of-turn token, e.g. <|im_end|>)
            ends = model.generation_config.eos_token_id
            ends = ends if isinstance(ends, list) else [ends]
            self._end_ids = {token for token in [*ends, tokenizer.eos_token_id] if token is not None}
            self._context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        return self._model, self._tokenizer

    # -- prompts ----------------------------------------------------------------------------------------------
    def key_params(self, params):
        # the chat wrapping is not part of the prompt hash, so it goes into the cache key here
        device, dtype = self._device_and_dtype()
        key = {**params.as_dict(), "dtype": dtype, "prompt_format": "chat" if self.uses_chat else "raw"}
        key.pop("top_logprobs", None)  # an API's option
        if self.uses_chat and self.system_prompt is not None:
            key["system_prompt"] = self.system_prompt
        return key

    def render(self, prompt: str) -> str:
        """The text the model is given for a few-shot ``prompt``: the chat template applied, or ``prompt`` itself."""
        tokenizer = self._load_tokenizer()
        if not self.uses_chat:
            return prompt
        messages = chat_messages(prompt, self.system_prompt)
        if messages[-1]["role"] == "assistant":  # the answer cue: the model continues it
            return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- generation -------------------------------------------------------------------------------------------
    def generate_sync(self, prompts: list[str], params: GenerationParams) -> list[Reply]:
        model, tokenizer = self._load()
        texts = [self.render(prompt) for prompt in prompts]
        # the chat template writes its own special tokens (a BOS where the model wants one)
        encoded = tokenizer(texts, add_special_tokens=not self.uses_chat)["input_ids"]
        replies: list[Reply | None] = [None] * len(prompts)
        fitting = []
        for i, ids in enumerate(encoded):
            if self._context and len(ids) + params.max_new_tokens > self._context:
                replies[i] = Reply(prompt_tokens=len(ids), error="prompt_too_long",
                                   error_detail=f"{len(ids)} prompt tokens + max_new_tokens {params.max_new_tokens} "
                                                f"exceed the model's context of {self._context} tokens")
            else:
                fitting.append(i)
        if fitting:
            for i, reply in zip(fitting, self._generate([texts[i] for i in fitting], params)):
                replies[i] = reply
        return replies

    def _generate(self, texts: list[str], params: GenerationParams) -> list[Reply]:
        import torch

        model, tokenizer = self._model, self._tokenizer
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.uses_chat).to(self.device)
        sampling = params.temperature > 0
        options: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, do_sample=sampling,
                                       num_return_sequences=params.n, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=sorted(self._end_ids) or None)
        if sampling:
            options.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.stop and self._stop_strings_work:
            options.update(stop_strings=list(params.stop), tokenizer=tokenizer)
        if params.token_logprobs:  # token_topk: the raw next-token logits of every generated position
            options.update(output_logits=True, return_dict_in_generate=True)
        with torch.inference_mode():
            try:
                generated = model.generate(**encoded, **options)
            except ValueError as exc:
                if "stop_strings" not in options:
                    raise
                # transformers cannot map stop strings onto some vocabularies (e.g. whole-word ones): generate to
                # the token limit and cut afterwards, which gives the same text, only slower
                log.warning("stop strings unsupported by this tokenizer (%s); cutting after generation", exc)
                self._stop_strings_work = False
                del options["stop_strings"], options["tokenizer"]
                generated = model.generate(**encoded, **options)
        step_logits = generated.logits if params.token_logprobs else None
        if step_logits is not None:
            generated = generated.sequences
        new_tokens = generated[:, encoded["input_ids"].shape[1]:]
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        replies = []
        for i in range(len(texts)):
            reply = Reply(prompt_tokens=int(prompt_lengths[i]))
            for row in new_tokens[i * params.n:(i + 1) * params.n]:
                tokens = row.tolist()
                end = next((k for k, token in enumerate(tokens) if token in self._end_ids), None)
                if end is not None:
                    tokens = tokens[:end]
                text, stopped = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
                reply.outputs.append(text)
                reply.finish_reasons.append("stop" if stopped or end is not None else "length")
                reply.completion_tokens += len(tokens)
                if step_logits is not None:
                    reply.token_logprobs = (reply.token_logprobs or []) + [
                        self._top_tokens(step_logits, i * params.n + len(reply.outputs) - 1, tokens,
                                         params.token_logprobs)]
            replies.append(reply)
        return replies

    def _top_tokens(self, step_logits, row: int, tokens: list[int], k: int):
        """(token, logprob, [(alternative, logprob)] * k) per generated token of ``row``, as the tokenizer spells
        its tokens (``convert_ids_to_tokens``: a student with the same vocabulary maps them back to ids)."""
        import torch

        tokenizer = self._tokenizer
        out = []
        for position, token in enumerate(tokens):
            logprobs = torch.log_softmax(step_logits[position][row].float(), dim=-1)
            top = logprobs.topk(min(k, logprobs.shape[-1]))
            names = tokenizer.convert_ids_to_tokens(top.indices.tolist())
            out.append((tokenizer.convert_ids_to_tokens(token), float(logprobs[token]),
                        list(zip(names, top.values.tolist()))))
        return out

    async def generate(self, prompts, ids, params):
        return await asyncio.to_thread(self.generate_sync, prompts, params)

    # -- candidate scores (--label-logprobs) -------------------------------------------------------------------
    def score_sync(self, queries: list[tuple[str, str, list[str]]]) -> list[list[float] | None]:
        """For each (prompt, answer head, targets): every target's teacher-forced log-probability after the rendered
        prompt and the head, summed over the target's tokens (a token that straddles the boundary counts with the
        target); None where the text exceeds the model's context. One forward pass per query, its targets batched
        (left-padded, positions from the mask)."""
        import torch

        model, tokenizer = self._load()
        out = []
        for prompt, head, targets in queries:
            context = self.render(prompt) + head
            encoded = tokenizer([context + target for target in targets], return_offsets_mapping=True, padding=True,
                                return_tensors="pt", add_special_tokens=not self.uses_chat)
            mask = encoded["attention_mask"]
            if self._context and mask.shape[1] > self._context:  # beyond the model's positions: no scores
                out.append(None)
                continue
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(input_ids=encoded["input_ids"].to(self.device), attention_mask=mask.to(self.device),
                               position_ids=positions.to(self.device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(
                -1, encoded["input_ids"][:, 1:, None].to(self.device))[..., 0].cpu()
            in_target = (encoded["offset_mapping"][:, 1:, 1] > len(context)) & mask[:, 1:].bool()
            out.append([float(row[chosen].sum()) for row, chosen in zip(logprobs, in_target)])
        return out

    async def score_candidates(self, queries):
        return await asyncio.to_thread(self.score_sync, queries)
