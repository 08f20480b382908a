"""Request bodies checked field by field (errors name the field) and response bodies: ours and OpenAI's shapes.

No schema library is a dependency, and the bodies are small: each check is a few lines here.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..tasks import Task


class RequestError(ValueError):
    """A bad request: answered with ``status`` and ``{"error": {"message", "type", "param"}}``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.status}}


@dataclass
class Parsed:
    inputs: list[Any]  # each a task-field dict or formatted text, as `predict` takes them
    rationales: bool = False


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(f"body: must be a JSON object, got {type(body).__name__}", "body")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name}: must be true or false, got {value!r}", name)
    return value


def _count(values: list[Any], name: str, max_inputs: int) -> None:
    if not values:
        raise RequestError(f"{name}: must not be empty", name)
    if len(values) > max_inputs:
        raise RequestError(f"{name}: {len(values)} inputs, at most {max_inputs} per request", name, status=413)


def parse_predict(body: Any, task: Task, max_inputs: int) -> Parsed:
    """``{"inputs": [{task fields} | "formatted text", ...], "rationales": false}``."""
    body = _object(body)
    unknown = sorted(set(body) - {"inputs", "rationales"})
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)} (expected inputs, rationales)", unknown[0])
    if "inputs" not in body:
        raise RequestError("inputs: missing (a list of task-field objects or strings)", "inputs")
    inputs = body["inputs"]
    if not isinstance(inputs, list):
        raise RequestError(f"inputs: must be a list, got {type(inputs).__name__}", "inputs")
    _count(inputs, "inputs", max_inputs)
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if isinstance(item, str):
            continue
        if not isinstance(item, dict):
            raise RequestError(f"{where}: must be an object with the task's fields or a string, "
                               f"got {type(item).__name__}", where)
        for name in task.input_fields:
            if name not in item:
                raise RequestError(f"{where}.{name}: missing (task {task.name} needs "
                                   f"{', '.join(task.input_fields)})", f"{where}.{name}")
            value = item[name]
            if name == "choices" and isinstance(value, list) and all(isinstance(c, str) for c in value):
                continue
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise RequestError(f"{where}.{name}: must be a string, got {type(value).__name__}", f"{where}.{name}")
    return Parsed(inputs, _flag(body, "rationales"))


def _openai_common(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise RequestError("stream: streaming is not supported by the student server", "stream")
    n = body.get("n", 1)
    if n != 1 and n is not None:
        raise RequestError(f"n: only n=1 is supported (the student's label is deterministic), got {n!r}", "n")


def parse_completion(body: Any, max_inputs: int) -> Parsed:
    """OpenAI ``/v1/completions``: the prompt (a string or a list of strings) is the student's formatted input."""
    body = _object(body)
    _openai_common(body)
    if "prompt" not in body:
        raise RequestError("prompt: missing", "prompt")
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt: must be a string or a list of strings (token ids are not supported)", "prompt")
    _count(prompts, "prompt", max_inputs)
    return Parsed(prompts)


def parse_chat(body: Any) -> Parsed:
    """OpenAI ``/v1/chat/completions``: the last user message's text is the student's formatted input."""
    body = _object(body)
    _openai_common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: missing or not a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}]: must be an object with a role", f"messages[{i}]")
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise RequestError("messages: no message with role 'user'", "messages")
    where = f"messages[{users[-1]}].content"
    content = messages[users[-1]].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError(f"{where}: no text part", where)
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise RequestError(f"{where}: must be a string or a list of text parts", where)
    return Parsed([content])


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(model: str, labels: list[str], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": i, "text": label, "finish_reason": "stop", "logprobs": None}
                        for i, label in enumerate(labels)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_body(model: str, label: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}
