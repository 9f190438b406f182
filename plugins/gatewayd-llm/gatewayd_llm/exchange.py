"""The contract between the ``llm`` plugin and the provider kinds, for one attempt.

The plugin puts an :class:`Exchange` in ``ctx.state[EXCHANGE]`` and calls
``PluginContext.forward(ctx)`` with ``ctx.upstream`` set to the deployment's upstream. gatewayd
then calls the kind's ``send(target, attempt, ctx, path, headers, timeouts)``, and the kind:

- reads the request from the exchange, never from ``ctx.request`` or ``headers``: ``operation``
  (which endpoint), ``body`` (the OpenAI request as a dict, ``model`` already the deployment's
  provider model, ``stream``/``stream_options.include_usage`` already set: the gateway always asks
  for usage). ``headers`` are the client's (its gateway API key among them): a kind sends none of
  them to the provider, only its own (its credential, content type);
- answers in OpenAI's wire format, whatever the provider speaks:

  - success, not streamed: status 200, ``Content-Type: application/json``, the OpenAI response
    object as bytes (with ``usage``);
  - success, streamed (``body["stream"]`` true): status 200, ``Content-Type:
    text/event-stream``, a body that is an async iterator of bytes (with ``aclose()``), each item
    one or more whole SSE events (``b"data: {...}\\n\\n"``) in OpenAI's chunk format, each yielded
    as soon as the provider sent it, the usage chunk included (``choices: []``, ``usage``), and
    ``b"data: [DONE]\\n\\n"`` last. The plugin strips the usage chunk when the client did not ask;
  - the provider refused or failed before answering: its status (429, 400, 401, 404, 5xx) and an
    OpenAI-shaped error body (:func:`gatewayd_llm.wire.error_body`): a context-length refusal has
    ``code: context_length_exceeded`` (the plugin then falls back);
  - no connection or no answer in time: set ``attempt.error`` and raise gatewayd's
    ``UpstreamConnectError`` / ``UpstreamTimeout`` / ``UpstreamError`` as every kind does;
  - a failure after the stream started (no chunk within ``timeouts.read``: ``stall``; the
    connection cut: ``disconnect``; a chunk that is not valid: ``malformed``; an error event from
    the provider: ``provider``): the body iterator raises :class:`StreamFailed`. Never end a
    failed stream as if it were complete;
- records what the provider said it used with :meth:`Exchange.report_usage` (streamed or not), as
  soon as it knows it, and calls :meth:`Exchange.mark_first_byte` when the first token arrives;
- stops the provider's work at once when the body iterator is closed (``aclose()``) or the task
  is cancelled: closes the HTTP response (the provider sees the connection go), kills the process
  group.

The exchange is per attempt: a fallback gets a new one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

EXCHANGE = "llm.exchange"  # the key in ctx.state

Operation = Literal["chat", "completions", "embeddings"]
UsageSource = Literal["provider", "estimated", "partial"]
StreamFailure = Literal["stall", "disconnect", "malformed", "provider"]


@dataclass(slots=True)
class Usage:
    """Token counts of one request (OpenAI's ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StreamFailed(Exception):
    """A stream that failed after it started. ``kind`` says how; ``message`` is safe to show to
    the client (no credential, no provider internals beyond its own error message)."""

    def __init__(self, kind: StreamFailure, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.kind: StreamFailure = kind
        self.message = message
        self.status = status


@dataclass(slots=True)
class Exchange:
    """One attempt of one OpenAI request at one deployment."""

    operation: Operation
    body: dict[str, Any]  # the OpenAI request, model = the deployment's provider model
    client_model: str  # the model name the client asked for (a key of ``models:``)
    deployment: str  # "<model>#<index>": which deployment this attempt goes to
    started: float = field(default_factory=time.monotonic)
    usage: Usage | None = None  # what the provider reported, None until it does
    first_byte_at: float | None = None  # monotonic time of the first token
    request_id: str | None = None  # the gateway's request id (a kind may send it as X-Request-ID)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def report_usage(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """The provider's own counts (an explicit 0 is a count, not "unknown"); a later report
        (e.g. Anthropic's ``message_delta`` after ``message_start``) updates the earlier."""
        usage = self.usage or Usage()
        if prompt_tokens is not None:
            usage.prompt_tokens = max(0, int(prompt_tokens))
        if completion_tokens is not None:
            usage.completion_tokens = max(0, int(completion_tokens))
        self.usage = usage

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
