"""``kind: ollama``: Ollama's native API, translated both ways: chat -> ``POST /api/chat``,
legacy completions -> ``POST /api/generate``, embeddings -> ``POST /api/embed``. Its NDJSON
stream becomes OpenAI's SSE chunks line by line, as each line arrives; its final line's
``prompt_eval_count``/``eval_count`` are the usage. ``{"error": "..."}`` replies become OpenAI
errors. No credential is needed (``api_key``, when set, is sent as a bearer token, for an
Ollama behind a proxy). The health probe is ``GET /api/tags``.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import aiohttp
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
    new_id,
    parse_json,
    probe_models,
    single_choice,
    stop_list,
    stream_reply,
    text_completion,
    text_of,
    tool_calls_of,
    usage_object,
)
from gatewayd_llm.wire import DONE, LineDecoder

FINISH_REASONS = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
PATHS = {"chat": "/api/chat", "completions": "/api/generate", "embeddings": "/api/embed"}
# OpenAI sampling parameters and their names among Ollama's options.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class OllamaUpstreamConfig(ProviderConfig):
    kind: Literal["ollama"] = "ollama"
    base_url: str = "http://127.0.0.1:11434"
    keep_alive: str | None = None  # how long Ollama keeps the model loaded (its own syntax: 5m)
    options: dict[str, Any] = {}  # Ollama options sent with every request (e.g. num_ctx)


def request_headers(exchange: Exchange | None, secret: str | None) -> dict[str, str]:
    """Ours only (never the client's): the request id, the credential if one is set."""
    headers = {"Content-Type": "application/json", "User-Agent": "gatewayd-llm"}
    if exchange is not None and exchange.request_id:
        headers["X-Request-ID"] = exchange.request_id
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


class OllamaUpstream(HttpProvider):
    kind: ClassVar[str] = "ollama"
    Config: ClassVar[type[ProviderConfig]] = OllamaUpstreamConfig
    config: OllamaUpstreamConfig

    @classmethod
    def cheap_probe(cls, config: ProviderConfig, secret: str | None) -> Probe:
        """``GET /api/tags`` (the local models)."""
        return Probe(URL(config.base_url + "/api/tags"), request_headers(None, secret))

    def headers(self, exchange: Exchange | None, secret: str | None) -> dict[str, str]:
        return request_headers(exchange, secret)

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
        try:
            payload = self.native_request(exchange)
        except BadRequest as exc:
            return error_reply(400, exc.message, None, exc.param)
        data = json.dumps(payload, separators=(",", ":")).encode()
        resp = await self.post(session, self.url(PATHS[exchange.operation]), data, exchange)
        try:
            if resp.status != 200:
                return await self.error(resp, timeouts)
            if payload.get("stream"):
                translator = StreamTranslator(exchange, str(payload["model"]))
                return stream_reply(resp, timeouts.read, exchange, translator)
        except BaseException:
            resp.close()
            raise
        data = parse_json(await read_whole(resp, timeouts.read))
        if not isinstance(data, dict) or "error" in data:
            if isinstance(data, dict):
                message = self.scrub(str(data["error"])[:2000])
                return error_reply(502, message)
            raise malformed(attempt, self.name)
        try:
            if exchange.operation == "embeddings":
                return json_reply(embeddings_answer(exchange, data))
            return json_reply(answer(exchange, data))
        except SHAPE_ERRORS:
            raise malformed(attempt, self.name) from None

    async def error(self, resp: aiohttp.ClientResponse, timeouts: TimeoutsConfig) -> Response:
        data = await error_payload(resp, timeouts.read)
        message, _, _ = self.provider_error(resp.status, data)
        status = resp.status if 400 <= resp.status <= 599 else 502
        code = CODES.get(status)
        if status == 400 and "context" in message.lower() and "length" in message.lower():
            code = "context_length_exceeded"
        return error_reply(status, message, code, None, resp.headers.get("Retry-After"))

    # -- OpenAI -> Ollama ------------------------------------------------------------------------

    def native_request(self, exchange: Exchange) -> dict[str, Any]:
        body = exchange.body
        payload: dict[str, Any] = {"model": body.get("model")}
        if self.config.keep_alive is not None:
            payload["keep_alive"] = self.config.keep_alive
        if exchange.operation == "embeddings":
            payload["input"] = embedding_input(body.get("input"))
            if isinstance(body.get("dimensions"), int):
                payload["dimensions"] = body["dimensions"]
            return payload
        single_choice(body)
        if exchange.operation == "completions":
            payload["prompt"] = legacy_prompt(body)
            if isinstance(body.get("suffix"), str):
                payload["suffix"] = body["suffix"]
        else:
            payload["messages"] = chat_messages(body.get("messages"))
            if function_tools(body):
                payload["tools"] = body["tools"]  # Ollama takes OpenAI's tool definitions
            response_format = body.get("response_format")
            if isinstance(response_format, dict):
                if response_format.get("type") == "json_object":
                    payload["format"] = "json"
                elif response_format.get("type") == "json_schema":
                    schema = (response_format.get("json_schema") or {}).get("schema")
                    if isinstance(schema, dict):
                        payload["format"] = schema
        options = dict(self.config.options)
        for key, name in OPTIONS.items():
            if body.get(key) is not None:
                options[name] = body[key]
        limit = max_tokens(body)
        if limit is not None:
            options["num_predict"] = limit
        stop = stop_list(body.get("stop"))
        if stop:
            options["stop"] = stop
        if options:
            payload["options"] = options
        payload["stream"] = exchange.stream  # explicit: Ollama streams unless told not to
        return payload


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", "messages")
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", "messages")
        role = message.get("role")
        content = message.get("content")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"unsupported message role {role!r}", "messages")
        native: dict[str, Any] = {"role": role, "content": text_of(content)}
        images = image_data(content)
        if images:
            native["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for id, name, arguments in tool_calls_of(message):
                names[id] = name
                calls.append({"function": {"name": name, "arguments": arguments}})
            native["tool_calls"] = calls
        if role == "tool":
            tool = names.get(str(message.get("tool_call_id")))
            if tool:
                native["tool_name"] = tool
        out.append(native)
    return out


def image_data(content: Any) -> list[str]:
    """The base64 images of a message's ``image_url`` parts (Ollama takes no image URLs)."""
    if not isinstance(content, list):
        return []
    images = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            inline = data_url(url) if isinstance(url, str) else None
            if inline is None:
                raise BadRequest("this provider takes images as data: URLs only", "messages")
            images.append(inline[1])
    return images


def embedding_input(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("input must be a string or a non-empty list of strings", "input")


def tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        calls.append(
            {
                "id": str(call.get("id") or new_id("call")),
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments or {}),
                },
            }
        )
    return calls


