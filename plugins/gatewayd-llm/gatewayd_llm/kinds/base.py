"""What the HTTP provider kinds (openai, anthropic, ollama) share: config, error mapping, and
for the kinds that use it (anthropic, ollama) one aiohttp session per upstream and reading a
provider's stream with a deadline per chunk (the openai kind sends through gatewayd's own HTTP
client instead: ``UpstreamContext.http_client()``).

A kind's ``send`` serves two callers: the ``llm`` plugin (``ctx.state[EXCHANGE]`` holds the
request, see :mod:`gatewayd_llm.exchange`) and gatewayd's active health checks (no exchange: the
kind answers a cheap probe, such as the provider's model list, never a billed completion).
Each kind says once what that probe is (:meth:`HttpProvider.cheap_probe`: URL and headers);
its health check and the admin API's connectivity test (:mod:`gatewayd_llm.connectivity`) both
send it.

The provider's secret is ``api_key`` (fixed) or ``credential`` (a name in the process's
:class:`~gatewayd_llm.credentials.Credentials`, read at send time: a rotation applies to the
next request). With a credential, a 401 from the provider is retried once, before anything
reaches the client, with the credential's alternate secret while a rotation's grace lasts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from gatewayd.chain import (
    Attempt,
    RequestContext,
    Response,
    Target,
    TimeoutsConfig,
    UpstreamConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamError,
    UpstreamTimeout,
    WebSocketChannel,
)
from gatewayd_llm.credentials import Credentials, credentials
from gatewayd_llm.exchange import EXCHANGE, Exchange, StreamFailed

READ_CHUNK = 64 * 1024


class ProviderConfig(UpstreamConfig):
    """Common keys of the HTTP provider kinds. ``api_key`` is a secret: never logged, never in
    an error, a metric or an event (``${ENV}`` references are expanded by gatewayd's loader).
    ``credential`` instead names a secret of the process's ``Credentials`` (the admin API's
    providers: sealed at rest, rotated live)."""

    base_url: str
    api_key: SecretStr | None = None
    credential: str | None = Field(None, min_length=1)
    # Connections to the provider at once (each stream holds one for its whole length): the
    # official OpenAI SDK allows 1,000 too.
    max_connections: int = Field(1000, ge=1)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        url = URL(v)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"invalid base_url {v!r} (expected http(s)://host[:port][/path])")
        try:
            url.host.encode("idna")
        except UnicodeError:
            raise ValueError(f"invalid base_url {v!r}: not a valid host name") from None
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_secret(self) -> ProviderConfig:
        if self.api_key is not None and self.credential is not None:
            raise ValueError("credential: give either api_key or credential, not both")
        return self


@dataclass(frozen=True, slots=True)
class Probe:
    """A kind's cheap request (its model list): GET ``url`` with ``headers``; never billed."""

    url: URL
    headers: dict[str, str]


