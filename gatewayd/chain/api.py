"""The public plugin API: everything a plugin author (built-in or third-party) may use.

A plugin is a class with a ``name``, a pydantic ``Config`` model, a default ``priority`` (higher
runs first, as in Kong) and any of the phases below. Only the phases a plugin defines are called.

- ``async on_request(ctx) -> Response | None`` in chain order: return ``None`` to go on, or a
  :class:`Response` to answer at once (a local reply: 401, 429, a cache hit).
- ``async on_response(ctx, response) -> None`` in reverse order, over the plugins that saw the
  request: change ``response.status``/``response.headers`` or wrap ``response.body``.
- ``on_response_chunk(ctx, chunk) -> bytes`` (sync, rare) for each body chunk, in reverse order.
- ``async on_done(ctx) -> None`` in reverse order; always runs (accounting, logs).

A plugin that raises fails closed: :class:`PluginError` gives its own status, anything else a 500.
"""

from __future__ import annotations

import functools
import http
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from gatewayd.chain.services import PluginServices

T = TypeVar("T")

Body = bytes | AsyncIterator[bytes]


class PluginConfig(BaseModel):
    """Base for plugin config models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EmptyConfig(PluginConfig):
    pass


class PluginError(Exception):
    """Raised by a plugin to answer with a specific status and the standard JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class BodyTooLarge(PluginError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body exceeds {limit} bytes")
        self.limit = limit


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The methods RFC 9110 (9.2.2) calls idempotent: a request of these may be sent again."""

PRINCIPAL_HEADERS = (
    "X-Gateway-Tenant",
    "X-Gateway-Subject",
    "X-Gateway-Key-Id",
    "X-Gateway-Roles",
    "X-Gateway-Scopes",
    "X-Gateway-Auth",
)
"""Headers that carry the authenticated principal to the backend. Only the gateway sets them:
the core removes incoming copies once, before any plugin runs, and
:meth:`RequestContext.authenticate` is the only writer of the new ones (a plugin never writes
them itself)."""


@dataclass(slots=True)
class Principal:
    """Who is calling, as established by an authentication plugin."""

    kind: str  # "key", "jwt", "introspection", ...
    subject: str | None = None
    tenant: str | None = None
    key_id: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: dict[str, Any] = field(default_factory=dict)


_UNSAFE_HEADER_CHARS = re.compile(r"[^\x20-\x7e]")


def _header_value(value: str) -> str:
    return _UNSAFE_HEADER_CHARS.sub("", value)[:1024]


@functools.lru_cache(maxsize=4096)
def _identity_headers(
    kind: str,
    subject: str | None,
    tenant: str | None,
    key_id: str | None,
    roles: frozenset[str],
    scopes: frozenset[str],
) -> tuple[tuple[str, str], ...]:
    """The X-Gateway-* values for one caller, cleaned once (the same caller comes back often):
    printable ASCII only, at most 1 KiB each; roles and scopes space-separated and sorted."""
    out = [("X-Gateway-Auth", _header_value(kind))]
    if subject:
        out.append(("X-Gateway-Subject", _header_value(subject)))
    if tenant:
        out.append(("X-Gateway-Tenant", _header_value(tenant)))
    if key_id:
        out.append(("X-Gateway-Key-Id", _header_value(key_id)))
    if roles:
        out.append(("X-Gateway-Roles", _header_value(" ".join(sorted(roles)))))
    if scopes:
        out.append(("X-Gateway-Scopes", _header_value(" ".join(sorted(scopes)))))
    return tuple(out)


class Request:
    """The request as it will be forwarded. Plugins may change any attribute."""

    __slots__ = (
        "body",
        "client_ip",
        "content_length",
        "headers",
        "host",
        "method",
        "path",
        "query_string",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        host: str,
        scheme: str,
        client_ip: str,
        body: Body | None,
        content_length: int | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.host = host
        self.scheme = scheme
        self.client_ip = client_ip
        self.body = body
        self.content_length = content_length

    @property
    def is_websocket(self) -> bool:
        return (
            self.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in self.headers.get("Connection", "").lower()
        )


class Response:
    """A reply: status, headers and a body that is bytes or an async iterator of chunks."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int = 200,
        headers: CIMultiDict[str] | dict[str, str] | None = None,
        body: Body = b"",
        reason: str | None = None,
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = (
            headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers or {})
        )
        self.body = body
        self.reason = reason

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        h = CIMultiDict(headers or {})
        h["Content-Type"] = "application/json"
        return cls(status, h, json.dumps(data, separators=(",", ":")).encode())