def report(exchange: Exchange, data: dict[str, Any]) -> dict[str, Any]:
    """The usage of a final line (reported to the exchange) as OpenAI's ``usage``."""
    prompt, completion = count(data.get("prompt_eval_count")), count(data.get("eval_count"))
    if prompt is not None or completion is not None:
        exchange.report_usage(prompt, completion)
    usage = exchange.usage
    if usage is None:
        return usage_object(0, 0)
    return usage_object(usage.prompt_tokens, usage.completion_tokens)


def answer(exchange: Exchange, data: dict[str, Any]) -> dict[str, Any]:
    exchange.mark_first_byte()
    usage = report(exchange, data)
    model = str(data.get("model") or exchange.body.get("model"))
    finish = FINISH_REASONS.get(str(data.get("done_reason")), "stop")
    if exchange.operation == "completions":
        text = str(data.get("response", ""))
        return text_completion(new_id("cmpl"), model, text, finish, usage)
    message = data.get("message")
    if not isinstance(message, dict):
        message = {}
    calls = tool_calls(message)
    if calls:
        finish = "tool_calls"
    content = str(message.get("content") or "")
    return chat_completion(
        new_id("chatcmpl"), model, content if content or not calls else None, calls, finish, usage
    )


def embeddings_answer(exchange: Exchange, data: dict[str, Any]) -> dict[str, Any]:
    vectors = data.get("embeddings")
    if not isinstance(vectors, list):
        vectors = []
    as_base64 = exchange.body.get("encoding_format") == "base64"
    items = []
    for i, vector in enumerate(vectors):
        values = [float(v) for v in vector] if isinstance(vector, list) else []
        embedding: Any = values
        if as_base64:  # OpenAI's: the float32 values, little-endian, base64 (the SDK's default)
            embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        items.append({"object": "embedding", "index": i, "embedding": embedding})
    prompt = count(data.get("prompt_eval_count"))
    if prompt is not None:
        exchange.report_usage(prompt, 0)
    exchange.mark_first_byte()
    tokens = exchange.usage.prompt_tokens if exchange.usage else 0
    return {
        "object": "list",
        "data": items,
        "model": str(data.get("model") or exchange.body.get("model")),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class StreamTranslator:
    """Ollama's NDJSON lines as OpenAI chunks: the role chunk goes with the first content, each
    line's ``message.content`` (``response`` for /api/generate) a content chunk, its
    ``tool_calls`` a tool-call chunk; the ``done: true`` line the finish chunk, the usage chunk
    and ``[DONE]``. A line that is not a JSON object is ``malformed``; ``{"error": ...}`` fails
    the stream (``provider``)."""

    __slots__ = ("calls", "complete", "decoder", "exchange", "writer")

    def __init__(self, exchange: Exchange, model: str) -> None:
        self.exchange = exchange
        self.writer = ChunkWriter(exchange.operation, model)
        self.decoder = LineDecoder()
        self.calls = 0
        self.complete = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        lines = self.decoder.feed(data)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except ValueError:
                raise StreamFailed("malformed", "the provider sent a line too long") from None
            if self.complete:
                break
            line = parse_json(raw)
            if not isinstance(line, dict):
                raise StreamFailed("malformed", "the provider sent a line that is not valid")
            try:
                out = self.line(line)
            except SHAPE_ERRORS:
                raise StreamFailed(
                    "malformed", "the provider sent a line that is not valid"
                ) from None
            yield from out

    def line(self, line: dict[str, Any]) -> list[bytes]:
        if "error" in line:
            raise StreamFailed("provider", str(line["error"])[:2000])
        writer = self.writer
        out: list[bytes] = []  # the role chunk goes with the first content (writer.text)
        if self.exchange.operation == "completions":
            text = line.get("response")
            if isinstance(text, str) and text:
                self.exchange.mark_first_byte()
                out += writer.text(text)
        else:
            message = line.get("message")
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, str) and content:
                    self.exchange.mark_first_byte()
                    out += writer.text(content)
                for call in tool_calls(message):
                    self.exchange.mark_first_byte()
                    function = call["function"]
                    out += writer.tool_call(
                        self.calls, call["id"], function["name"], function["arguments"]
                    )
                    self.calls += 1
        if line.get("done") is True:
            self.complete = True
            self.exchange.mark_first_byte()
            usage = report(self.exchange, line)
            finish = FINISH_REASONS.get(str(line.get("done_reason")), "stop")
            if self.calls:
                finish = "tool_calls"
            out += writer.finish(finish)
            out += [writer.usage(usage["prompt_tokens"], usage["completion_tokens"]), DONE]
        return out