class HttpProvider:
    """Base of the HTTP provider kinds: subclasses set ``kind``/``Config`` and implement
    :meth:`call` (one request to the provider, answered in OpenAI's format) and :meth:`probe`."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig

    def __init__(self, name: str, config: ProviderConfig, context: UpstreamContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.base = URL(config.base_url)
        # One target, the provider; kept across reloads so health and ejection carry over.
        self._targets: list[Target] = context.keep("targets", lambda: [Target(config.base_url)])
        self.session: aiohttp.ClientSession | None = None
        self.credentials: Credentials | None = (
            credentials(context.services) if config.credential is not None else None
        )

    @classmethod
    def cheap_probe(cls, config: ProviderConfig, secret: str | None) -> Probe:
        """The kind's health probe for ``config`` sending ``secret``."""
        raise NotImplementedError

    def targets(self) -> Sequence[Target]:
        return self._targets

    async def start(self) -> None:
        connect = self.config.timeouts.connect
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect),
            trust_env=False,
        )

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    def url(self, path: str) -> URL:
        """``base_url`` joined with ``path`` (e.g. ``/chat/completions``)."""
        return URL(str(self.base) + path)

    def secret(self) -> str | None:
        """The secret to send now: the credential's current one, or ``api_key``."""
        if self.credentials is not None and self.config.credential is not None:
            return self.credentials.current(self.config.credential)
        return self.config.api_key.get_secret_value() if self.config.api_key else None

    def retry_secret(self, used: str | None) -> str | None:
        """The secret to retry a 401 with, once: the credential's alternate while a rotation's
        grace lasts (None otherwise, and always for ``api_key``)."""
        if self.credentials is None or self.config.credential is None:
            return None
        return self.credentials.alternate(self.config.credential, used)

    def secrets(self) -> tuple[str, ...]:
        """Every secret this upstream may send (what :meth:`scrub` removes)."""
        if self.credentials is not None and self.config.credential is not None:
            return self.credentials.secrets(self.config.credential)
        return (self.config.api_key.get_secret_value(),) if self.config.api_key else ()

    def scrub(self, text: str) -> str:
        """``text`` without this upstream's secrets in it (a provider may quote them)."""
        return scrub(text, self.secrets())

    def headers(self, exchange: Exchange | None, secret: str | None) -> dict[str, str]:
        """The headers of a request to the provider sending ``secret`` (the aiohttp kinds)."""
        raise NotImplementedError

    async def post(
        self, session: aiohttp.ClientSession, url: URL, data: bytes, exchange: Exchange
    ) -> aiohttp.ClientResponse:
        """POST ``data`` to the provider with the current secret; a 401 is retried once with
        the credential's alternate (a rotation's grace), before anything was read of it."""
        secret = self.secret()
        resp = await session.post(
            url, data=data, headers=self.headers(exchange, secret), allow_redirects=False
        )
        if resp.status == 401:
            other = self.retry_secret(secret)
            if other is not None:
                resp.close()
                resp = await session.post(
                    url, data=data, headers=self.headers(exchange, other), allow_redirects=False
                )
        return resp

    def provider_error(self, status: int, payload: Any) -> tuple[str, str | None, str | None]:
        """(message, code, param) of a provider's error reply, safe to show to the client: the
        provider's own message (its credential scrubbed), except for 401/403, which are about
        the gateway's credential (the provider may quote part of it), not the client's."""
        message, code, param = provider_error(
            status, payload, f"upstream '{self.name}' answered {status}"
        )
        if status in (401, 403):
            message = f"upstream '{self.name}' refused the gateway's credentials ({status})"
        return self.scrub(message), code, param

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        session = self.session
        if session is None:
            raise UpstreamError(503, "upstream_closed", f"upstream '{self.name}' is not started")
        exchange = ctx.state.get(EXCHANGE)
        try:
            if isinstance(exchange, Exchange):
                reply = await self.call(session, exchange, attempt, timeouts)
            else:
                reply = await self.probe(session, attempt, timeouts)
        except (UpstreamError, asyncio.CancelledError):
            raise
        except BaseException as exc:
            raise self.map_error(exc, attempt) from exc
        attempt.status = reply.status
        return reply

    async def call(
        self,
        session: aiohttp.ClientSession,
        exchange: Exchange,
        attempt: Attempt,
        timeouts: TimeoutsConfig,
    ) -> Response:
        raise NotImplementedError

    async def probe(
        self, session: aiohttp.ClientSession, attempt: Attempt, timeouts: TimeoutsConfig
    ) -> Response:
        raise NotImplementedError

    async def upgrade(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
        protocols: Sequence[str],
        max_message: int,
    ) -> WebSocketChannel:
        raise no_websockets(self.name, self.kind, attempt)

    def map_error(self, exc: BaseException, attempt: Attempt) -> BaseException:
        """aiohttp's errors as gatewayd's upstream errors (messages name the upstream, never a
        URL with credentials or a header)."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError | asyncio.TimeoutError | TimeoutError):
            attempt.error = "timeout"
            return UpstreamTimeout(f"upstream '{self.name}' timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            attempt.error = "connect"
            return UpstreamConnectError(f"cannot connect to upstream '{self.name}'")
        if isinstance(exc, aiohttp.ClientError | ValueError):
            attempt.error = "disconnect"
            return UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
        return exc


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def no_websockets(upstream: str, kind: str, attempt: Attempt) -> UpstreamError:
    """What ``upgrade`` raises in a kind that has no WebSockets (the LLM kinds)."""
    attempt.error = "refused"
    return UpstreamError(
        502, "websocket_refused", f"upstream '{upstream}' ({kind}) has no WebSockets"
    )


async def read_whole(resp: aiohttp.ClientResponse, timeout: float) -> bytes:
    """A whole (non-streamed) reply body within ``timeout``; the response is released (its
    connection reused), or closed when the read did not complete (timeout, cancellation: the
    provider sees the connection go)."""
    try:
        if resp.content.is_eof():  # all of it has arrived: nothing to wait for
            data = await resp.read()
        else:
            async with asyncio.timeout(timeout):
                data = await resp.read()
    except BaseException:
        resp.close()
        raise
    resp.release()
    return data


async def stream_chunks(
    resp: aiohttp.ClientResponse, read_timeout: float, exchange: Exchange
) -> AsyncIterator[bytes]:
    """The raw bytes of a streamed reply as they arrive, each within ``read_timeout``
    (else :class:`StreamFailed` ``stall``); a cut connection is ``disconnect``. Closing the
    iterator (or cancelling its reader) closes the response: the provider sees the connection
    go and stops generating."""
    try:
        while True:
            try:
                async with asyncio.timeout(read_timeout):
                    chunk = await resp.content.readany()
            except TimeoutError:
                raise StreamFailed("stall", "the provider stopped sending") from None
            except aiohttp.ClientError:
                raise StreamFailed("disconnect", "the provider's connection was cut") from None
            if not chunk:
                if not resp.content.is_eof():
                    raise StreamFailed("disconnect", "the provider's connection was cut")
                return
            yield chunk
    finally:
        resp.close()


def provider_error(status: int, payload: Any, fallback: str) -> tuple[str, str | None, str | None]:
    """(message, code, param) from a provider's error JSON (OpenAI's and Anthropic's shapes
    and Ollama's ``{"error": "..."}``), or ``fallback`` when it says nothing usable."""
    message, code, param = fallback, None, None
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or fallback)
            code = err.get("code") if isinstance(err.get("code"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
            if code is None and isinstance(err.get("type"), str):
                code = str(err["type"])
        elif isinstance(err, str):
            message = err
    return message[:2000], code, param
