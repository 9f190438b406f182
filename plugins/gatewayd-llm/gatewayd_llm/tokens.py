"""Token estimates, for what must be known before the provider says (context windows, limit
reservations) or when it never says (a cancelled stream, a provider without usage).

No tokenizer: about four characters of English per token, as OpenAI's own rule of thumb says,
rounded up, plus OpenAI's per-message overhead for chat. Estimates err on the high side for
reservations; the provider's counts replace them whenever it gives them.
"""

from __future__ import annotations

import json
from typing import Any

from gatewayd_llm.exchange import Operation

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role, separators (OpenAI's cookbook counts 3-4 per message)
REPLY_PRIMING = 3  # every reply starts with <|start|>assistant<|message|>
IMAGE_TOKENS = 765  # a high-detail 512x512 tile and the base: a fair guess for one image


def text_tokens(text: str) -> int:
    if not text:
        return 0
    return -(-len(text) // CHARS_PER_TOKEN)


def content_tokens(content: Any) -> int:
    """A message's ``content``: a string, or a list of parts (text, images, ...)."""
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += text_tokens(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    total += text_tokens(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += IMAGE_TOKENS
        return total
    return 0


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD + content_tokens(message.get("content"))
        if isinstance(message.get("name"), str):
            total += text_tokens(message["name"]) + 1
        calls = message.get("tool_calls")
        if calls is not None:
            total += text_tokens(str(calls))
    tools = body.get("tools")
    if tools is not None:
        total += text_tokens(str(tools))
    return total


def input_tokens(value: Any) -> int:
    """A completions ``prompt`` or an embeddings ``input``: a string, a list of strings, a
    list of token ids, or a list of such lists."""
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(input_tokens(v) for v in value)
    return 0


def prompt_tokens(operation: Operation, body: dict[str, Any]) -> int:
    """The estimated prompt tokens of an OpenAI request body."""
    if operation == "chat":
        return chat_prompt_tokens(body)
    if operation == "completions":
        return input_tokens(body.get("prompt"))
    return input_tokens(body.get("input"))


def max_output_tokens(operation: Operation, body: dict[str, Any], default: int) -> int:
    """The most a request may generate: ``max_completion_tokens``/``max_tokens`` (else
    ``default``) times ``n``; 0 for embeddings."""
    if operation == "embeddings":
        return 0
    limit = body.get("max_completion_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = default
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return int(limit) * choices


def answer_tokens(raw: Any) -> int:
    """The estimated completion tokens of a whole OpenAI answer (chat or text completion)."""
    try:
        obj = json.loads(raw)
        choices = obj["choices"]
    except (ValueError, TypeError, KeyError):
        return 0
    total = 0
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            total += content_tokens(message.get("content"))
            if message.get("tool_calls") is not None:
                total += text_tokens(str(message["tool_calls"]))
        elif isinstance(choice.get("text"), str):
            total += text_tokens(choice["text"])
    return total
