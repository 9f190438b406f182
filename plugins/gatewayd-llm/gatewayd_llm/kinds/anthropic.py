"""``kind: anthropic``: Anthropic's Messages API (``POST {base_url}/v1/messages``), translated
both ways: an OpenAI chat (or legacy completions) request becomes a Messages request, the
Message (or its stream of events) becomes OpenAI's answer (or chunks), and Anthropic's errors
become OpenAI's. Embeddings are not offered (400). The health probe is ``GET /v1/models``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field
from yarl import URL

from gatewayd.chain import Attempt, Response, TimeoutsConfig
from gatewayd_llm.exchange import Exchange, StreamFailed
from gatewayd_llm.kinds.base import HttpProvider, Probe, ProviderConfig, read_whole
from gatewayd_llm.kinds.translate import (
    SHAPE_ERRORS,
    BadRequest,
    ChunkWriter,
    chat_completion,
    count,
    data_url,
    error_payload,
    error_reply,
    function_tools,
    json_reply,
    legacy_prompt,
    malformed,
    max_tokens,
    parse_json,
    probe_models,
    single_choice,
    stop_list,
    stream_reply,
    text_completion,
    text_of,
    tool_calls_of,
    unsupported,
    usage_object,
)
from gatewayd_llm.wire import DONE, SseDecoder

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's error types and their statuses (a stream's error event has only the type); its
# 529 (overloaded) is a 503 to OpenAI clients.
STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 503,
}
CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
CONTEXT_MARKERS = ("prompt is too long", "context window", "context length", "too many tokens")


class AnthropicUpstreamConfig(ProviderConfig):
    kind: Literal["anthropic"] = "anthropic"
    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(4096, ge=1)  # Anthropic needs max_tokens; OpenAI does not
    beta: list[str] = []  # anthropic-beta feature flags, sent with every request


def request_headers(
    config: AnthropicUpstreamConfig, exchange: Exchange | None, secret: str | None
) -> dict[str, str]:
    """Ours only (never the client's): the credential, the API version, the request id."""
    stream = exchange is not None and exchange.stream
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
        "User-Agent": "gatewayd-llm",
        "anthropic-version": config.anthropic_version,
    }
    if exchange is not None and exchange.request_id:
        headers["X-Request-ID"] = exchange.request_id
    if secret:
        headers["x-api-key"] = secret
    if config.beta:
        headers["anthropic-beta"] = ",".join(config.beta)
    return headers


