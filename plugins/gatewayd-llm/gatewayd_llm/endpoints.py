"""The OpenAI endpoints the ``llm`` plugin serves: which one a path is, what a request body
must hold, ``/v1/generate`` as a chat and back, and the model list."""

from __future__ import annotations

import json
import time
from typing import Any

from gatewayd_llm.config import LlmConfig
from gatewayd_llm.exchange import Operation

POST_ENDPOINTS: dict[str, Operation] = {
    "chat": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "generate": "chat",
}


def endpoint_of(path: str) -> tuple[str, str | None] | None:
    """(endpoint, model id) of a request path, by its last segments (any route prefix)."""
    p = path.rstrip("/")
    if p.endswith("/chat/completions"):
        return "chat", None
    for name in ("completions", "embeddings", "generate", "models"):
        if p.endswith("/" + name):
            return name, None
    _, sep, model = p.rpartition("/models/")
    if sep and model:
        return "model", model
    return None


def check_body(endpoint: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of what is wrong with an OpenAI request body, or None. An integral
    float for an integer (``"n": 2.0``) is written back as the integer."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array", "messages"
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return "each message must be an object with a 'role'", "messages"
    elif endpoint == "completions":
        if not isinstance(body.get("prompt"), str | list):
            return "you must provide a 'prompt' (a string or an array)", "prompt"
    elif endpoint == "embeddings":
        if not isinstance(body.get("input"), str | list) or body.get("input") in ("", []):
            return "you must provide an 'input' (a string or an array)", "input"
    elif endpoint == "generate" and not isinstance(body.get("prompt"), str):
        return "you must provide a 'prompt' (a string)", "prompt"
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if isinstance(value, float) and value.is_integer():
            # an integer as JSON Schema counts them (the published contract says integer):
            # written as one, for the limits, the token estimate and the provider
            value = body[key] = int(value)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            return f"'{key}' must be a positive integer", key
    return None


GENERATE_KEYS = ("max_tokens", "temperature", "top_p", "stop", "seed", "stream", "user")


def generate_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """``/v1/generate`` (``prompt``, optional ``system``) as a chat request."""
    messages = []
    if isinstance(body.get("system"), str):
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": body["prompt"]})
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for key in GENERATE_KEYS:
        if key in body:
            chat[key] = body[key]
    return chat


def chat_to_generate(raw: bytes) -> bytes:
    """A chat completion as ``/v1/generate``'s answer: ``{id, object, created, model, text,
    finish_reason, usage}``."""
    try:
        obj = json.loads(raw)
        choice = obj["choices"][0]
        text = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return raw
    out = {
        "id": obj.get("id"),
        "object": "generation",
        "created": obj.get("created", int(time.time())),
        "model": obj.get("model"),
        "text": text,
        "finish_reason": choice.get("finish_reason"),
        "usage": obj.get("usage"),
    }
    return json.dumps(out).encode()


def model_list(config: LlmConfig) -> dict[str, Any]:
    """``GET /v1/models``: each model with its owners and largest context window."""
    data = []
    for name, deployments in config.models.items():
        owners = sorted({d.owned_by or d.upstream for d in deployments})
        windows = [d.context_window for d in deployments if d.context_window is not None]
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": ",".join(owners),
                "context_window": max(windows) if windows else None,
            }
        )
    return {"object": "list", "data": data}