def error_body(code: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id}},
        separators=(",", ":"),
    ).encode()


@dataclass(slots=True)
class Attempt:
    """One try at an upstream target (the forwarder records each, retries included).

    ``error``: ``connect``, ``timeout``, ``disconnect``, ``framing`` (the target broke HTTP's
    framing: a bad head, a bad chunk, a body shorter or longer than it said), ... It may be set
    on an attempt that did answer (``status`` set): an error mid-body, or a reply that was whole
    all the same (bytes past its ``Content-Length``, dropped with the connection); the core
    counts it in ``gatewayd_upstream_errors_total`` once either way."""

    target: str
    status: int | None = None
    error: str | None = None
    duration: float = 0.0


INTERIM_MAX = 4
"""Interim (1xx) responses relayed to the client per request, at most; more are dropped."""
INTERIM_MAX_BYTES = 8 * 1024
"""Their bytes per request, at most (each counts at least ``INTERIM_MAX_BYTES / INTERIM_MAX``)."""
_INTERIM_MIN_COST = INTERIM_MAX_BYTES // INTERIM_MAX
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REASONS = {s.value: s.phrase for s in http.HTTPStatus if s.value < 200}


class InterimWriter(Protocol):
    """Where interim responses go: the client connection's writer before the final response
    (aiohttp's ``request.writer``, as its own ``Expect: 100-continue`` handler uses it)."""

    async def write(self, chunk: bytes) -> None: ...


def _interim_head(status: int, headers: CIMultiDict[str]) -> bytes | None:
    """An interim response on the wire, or ``None`` if a header is not fit to send (a name
    that is no token, a line break in a value)."""
    parts = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"]
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) is None or "\r" in value or "\n" in value:
            return None
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    upstream: str | None
    prefix: str