class AnthropicUpstream(HttpProvider):
    kind: ClassVar[str] = "anthropic"
    Config: ClassVar[type[ProviderConfig]] = AnthropicUpstreamConfig
    config: AnthropicUpstreamConfig

    @classmethod
    def cheap_probe(cls, config: ProviderConfig, secret: str | None) -> Probe:
        """``GET /v1/models`` (Anthropic's model list)."""
        assert isinstance(config, AnthropicUpstreamConfig)
        return Probe(URL(config.base_url + "/v1/models"), request_headers(config, None, secret))

    def headers(self, exchange: Exchange | None, secret: str | None) -> dict[str, str]:
        return request_headers(self.config, exchange, secret)

    async def probe(
        self, session: aiohttp.ClientSession, attempt: Attempt, timeouts: TimeoutsConfig
    ) -> Response:
        probe = self.cheap_probe(self.config, self.secret())
        return await probe_models(session, probe.url, probe.headers, self.name, timeouts)

    async def call(
        self,
        session: aiohttp.ClientSession,
        exchange: Exchange,
        attempt: Attempt,
        timeouts: TimeoutsConfig,
    ) -> Response:
        if exchange.operation == "embeddings":
            return unsupported("embeddings", self.kind)
        try:
            payload = self.messages_request(exchange)
        except BadRequest as exc:
            return error_reply(400, exc.message, None, exc.param)
        data = json.dumps(payload, separators=(",", ":")).encode()
        resp = await self.post(session, self.url("/v1/messages"), data, exchange)
        try:
            if resp.status != 200:
                return await self.error(resp, timeouts)
            if exchange.stream:
                if resp.content_type != "text/event-stream":
                    resp.close()
                    raise malformed(attempt, self.name)
                translator = StreamTranslator(exchange, payload["model"])
                return stream_reply(resp, timeouts.read, exchange, translator)
        except BaseException:
            resp.close()
            raise
        data = parse_json(await read_whole(resp, timeouts.read))
        if not isinstance(data, dict) or data.get("type") != "message":
            raise malformed(attempt, self.name)
        try:
            return json_reply(self.answer(exchange, data))
        except SHAPE_ERRORS:
            raise malformed(attempt, self.name) from None

    # -- OpenAI -> Messages ----------------------------------------------------------------------

    def messages_request(self, exchange: Exchange) -> dict[str, Any]:
        body = exchange.body
        single_choice(body)
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        if exchange.operation == "completions":
            messages.append({"role": "user", "content": legacy_prompt(body)})
        else:
            raw = body.get("messages")
            if not isinstance(raw, list) or not raw:
                raise BadRequest("messages must be a non-empty list", "messages")
            for message in raw:
                if not isinstance(message, dict):
                    raise BadRequest("each message must be an object", "messages")
                role = message.get("role")
                if role in ("system", "developer"):
                    system.append(text_of(message.get("content")))
                    continue
                role, blocks = self.blocks(message)
                if messages and messages[-1]["role"] == role:
                    messages[-1]["content"].extend(blocks)  # Anthropic alternates roles
                else:
                    messages.append({"role": role, "content": blocks})
        payload: dict[str, Any] = {
            "model": body.get("model"),
            "messages": messages,
            "max_tokens": max_tokens(body) or self.config.default_max_tokens,
        }
        if system:
            payload["system"] = "\n\n".join(system)
        for key in ("temperature", "top_p", "top_k"):
            if body.get(key) is not None:
                payload[key] = body[key]
        stop = stop_list(body.get("stop"))
        if stop:
            payload["stop_sequences"] = stop
        if isinstance(body.get("user"), str):
            payload["metadata"] = {"user_id": body["user"]}
        if exchange.operation == "chat":
            self.tools(body, payload)
        if exchange.stream:
            payload["stream"] = True
        return payload

    def blocks(self, message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """One OpenAI message as (Anthropic role, content blocks)."""
        role = message.get("role")
        content = message.get("content")
        if role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
                "content": text_of(content),
            }
            return "user", [result]
        if role == "user":
            return "user", self.user_blocks(content)
        if role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for id, name, arguments in tool_calls_of(message):
                blocks.append({"type": "tool_use", "id": id, "name": name, "input": arguments})
            return "assistant", blocks
        raise BadRequest(f"unsupported message role {role!r}", "messages")

    def user_blocks(self, content: Any) -> list[dict[str, Any]]:
        if isinstance(content, str) or content is None:
            return [{"type": "text", "text": content or ""}]
        if not isinstance(content, list):
            raise BadRequest("message content must be a string or a list of parts", "messages")
        blocks: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                blocks.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str):
                    raise BadRequest("image_url must have a url", "messages")
                inline = data_url(url)
                if inline is not None:
                    source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
                else:
                    source = {"type": "url", "url": url}
                blocks.append({"type": "image", "source": source})
            else:
                raise BadRequest(f"unsupported content part {kind!r}", "messages")
        return blocks

    def tools(self, body: dict[str, Any], payload: dict[str, Any]) -> None:
        tools = function_tools(body)
        if tools:
            payload["tools"] = [
                {
                    "name": f["name"],
                    "description": str(f.get("description") or ""),
                    "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
                }
                for f in tools
            ]
        choice = body.get("tool_choice")
        spec: dict[str, Any] | None = None
        if choice == "auto":
            spec = {"type": "auto"}
        elif choice == "required":
            spec = {"type": "any"}
        elif choice == "none":
            spec = {"type": "none"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            spec = {"type": "tool", "name": choice["function"].get("name")}
        if body.get("parallel_tool_calls") is False and tools:
            spec = spec or {"type": "auto"}
            spec["disable_parallel_tool_use"] = True
        if spec is not None and tools:
            payload["tool_choice"] = spec

    # -- Messages -> OpenAI ----------------------------------------------------------------------

    def answer(self, exchange: Exchange, data: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in data.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
        prompt, completion, cached = usage_of(data.get("usage"))
        exchange.report_usage(prompt, completion)
        exchange.mark_first_byte()
        usage = exchange.usage
        u = usage_object(
            usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, cached
        )
        finish = FINISH_REASONS.get(str(data.get("stop_reason")), "stop")
        model = str(data.get("model") or exchange.body.get("model"))
        if exchange.operation == "completions":
            return text_completion(str(data.get("id")), model, "".join(texts), finish, u)
        content = "".join(texts) if texts or not calls else None
        return chat_completion(str(data.get("id")), model, content, calls, finish, u)

    async def error(self, resp: aiohttp.ClientResponse, timeouts: TimeoutsConfig) -> Response:
        data = await error_payload(resp, timeouts.read)
        message, kind, _ = self.provider_error(resp.status, data)
        status, code = anthropic_status(resp.status, kind, message)
        return error_reply(status, message, code, None, resp.headers.get("Retry-After"))


def anthropic_status(status: int | None, kind: str | None, message: str) -> tuple[int, str | None]:
    """(OpenAI status, code) of an Anthropic error: its HTTP status (None in a stream's error
    event), its error type and message."""
    if status == 529 or kind == "overloaded_error":
        return 503, "overloaded"
    status = status or STATUSES.get(kind or "", 502)
    if not 400 <= status <= 599:
        return 502, None
    if status == 400 and any(m in message.lower() for m in CONTEXT_MARKERS):
        return 400, "context_length_exceeded"
    return status, CODES.get(status)


def usage_of(usage: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt tokens, completion tokens, cached tokens) of an Anthropic ``usage``: the prompt
    is the input plus the cache writes and reads."""
    if not isinstance(usage, dict):
        return None, None, None
    parts = [count(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens")]
    cached = count(usage.get("cache_read_input_tokens"))
    known = [p for p in (*parts, cached) if p is not None]
    prompt = sum(known) if known else None
    return prompt, count(usage.get("output_tokens")), cached


class StreamTranslator:
    """Anthropic's stream events as OpenAI chunks: ``message_start`` -> the role chunk (sent
    with the first content, so that a stream failing before any content can still fall back),
    ``content_block_*`` -> content and tool-call deltas, ``message_delta`` -> the finish chunk
    (and the output count), ``message_stop`` -> the usage chunk and ``[DONE]``; ``ping`` and
    unknown events are skipped, an ``error`` event fails the stream."""

    __slots__ = ("cached", "complete", "decoder", "exchange", "tools", "writer")

    def __init__(self, exchange: Exchange, model: str) -> None:
        self.exchange = exchange
        self.writer = ChunkWriter(exchange.operation, model)
        self.decoder = SseDecoder()
        self.tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self.cached: int | None = None
        self.complete = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        events = self.decoder.feed(data)
        while True:
            try:
                raw = next(events)
            except StopIteration:
                return
            except ValueError:
                raise StreamFailed("malformed", "the provider sent an event too large") from None
            if self.complete:
                break
            event = parse_json(raw.encode())
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise StreamFailed("malformed", "the provider sent an event that is not valid")
            try:
                out = self.event(event)
            except SHAPE_ERRORS:
                raise StreamFailed(
                    "malformed", "the provider sent an event that is not valid"
                ) from None
            yield from out

    def event(self, event: dict[str, Any]) -> list[bytes]:
        kind = event["type"]
        writer = self.writer
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise StreamFailed("malformed", "the provider sent an event that is not valid")
            if isinstance(message.get("id"), str):
                writer.id = message["id"]
            if isinstance(message.get("model"), str):
                writer.model = message["model"]
            self.usage(message.get("usage"))
            # The role chunk goes with the first content: until then nothing has reached the
            # client, so an error event right after message_start can still fall back.
            return []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools.setdefault(int(event.get("index", 0)), len(self.tools))
                self.exchange.mark_first_byte()
                return writer.tool_call(index, str(block.get("id")), str(block.get("name")), "")
            if block.get("type") == "text" and block.get("text"):
                self.exchange.mark_first_byte()
                return writer.text(str(block["text"]))
            return []
        if kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                raise StreamFailed("malformed", "the provider sent an event that is not valid")
            if delta.get("type") == "text_delta":
                self.exchange.mark_first_byte()
                return writer.text(str(delta.get("text", "")))
            if delta.get("type") == "input_json_delta":
                slot = self.tools.get(int(event.get("index", 0)))
                if slot is None:
                    return []
                return writer.tool_call(slot, None, None, str(delta.get("partial_json", "")))
            return []  # thinking, signatures, citations: not in OpenAI's chat format
        if kind == "message_delta":
            self.usage(event.get("usage"))
            delta = event.get("delta") or {}
            reason = FINISH_REASONS.get(str(delta.get("stop_reason")), "stop")
            return writer.finish(reason)
        if kind == "message_stop":
            self.complete = True
            self.exchange.mark_first_byte()
            usage = self.exchange.usage
            prompt = usage.prompt_tokens if usage else 0
            completion = usage.completion_tokens if usage else 0
            return [*writer.start(), writer.usage(prompt, completion, self.cached), DONE]
        if kind == "error":
            error = event.get("error") or {}
            etype = error.get("type") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            text = str(message or "the provider failed")
            status, _ = anthropic_status(None, etype if isinstance(etype, str) else None, text)
            raise StreamFailed("provider", text, status)
        return []  # ping, content_block_stop, and events added after this was written

    def usage(self, usage: Any) -> None:
        prompt, completion, cached = usage_of(usage)
        if cached is not None:
            self.cached = cached
        if prompt is not None or completion is not None:
            self.exchange.report_usage(prompt, completion)
