"""The public upstream interface: how the core reaches any backend.

An *upstream kind* says what its targets are and how to talk to one of them; the core does the
rest the same way for every kind (balancing, health checks, passive ejection, breakers through
``ctx.excluded_targets``, retries and their budget, timeouts, metrics, the admin view). Three
kinds exist: HTTP pools (``targets:``), relay leases (``relay:``), and kinds registered by plugin
distributions in the entry-point group ``gatewayd.upstreams``::

    [options.entry_points]
    gatewayd.upstreams =
        echo = my_dist.upstream:EchoUpstream

A kind is a class with ``kind`` (its config key, e.g. ``kind: echo``), a ``Config`` (a subclass
of :class:`UpstreamConfig`) and the methods of :class:`UpstreamKind`. Errors are reported by
raising :class:`UpstreamError` (or a subclass) after setting ``attempt.error`` to one of
``"connect"`` (the target was never reached: retried for any method), ``"timeout"``,
``"disconnect"`` or ``"reset"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from aiohttp import ClientWSTimeout, WSMsgType, WSServerHandshakeError

from gatewayd.config.schema import (
    HealthConfig,
    PassiveConfig,
    PoolConfig,
    RetriesConfig,
    TimeoutsConfig,
    UpstreamConfig,
)

if TYPE_CHECKING:
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL

    from gatewayd.chain.api import Attempt, RequestContext, Response
    from gatewayd.chain.services import PluginServices

T = TypeVar("T")
_WS_CLOSED, _WS_ERROR = WSMsgType.CLOSED, WSMsgType.ERROR
CLOSE_TIMEOUT = 5.0  # how long a WebSocket close handshake may take


__all__ = [
    "ClientWebSocketChannel",
    "HealthConfig",
    "HttpClient",
    "PassiveConfig",
    "PoolConfig",
    "RetriesConfig",
    "Target",
    "TimeoutsConfig",
    "UpstreamConfig",
    "UpstreamConfigInvalid",
    "UpstreamConnectError",
    "UpstreamContext",
    "UpstreamDirectory",
    "UpstreamError",
    "UpstreamKind",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WebSocketChannel",
]

# -- errors ------------------------------------------------------------------------------------


class UpstreamError(Exception):
    """An upstream request failed before a response could be relayed (502 unless told)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError, TimeoutError):
    def __init__(self, message: str = "upstream timed out") -> None:
        super().__init__(504, "upstream_timeout", message)


class UpstreamConnectError(UpstreamError, ConnectionError):
    def __init__(self, message: str = "cannot connect to upstream") -> None:
        super().__init__(502, "upstream_unreachable", message)


class UpstreamUnavailable(UpstreamError):
    def __init__(self, message: str = "no healthy upstream target", retry_after: int = 1) -> None:
        super().__init__(503, "upstream_unavailable", message, retry_after)


# -- config: the common settings live with the rest of the config schema -------------------------

# -- targets -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Target:
    """One backend of an upstream, by a stable identity (``id``): the URL of an HTTP target, the
    key id and name of a relay peer, whatever a plugin kind chooses. Breaker state, metrics and
    statistics are keyed by ``id``, so a kind must hand back the same id (ideally the same
    object) for the same backend, across reconnects and reloads. The core keeps the rest."""

    id: str
    inflight: int = 0
    healthy: bool = True  # active health checks say so
    ejected: bool = False  # passive ejection: too many consecutive failures lately
    failures: int = 0  # consecutive failed attempts (passive ejection)
    info: dict[str, Any] = field(default_factory=dict)  # kind-specific, shown in the admin view
    seed: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self.seed = self.id.encode()

    @property
    def url(self) -> str:  # the name the HTTP kind's targets had before they had ids
        return self.id

    def available(self, excluded: set[str]) -> bool:
        return self.healthy and not self.ejected and self.id not in excluded


# -- WebSockets --------------------------------------------------------------------------------


@runtime_checkable
class WebSocketChannel(Protocol):
    """The upstream side of a proxied WebSocket, as :meth:`UpstreamKind.upgrade` returns it:
    the subset of aiohttp's ``ClientWebSocketResponse`` the relay of messages uses (so an
    aiohttp client WebSocket is one). ``receive`` returns aiohttp ``WSMessage`` values
    (TEXT, BINARY, PING, PONG, CLOSE, or CLOSED/ERROR when the connection ended)."""

    @property
    def protocol(self) -> str | None: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self) -> aiohttp.WSMessage: ...

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


