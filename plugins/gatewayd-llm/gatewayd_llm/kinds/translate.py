"""What the translating kinds (anthropic, ollama) share: reading OpenAI requests (content parts,
stop lists, legacy prompts), writing OpenAI answers (chat and text completions, whole and as
stream chunks), provider errors as OpenAI errors, and the streamed body that turns a provider's
events into OpenAI's SSE chunks as each one arrives.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from gatewayd.chain import Attempt, Response, TimeoutsConfig, UpstreamError
from gatewayd_llm.exchange import Exchange, Operation, StreamFailed
from gatewayd_llm.kinds.base import read_whole, stream_chunks
from gatewayd_llm.wire import error_body, sse_event, sse_headers

MAX_ERROR_BODY = 64 * 1024  # what is parsed of a provider's error reply


class BadRequest(Exception):
    """The OpenAI request cannot be said in the provider's format (answered 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def error_reply(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: str | None = None,
) -> Response:
    """An OpenAI-shaped error as the kind's reply (the plugin adds the request id)."""
    headers = CIMultiDict({"Content-Type": "application/json"})
    if retry_after is not None and retry_after.strip().isdigit():
        headers["Retry-After"] = retry_after.strip()
    return Response(status, headers, error_body(message, status, code, param))


def malformed(attempt: Attempt, upstream: str) -> UpstreamError:
    """A whole (not streamed) answer that is not what the provider's API returns."""
    attempt.error = "malformed"
    return UpstreamError(502, "upstream_malformed", f"upstream '{upstream}' sent a malformed reply")


# What reading a provider's JSON of an unexpected shape raises (a list where an object was
# expected, a string for a number): the provider's answer is malformed, not our bug to raise.
SHAPE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def unsupported(operation: Operation, kind: str) -> Response:
    return error_reply(
        400,
        f"{operation} are not supported by this provider ({kind})",
        "unsupported_operation",
        "model",
    )


def json_reply(data: dict[str, Any]) -> Response:
    return Response(
        200,
        CIMultiDict({"Content-Type": "application/json"}),
        json.dumps(data, separators=(",", ":")).encode(),
    )


# -- reading OpenAI requests ---------------------------------------------------------------------


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise BadRequest("stop must be a string or a list of strings", "stop")


def max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    return value


def text_of(content: Any, param: str = "messages") -> str:
    """The text of an OpenAI message content (a string, or a list of parts of which only the
    text ones count here); None is empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    raise BadRequest("message content must be a string or a list of parts", param)


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def legacy_prompt(body: dict[str, Any]) -> str:
    """The ``prompt`` of a /v1/completions request as one string (one prompt only)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        raise BadRequest("this provider takes one text prompt per request", "prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", "prompt")
    return prompt