class RequestContext:
    """Per-request state shared by the plugins of one chain and the forwarder."""

    __slots__ = (
        "_interim_room",
        "_principal",
        "attempts",
        "bytes_in",
        "bytes_out",
        "error",
        "excluded_targets",
        "interim_writer",
        "request",
        "request_id",
        "response",
        "route",
        "started",
        "state",
        "target",
        "upstream",
    )

    def __init__(self, request: Request, request_id: str, route: RouteInfo) -> None:
        self.request = request
        self.request_id = request_id
        self.route = route
        # The upstream this request goes to: the route's, or the one an ``on_request`` phase
        # chose with :meth:`use_upstream` (``relay:<lease>`` for ``relay:`` routes).
        self.upstream: str | None = route.upstream
        self._principal: Principal | None = None
        self.state: dict[str, Any] = {}
        self.response: Response | None = None
        self.target: str | None = None
        self.attempts: list[Attempt] = []
        self.excluded_targets: set[str] = set()
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        # Set by the core for HTTP/1.1 clients (None: interim responses are dropped).
        self.interim_writer: InterimWriter | None = None
        self._interim_room = INTERIM_MAX_BYTES

    @property
    def principal(self) -> Principal | None:
        """Who is calling, once an auth plugin has called :meth:`authenticate` (read-only)."""
        return self._principal

    def authenticate(self, principal: Principal, forward_headers: bool = True) -> bool:
        """Establish who is calling: the only writer of :attr:`principal` and of the identity
        headers (:data:`PRINCIPAL_HEADERS`) the backend receives.

        The first authenticator wins: on a request that is already authenticated (an earlier
        auth plugin on the chain found a credential) this changes nothing and returns False, so
        a later plugin can neither replace the caller nor drop the headers forwarded for it.
        Otherwise the principal is set, and with ``forward_headers`` the X-Gateway-* headers
        describing it are added to the upstream request (incoming copies were removed by the
        core before the chain ran); returns True."""
        if self._principal is not None:
            return False
        self._principal = principal
        if forward_headers:
            headers = self.request.headers
            for name, value in _identity_headers(
                principal.kind,
                principal.subject,
                principal.tenant,
                principal.key_id,
                principal.roles,
                principal.scopes,
            ):
                headers[name] = value
        return True

    def use_upstream(self, name: str) -> None:
        """Send this request to the upstream ``name`` (from ``upstreams:`` in the config) instead
        of the route's: routing on request content, such as a JSON body field. Call it in
        ``on_request``; plugins that look at the chosen upstream (``circuit_breaker``, priority
        200) see the choice when they run after the plugin that made it (a higher priority).
        An unknown name answers 500 ``unknown_upstream`` (a configuration mistake)."""
        self.upstream = name

    async def send_interim(self, status: int, headers: CIMultiDict[str]) -> None:
        """Relay an interim response (``1xx``: ``100 Continue``, ``103 Early Hints``...) that
        the target sent before its final reply, to the client, now. For upstream kinds: call it
        for each one as it arrives, before returning the reply from ``send``, with the headers
        as the target sent them less the hop-by-hop ones (``Connection`` and those it names,
        ``Keep-Alive``, ``Transfer-Encoding``, ...), as the core removes them from replies.

        It does nothing (the interim response is dropped) when the client cannot take it (an
        HTTP/1.0 client, or no client: :attr:`interim_writer` is ``None``), once the final
        response has started (:attr:`response` is set), for ``101`` (upgrades have their own
        path) or a status outside ``1xx``, for a header not fit to send, and past
        :data:`INTERIM_MAX` responses or :data:`INTERIM_MAX_BYTES` bytes for this request. A
        client that went away is not an error here (its final reply fails as it would have).
        Interim responses are never part of the reply: plugins (the cache) never see them."""
        writer = self.interim_writer
        if writer is None or self.response is not None or not 100 <= status < 200:
            return
        if status == 101:
            return
        data = _interim_head(status, headers)
        if data is None:
            return
        cost = max(len(data), _INTERIM_MIN_COST)
        if cost > self._interim_room:
            return
        self._interim_room -= cost
        try:
            await writer.write(data)
        except ConnectionError:
            self.interim_writer = None

    def error_response(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """A local reply with the standard JSON error body and this request's id."""
        h = CIMultiDict(headers or {})
        h["Content-Type"] = "application/json"
        return Response(status, h, error_body(code, message, self.request_id))

    async def read_body(self, limit: int) -> bytes:
        """Read the whole request body (at most ``limit`` bytes, else 413) and keep it for
        forwarding, byte for byte. For plugins that must see the body (signatures)."""
        body = self.request.body
        if body is None:
            return b""
        if isinstance(body, bytes):
            if len(body) > limit:
                raise BodyTooLarge(limit)
            return body
        cl = self.request.content_length
        if cl is not None and cl > limit:
            raise BodyTooLarge(limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)
        data = b"".join(parts)
        self.request.body = data
        return data


def new_request_id() -> str:
    return os.urandom(16).hex()


class PluginContext:
    """What a plugin gets at construction: where it sits and the daemon's shared services.

    ``keep(key, factory)`` hands state over across reloads: when the plugin at the same place
    (scope, name, position among identical ones) has the same config in the new generation, it
    gets the object the old generation kept under ``key``; otherwise ``factory()`` makes one.
    """

    __slots__ = (
        "_forward",
        "_handover",
        "identity",
        "logger",
        "route",
        "scope",
        "services",
        "upstream",
    )

    def __init__(
        self,
        scope: str,
        route: str | None,
        upstream: str | None,
        identity: str,
        services: PluginServices,
        handover: Any,
        logger: Any,
        forward: Callable[[RequestContext], Awaitable[Response]] | None = None,
    ) -> None:
        self.scope = scope
        self.route = route
        self.upstream = upstream
        self.identity = identity
        self.services: PluginServices = services
        self._handover = handover
        self.logger = logger
        self._forward = forward

    def keep(self, key: str, factory: Callable[[], T]) -> T:
        kept: T = self._handover.keep(f"{self.identity}#{key}", factory)
        return kept

    async def forward(self, ctx: RequestContext) -> Response:
        """Send ``ctx.request`` to ``ctx.upstream`` exactly as the daemon forwards a request of
        ``ctx.route`` (hop-by-hop headers stripped, X-Forwarded-*, the route's path mapping,
        timeouts, retries, balancing, ``ctx.excluded_targets``), without running any chain.
        For work a plugin does on its own, such as the cache's background revalidation.
        Upstream failures come back as error replies (502/503/504), never as exceptions."""
        if self._forward is None:
            raise RuntimeError("this plugin context cannot forward (no generation)")
        return await self._forward(ctx)


class Plugin:
    """Base class for plugins (optional: any class with the same attributes works)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = EmptyConfig
    priority: ClassVar[int] = 1000

    def __init__(self, config: Any, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Called once the generation is built, before it serves."""

    async def close(self) -> None:
        """Called when the generation that built this instance has drained."""


PHASES = ("on_request", "on_response", "on_response_chunk", "on_done")