class ClientWebSocketChannel:
    """A :class:`WebSocketChannel` over an aiohttp client WebSocket and the session it was
    opened on (a session of its own, so that no pool of the upstream holds it and a reload
    cannot cut it): closing the channel, or the connection ending, closes the session too.
    For kinds that open their WebSockets with aiohttp (``session.ws_connect``)."""

    __slots__ = ("session", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str | URL,
        headers: CIMultiDict[str],
        protocols: Sequence[str],
        max_message: int,
        attempt: Attempt,
        upstream: str,
    ) -> ClientWebSocketChannel:
        """``session.ws_connect`` as a proxy needs it (no automatic close or ping handling:
        the relay of messages does both; ``max_message`` bounds a message; no compression;
        no receive timeout, a close handshake within ``CLOSE_TIMEOUT``). A target that declines
        the upgrade raises :class:`UpstreamError` ``websocket_refused`` (502) with
        ``attempt.status``; any other failure closes ``session`` and propagates as aiohttp
        raised it, for the kind to map."""
        try:
            ws = await session.ws_connect(
                url,
                headers=headers,
                protocols=tuple(protocols),
                autoclose=False,
                autoping=False,
                max_msg_size=max_message,
                compress=0,
                timeout=ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
        except BaseException as exc:
            await session.close()
            if isinstance(exc, WSServerHandshakeError):
                attempt.status = exc.status
                attempt.error = "handshake"
                raise UpstreamError(
                    502,
                    "websocket_refused",
                    f"upstream '{upstream}' refused the WebSocket upgrade (status {exc.status})",
                ) from None
            raise
        return cls(ws, session)

    @property
    def protocol(self) -> str | None:
        return self.ws.protocol

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def receive(self) -> aiohttp.WSMessage:
        msg = await self.ws.receive()
        if msg.type in (_WS_CLOSED, _WS_ERROR):
            await self.session.close()
        return msg

    async def send_str(self, data: str) -> None:
        await self.ws.send_str(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def pong(self, message: bytes = b"") -> None:
        await self.ws.pong(message)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        try:
            return await self.ws.close(code=code, message=message)
        finally:
            await self.session.close()


# -- the kind ----------------------------------------------------------------------------------


class HttpClient(Protocol):
    """The daemon's HTTP/1.1 client, for kinds that speak HTTP to their backends: the one the
    ``http`` kind uses (llhttp, a connection pool per origin with keep-alive, TLS with the
    system's trust store for ``https``, read and write flow control, the framing rules of
    docs/traffic.md, interim responses relayed to the client), from
    :meth:`UpstreamContext.http_client`. Make it in ``start()``, close it in ``close()``.

    ``request(ctx, attempt, method, origin, target, headers, body, timeouts)`` sends one
    request to ``origin`` (``https://host[:port]``) for ``target`` (the path and query, as it
    goes on the wire) with exactly ``headers`` and ``body`` (bytes, an async iterator, or None)
    and answers with the reply: its body is bytes when it is small (up to 64 KiB with a
    Content-Length) or the method was HEAD, else an async iterator with ``aclose()`` whose every
    chunk arrives within ``timeouts.read`` (else :class:`UpstreamTimeout`). Failures set
    ``attempt.error`` and raise :class:`UpstreamConnectError` (``connect``),
    :class:`UpstreamTimeout` (``timeout``: ``timeouts.connect`` to connect) or
    :class:`UpstreamError` (``disconnect``, ``framing``), as a kind must. The ``total``
    deadline is the core's, around the kind's whole ``send``."""

    async def request(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        method: str,
        origin: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | Any | None,
        timeouts: TimeoutsConfig,
    ) -> Response: ...

    async def close(self) -> None: ...


class UpstreamContext:
    """What a kind gets at construction: the daemon's shared services, a logger,
    ``keep(key, factory)`` to hand state over across reloads (as plugins have it): while the
    upstream's config is unchanged, the new generation's kind gets the old one's object; and
    :meth:`http_client`, the daemon's HTTP client for kinds that speak HTTP."""

    __slots__ = ("_http", "_keep", "logger", "services")

    def __init__(
        self,
        services: PluginServices,
        logger: logging.Logger,
        keep: Callable[[str, Callable[[], Any]], Any],
        http: Callable[[PoolConfig], HttpClient] | None = None,
    ) -> None:
        self.services = services
        self.logger = logger
        self._keep = keep
        self._http = http

    def keep(self, key: str, factory: Callable[[], T]) -> T:
        kept: T = self._keep(key, factory)
        return kept

    def http_client(self, pool: PoolConfig | None = None) -> HttpClient:
        """A new :class:`HttpClient` with its own pool (``max_connections`` per upstream,
        ``keepalive``, ``read_buffer``: the ``pool`` settings of an ``http`` upstream). The
        daemon and ``gatewayd.testing.upstream_context()`` give contexts that have one."""
        if self._http is None:
            raise RuntimeError("this upstream context has no HTTP client (see gatewayd.testing)")
        return self._http(pool or PoolConfig())


@runtime_checkable
class UpstreamKind(Protocol):
    """What a kind implements. One attempt at one target per call; the core picks the target,
    retries, times out (``total`` until the reply's head, ``read`` per body chunk) and counts.

    - ``targets()``: the targets now (may change over time: relay peers come and go).
    - ``send(target, attempt, ctx, path, headers, timeouts)``: the target's reply, its headers
      as the target sent them (a mutable ``CIMultiDict``: the core removes the hop-by-hop ones
      and adds ``Via``, once, for every kind); its body is bytes or an async iterator of chunks
      (with ``aclose``) whose every chunk the kind times with ``timeouts.read``. On failure set
      ``attempt.error`` and raise :class:`UpstreamError`.
    - ``upgrade(...)``: a WebSocket to the target (:class:`WebSocketChannel`), or raise
      :class:`UpstreamError` (``websocket_refused`` when the target declines the upgrade).
    """

    kind: ClassVar[str]
    name: str

    def targets(self) -> Sequence[Target]: ...

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response: ...

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
    ) -> WebSocketChannel: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


# -- upstreams added at run time -----------------------------------------------------------------


class UpstreamConfigInvalid(ValueError):
    """A run-time upstream's config was refused: ``problems`` holds ``(field, message)`` pairs,
    each field a dotted path inside the upstream's config (``base_url``, ``timeouts.connect``),
    validated by the same pydantic models as an ``upstreams.<name>`` entry of the YAML."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {message}" for where, message in self.problems))


class UpstreamDirectory(Protocol):
    """Upstreams added and removed while the daemon runs, beside the YAML's
    (``services.upstreams``).

    A plugin distribution that manages backends itself (the LLM gateway's providers) puts them
    here: the core serves them exactly like a configured upstream of the same kind (balancing,
    health checks, ejection, retries, timeouts, metrics, ``/_admin/upstreams``), and a request
    reaches one by name (``ctx.use_upstream(name)``, ``PluginContext.forward``). They are
    process-wide: a reload keeps them, and they last until removed or the process ends (the
    distribution stores them and puts them back at start-up). The YAML's names win: a name the
    serving config defines cannot be put, and a reload that defines a name put here serves the
    YAML's (the run-time one stays listed, shadowed, until removed).

    - ``configured()``: the names of the serving config's upstreams.
    - ``runtime()``: the run-time upstreams now, name -> the ``owner`` that put it.
    - ``put(name, config, owner)``: validate ``config`` as an ``upstreams.<name>`` entry (a
      mapping with ``kind`` or ``targets``/``relay``); raises :class:`UpstreamConfigInvalid`
      naming the field, ``ValueError`` when the name is the YAML's or another owner's. Then build
      it, start it (its health checks start) and serve it: new requests use it at once. An
      upstream it replaces closes gracefully: requests in flight on it finish on it.
    - ``remove(name, owner)``: stop serving it (False when there is none of that owner); it closes
      gracefully too.
    """

    def configured(self) -> frozenset[str]: ...

    def runtime(self) -> dict[str, str]: ...

    async def put(self, name: str, config: dict[str, Any], owner: str) -> None: ...

    async def remove(self, name: str, owner: str) -> bool: ...