def single_choice(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise BadRequest("this provider returns one choice per request (n must be 1)", "n")


def tool_arguments(arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (a JSON string) as the object providers want."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        raise BadRequest("tool call arguments must be a JSON object", "messages") from None
    if not isinstance(value, dict):
        raise BadRequest("tool call arguments must be a JSON object", "messages")
    return value


def tool_calls_of(message: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, function name, arguments) of an assistant message's ``tool_calls``."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be a list", "messages")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool call needs a function with a name", "messages")
        arguments = tool_arguments(function.get("arguments"))
        out.append((str(call.get("id") or ""), function["name"], arguments))
    return out


def function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of a request's ``tools``."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list", "tools")
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool needs a function with a name", "tools")
        out.append(function)
    return out


def count(value: Any) -> int | None:
    """A provider's token count, or None when it gave none (0 is a count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(0, value)


# -- writing OpenAI answers ----------------------------------------------------------------------


def usage_object(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def chat_completion(
    id: str,
    model: str,
    content: str | None,
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }


def text_completion(
    id: str, model: str, text: str, finish_reason: str, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


class ChunkWriter:
    """OpenAI's stream chunks of one answer, chat (``chat.completion.chunk``) or legacy text
    (``text_completion``), as SSE events."""

    __slots__ = ("chat", "created", "id", "model", "started")

    def __init__(self, operation: Operation, model: str, id: str | None = None) -> None:
        self.chat = operation == "chat"
        self.id = id or new_id("chatcmpl" if self.chat else "cmpl")
        self.model = model
        self.created = int(time.time())
        self.started = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_event(
            {
                "id": self.id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            text = delta.get("content", "")
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk([choice])

    def start(self) -> list[bytes]:
        """The first chunk (chat: the assistant's role), once."""
        if self.started:
            return []
        self.started = True
        if not self.chat:
            return []
        return [self._delta({"role": "assistant", "content": "", "refusal": None})]

    def text(self, text: str) -> list[bytes]:
        if not text:
            return []
        return [*self.start(), self._delta({"content": text})]

    def tool_call(
        self, index: int, id: str | None, name: str | None, arguments: str
    ) -> list[bytes]:
        """A tool call's start (id and name) or a piece of its arguments (chat only)."""
        if not self.chat:
            return []
        call: dict[str, Any] = {"index": index}
        if id is not None:
            call.update(id=id, type="function")
        function: dict[str, Any] = {"arguments": arguments}
        if name is not None:
            function["name"] = name
        call["function"] = function
        return [*self.start(), self._delta({"tool_calls": [call]})]

    def finish(self, finish_reason: str) -> list[bytes]:
        return [*self.start(), self._delta({}, finish_reason)]

    def usage(self, prompt: int, completion: int, cached: int | None = None) -> bytes:
        return self._chunk([], usage=usage_object(prompt, completion, cached))


# -- the provider's reply ------------------------------------------------------------------------


async def probe_models(
    session: aiohttp.ClientSession,
    url: Any,
    headers: dict[str, str],
    upstream: str,
    timeouts: TimeoutsConfig,
) -> Response:
    """A health check: GET the provider's model list (cheap, never billed); 200 is healthy."""
    resp = await session.get(url, headers=headers, allow_redirects=False)
    await read_whole(resp, timeouts.read)
    if resp.status == 200:
        return json_reply({"object": "list", "data": []})
    return error_reply(resp.status, f"upstream '{upstream}' answered {resp.status}")


async def error_payload(resp: aiohttp.ClientResponse, timeout: float) -> Any:
    """A provider's error reply as JSON, or None when it is not JSON or could not be read (its
    status says enough: a 429 whose body was cut is still a 429)."""
    try:
        return parse_json((await read_whole(resp, timeout))[:MAX_ERROR_BODY])
    except (aiohttp.ClientError, TimeoutError):
        return None


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class Translator(Protocol):
    """Turns a provider's streamed bytes into OpenAI SSE events."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The OpenAI events for these bytes (maybe none yet), one by one; raises
        StreamFailed (after the events that came before the failure)."""
        ...

    @property
    def complete(self) -> bool:
        """The provider said the answer is complete (the events ended with ``[DONE]``)."""
        ...


class TranslatedStream:
    """A streamed reply body: the provider's bytes, each read within ``read_timeout``, as
    OpenAI SSE events, yielded as soon as one read completed at least one event. It ends
    after the provider's last event (``[DONE]`` yielded); a provider that stops before that
    raises :class:`StreamFailed` ``disconnect``. ``aclose()`` closes the connection at once
    (the provider sees it go), whether or not the body was ever read."""

    __slots__ = ("chunks", "closed", "failure", "resp", "translator")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        read_timeout: float,
        exchange: Exchange,
        translator: Translator,
    ) -> None:
        self.resp = resp
        self.translator = translator
        self.chunks: AsyncIterator[bytes] = stream_chunks(resp, read_timeout, exchange)
        self.closed = False
        self.failure: StreamFailed | None = None  # due after the events already yielded

    def __aiter__(self) -> TranslatedStream:
        return self

    async def __anext__(self) -> bytes:
        while not self.closed:
            if self.failure is not None:
                await self.aclose()
                raise self.failure
            if self.translator.complete:
                await self.aclose()
                break
            try:
                data = await anext(self.chunks)
            except StopAsyncIteration:
                await self.aclose()
                raise StreamFailed(
                    "disconnect", "the provider's stream ended before the answer was complete"
                ) from None
            except BaseException:
                await self.aclose()
                raise
            events: list[bytes] = []
            try:
                events.extend(self.translator.feed(data))
            except StreamFailed as exc:
                if not events:
                    await self.aclose()
                    raise
                self.failure = exc  # the events before it first: the client gets them
            except BaseException:
                await self.aclose()
                raise
            if events:
                return b"".join(events)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Read to the end: the connection goes back to the pool; else it is closed, now.
        if self.resp.content.at_eof():
            self.resp.release()
        else:
            self.resp.close()
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def stream_reply(
    resp: aiohttp.ClientResponse, read_timeout: float, exchange: Exchange, translator: Translator
) -> Response:
    return Response(200, sse_headers(), TranslatedStream(resp, read_timeout, exchange, translator))
