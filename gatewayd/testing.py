"""Test a plugin without a daemon: ``PluginHarness`` drives it through the daemon's chain runner.

The harness builds the plugin the way a generation does (the same registry checks, config
validation and :class:`~gatewayd.chain.builder.ChainBuilder`, a real logger, a real
:class:`~gatewayd.chain.handover.Handover`), gives it real in-memory services (a Prometheus
metrics registry of its own, an event bus, plugin state stores on the memory backend, an API key
store in a temporary SQLite file) and runs each request through :mod:`gatewayd.chain.runner`,
the functions the daemon's dispatcher runs::

    from gatewayd.testing import ConfigError, PluginHarness

    async def test_counter():
        async with PluginHarness(RequestCounterPlugin, {"limit": 2}) as h:
            reply = await h.request("GET", "/x", headers={"Accept": "text/plain"})
            assert reply.status == 200 and reply.body == b"ok"
            assert h.upstream_requests[-1].path == "/x"   # what reached the backend
            h2 = h.reload({"limit": 2})                    # a SIGHUP: same config, same state

    def test_bad_config():
        with pytest.raises(ConfigError) as err:
            PluginHarness(RequestCounterPlugin, {"limit": 0})
        assert err.value.problems[0].path == "plugins[0].request_counter.limit"

- The backend is a coroutine ``upstream(ctx) -> Response`` (default: 200 ``text/plain`` "ok"),
  reached through the daemon's own upstream machinery (``ManagedUpstream`` over a small
  in-process kind): the request body is read first (a plugin's body limit answers as in the
  daemon), ``ctx.target`` and ``ctx.attempts`` are set, targets in ``ctx.excluded_targets`` (an
  open breaker) are skipped and, with none left, the reply is 503 ``upstream_unavailable``
  without calling it; hop-by-hop headers are dropped from the reply and ``Via`` added. Raise
  :class:`~gatewayd.chain.UpstreamTimeout` (504), :class:`~gatewayd.chain.UpstreamConnectError`
  (502) or another :class:`~gatewayd.chain.UpstreamError` to act out a failing backend. A
  plugin's own requests (``await context.forward(ctx)``) reach the same backend the same way.
- Replies come back with the body collected into bytes; ``h.last_context`` is the request's
  :class:`~gatewayd.chain.RequestContext` (``principal``, ``state``, ``attempts``...).
- A plugin that raises in ``on_request``/``on_response`` fails closed (the 500 is the reply); one
  that raises in ``on_done`` (where the daemon can only log) makes :meth:`PluginHarness.request`
  raise :class:`PluginFailed`, so it never fails silently. ``h.failures`` lists every failure.
- ``await h.create_key(tenant="acme", scopes=["read"])`` makes an API key for ``key_auth``;
  ``h.published()`` lists the events published so far; ``h.sample(name, **labels)`` reads a
  metric.
- ``upstream_context(name)`` is an :class:`~gatewayd.chain.UpstreamContext` as the daemon gives
  a kind (a real logger, ``keep`` that always makes a fresh object, ``http_client()`` the
  daemon's HTTP client), for testing an upstream kind directly against a real server.
- ``h.reload(config)`` builds the next generation as a SIGHUP does (the state a plugin
  ``keep()``-s carries over when its config is unchanged). Closing any harness of a reload
  lineage closes them all, with the services it made (``async with`` or ``await h.close()``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal

from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gatewayd.chain.api import (
    PRINCIPAL_HEADERS,
    Attempt,
    Body,
    PluginError,
    Principal,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    new_request_id,
)
from gatewayd.chain.builder import Chain, ChainBuilder, Forwarder
from gatewayd.chain.handover import Handover, close_objects
from gatewayd.chain.registry import PluginConfigProblems, PluginRegistry
from gatewayd.chain.runner import run_done, run_request, run_response
from gatewayd.chain.services import PluginServices
from gatewayd.chain.upstream import (
    Target,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamError,
    UpstreamTimeout,
    WebSocketChannel,
)
from gatewayd.config.errors import ConfigError, Problem
from gatewayd.config.schema import (
    HttpUpstreamConfig,
    PluginSpec,
    StateConfig,
    TimeoutsConfig,
    UpstreamConfig,
)
from gatewayd.events.bus import Event, EventBus
from gatewayd.observability.metrics import Metrics
from gatewayd.proxy.dispatch import error_reply
from gatewayd.proxy.http_kind import HttpUpstream, PooledHttpClient
from gatewayd.proxy.runtime_upstreams import RuntimeUpstreams
from gatewayd.proxy.upstream import ManagedUpstream, UpstreamState
from gatewayd.stores.keys import KeyStore, KeyStoreSettings
from gatewayd.stores.keys_sqlite import SQLiteKeyBackend
from gatewayd.stores.state import PluginStores

__all__ = [
    "ConfigError",
    "HarnessServices",
    "PluginFailed",
    "PluginFailure",
    "PluginHarness",
    "Problem",
    "Upstream",
    "UpstreamRequest",
    "ok_upstream",
    "upstream_context",
]


def upstream_context(name: str = "test", services: PluginServices | None = None) -> UpstreamContext:
    """What the daemon gives a kind at construction, for a kind's own tests: ``services``
    (default: in-memory :class:`HarnessServices`), a logger ``gatewayd.upstreams.<name>``,
    ``keep`` that makes a fresh object each time, and the daemon's HTTP client."""
    return UpstreamContext(
        services if services is not None else _satisfies(HarnessServices()),
        logging.getLogger(f"gatewayd.upstreams.{name}"),
        lambda key, factory: factory(),
        lambda pool: PooledHttpClient(name, pool),
    )


Upstream = Callable[[RequestContext], Awaitable[Response]]
"""The fake backend: the reply for one request (``ctx.request`` is what the chain forwards)."""

UPSTREAM = "test"  # the name of the harness's upstream (``ctx.route.upstream``)


async def ok_upstream(ctx: RequestContext) -> Response:
    """The default backend: 200 ``text/plain`` "ok"."""
    return Response(200, {"Content-Type": "text/plain"}, b"ok")


class HarnessServices:
    """Real in-memory services, as the daemon's ``Services`` gives them to plugins: a
    :class:`Metrics` on a registry of its own, an :class:`EventBus`, :class:`PluginStores`
    (``backend`` memory, or redis with ``redis_url``) and a :class:`KeyStore` on SQLite in
    ``state_dir``: the directory given, or a temporary one (made on first use, removed by
    :meth:`close`; bcrypt at its cheapest cost, 4 rounds)."""

    def __init__(
        self,
        backend: Literal["memory", "redis"] = "memory",
        redis_url: str = "redis://127.0.0.1:6379/0",
        state_dir: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.events = EventBus(registry=self.registry)
        self.state = StateConfig(backend=backend, redis_url=redis_url)
        self.stores = PluginStores(self.state)
        self._keys: KeyStore | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._state_dir = state_dir
        self.upstreams = RuntimeUpstreams(self._build_upstream, PluginRegistry.discover())

    def _build_upstream(
        self, name: str, config: UpstreamConfig, registry: PluginRegistry, handover: Handover
    ) -> ManagedUpstream:
        """A run-time upstream (``services.upstreams.put``): an HTTP pool or a kind from a
        plugin distribution (the harness has no relay)."""
        ktype, kconfig = registry.validate_upstream(config, "")
        context = UpstreamContext(
            _satisfies(self),
            logging.getLogger(f"gatewayd.upstreams.{name}"),
            lambda key, factory: handover.keep(f"{name}#{key}", factory),
            lambda pool: PooledHttpClient(name, pool),
        )
        impl: Any
        if isinstance(kconfig, HttpUpstreamConfig):
            impl = HttpUpstream(name, kconfig, context)
        elif ktype is not None:
            impl = ktype.cls(name, kconfig, context)
        else:
            raise PluginConfigProblems([Problem("relay", "the test harness has no relay")])
        return ManagedUpstream(name, impl, kconfig, UpstreamState(name, kconfig, self))

    @property
    def state_dir(self) -> Path:
        """The directory given, else a temporary one (removed by :meth:`close`)."""
        if self._state_dir is not None:
            return self._state_dir
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="gatewayd-harness-")
        return Path(self._dir.name)

    @property
    def keys(self) -> KeyStore:
        if self._keys is None:
            backend = SQLiteKeyBackend(self.state_dir / "keys.sqlite3")
            self._keys = KeyStore(backend, KeyStoreSettings(bcrypt_rounds=4), lambda: self.events)
        return self._keys

    async def close(self) -> None:
        await self.upstreams.close()
        if self._keys is not None:
            await self._keys.close()
            self._keys = None
        await self.stores.close()
        await self.events.close()
        self.metrics.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _satisfies(services: HarnessServices) -> PluginServices:
    """Checked by mypy: the harness's services are what ``PluginContext.services`` promises."""
    return services


@dataclass(slots=True)
class UpstreamRequest:
    """A request as it reached the fake backend (after the chain changed it)."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes
    client_ip: str
    upstream: str | None  # the route's, or the one a plugin chose with ctx.use_upstream
    target: str
    context: RequestContext = field(repr=False)


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that raised (not a :class:`PluginError`, which is an answer): where and what."""

    plugin: str
    phase: str  # on_request, on_response, on_done
    error: BaseException


class PluginFailed(AssertionError):
    """A plugin raised in ``on_done``: the daemon logs it and carries on, so only a test can
    catch it. ``failures`` says which plugin and what it raised."""

    def __init__(self, failures: Sequence[PluginFailure]) -> None:
        self.failures = list(failures)
        parts = [f"{f.plugin}.{f.phase}: {type(f.error).__name__}: {f.error}" for f in failures]
        super().__init__("plugin failed: " + "; ".join(parts))


class _FailureCatcher(logging.Handler):
    """The runner's failure records for one request (it logs each on ``gatewayd.chain``)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(logging.ERROR)
        self.request_id = request_id
        self.failures: list[PluginFailure] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "request_id", None) != self.request_id or record.exc_info is None:
            return
        error = record.exc_info[1]
        if error is not None:
            plugin = str(getattr(record, "plugin", "?"))
            self.failures.append(PluginFailure(plugin, str(getattr(record, "phase", "?")), error))


@dataclass
class _Lineage:
    """The harnesses of one reload history, and the services they share."""

    services: PluginServices
    owned: HarnessServices | None
    members: list[PluginHarness] = field(default_factory=list)
    closed: bool = False


PluginEntry = tuple[type[Any], dict[str, Any] | BaseModel | None]


class PluginHarness:
    """One plugin (and optionally others on the same route chain) driven like the daemon does.

    ``plugins``: more ``(plugin class, config)`` on the chain, e.g. ``[(KeyAuthPlugin, {})]`` in
    front of ``acl``; the chain is ordered by priority as the daemon orders it. ``targets``: the
    ids of the upstream's targets (picked round robin). ``services``: your own (anything that
    satisfies :class:`gatewayd.chain.PluginServices`); by default :class:`HarnessServices`, whose
    ``state_dir`` is the ``state_dir`` given (else a temporary directory).
    An invalid config raises :class:`ConfigError` whose problems name the field as
    ``plugins[<i>].<plugin>.<field>``; a class that is no plugin raises ``PluginLoadError``.
    """

    def __init__(
        self,
        plugin_cls: type[Any],
        config: dict[str, Any] | BaseModel | None = None,
        *,
        upstream: Upstream | None = None,
        services: PluginServices | None = None,
        route: str = "test",
        plugins: Sequence[PluginEntry] = (),
        targets: Sequence[str] = ("target-1",),
        state_dir: Path | None = None,
    ) -> None:
        if services is None:
            owned = HarnessServices(state_dir=state_dir)
            lineage = _Lineage(owned, owned)
        elif state_dir is not None:
            raise ValueError("state_dir is the harness's own services' setting: not with services")
        else:
            lineage = _Lineage(services, None)
        self._setup(
            [(plugin_cls, config), *plugins],
            upstream or ok_upstream,
            route,
            tuple(targets),
            lineage,
            Handover(),
        )

    def _setup(
        self,
        entries: list[PluginEntry],
        upstream: Upstream,
        route: str,
        targets: tuple[str, ...],
        lineage: _Lineage,
        handover: Handover,
    ) -> None:
        if not targets:
            raise ValueError("the upstream needs at least one target")
        self._entries = entries
        self.upstream = upstream
        self.route = route
        self.targets = targets
        self._lineage = lineage
        self.handover = handover
        self.upstream_requests: list[UpstreamRequest] = []
        self.failures: list[PluginFailure] = []
        self._last_context: RequestContext | None = None
        self._started = False
        self._managed: ManagedUpstream | None = None
        self._first_event = self._last_event_id()
        registry = PluginRegistry()
        specs = []
        for cls, config in entries:
            name = getattr(cls, "name", "") or cls.__name__
            registry.add(name, cls)  # the daemon's checks: PluginLoadError for a non-plugin
            data = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
            specs.append(PluginSpec(name=name, config=data))
        # PluginContext.forward (a plugin's own request, e.g. the cache's background
        # revalidation) goes to the fake backend the way a request of the chain does.
        forwarder = Forwarder()
        forwarder.target = self._forward
        builder = ChainBuilder(registry, lineage.services, handover, forwarder)
        try:
            instances = builder.instantiate(specs, f"route:{route}", "plugins", route, UPSTREAM)
        except PluginConfigProblems as exc:
            raise ConfigError(exc.problems) from None
        handover.forget_previous()
        self.plugins: list[Any] = [inst for *_, inst in instances]
        self.plugin: Any = self.plugins[0]
        self.chain: Chain = ChainBuilder.order([], instances)
        lineage.members.append(self)

    @property
    def last_context(self) -> RequestContext:
        """The context of the last request (``principal``, ``state``, ``attempts``...)."""
        if self._last_context is None:
            raise RuntimeError("no request has been made through this harness yet")
        return self._last_context

    # -- services --------------------------------------------------------------------------------

    @property
    def services(self) -> PluginServices:
        return self._lineage.services

    async def create_key(
        self,
        tenant: str = "acme",
        scopes: Sequence[str] = (),
        *,
        key_id: str | None = None,
        expires_in: float | None = None,
        description: str = "",
    ) -> str:
        """A new API key in the key store (``key_auth`` accepts it); returns the key itself."""
        keys: Any = self.services.keys
        if not callable(getattr(keys, "create", None)):
            raise TypeError("these services' key store cannot create keys")
        key, _ = await keys.create(
            tenant,
            frozenset(scopes),
            description=description,
            expires_in=expires_in,
            key_id=key_id,
        )
        return str(key)

    def _last_event_id(self) -> int | None:
        bus = self.services.events
        return bus.last_id if isinstance(bus, EventBus) else None

    def published(self, type: str | None = None) -> list[Event]:
        """The events published since this harness was built (of ``type``, if given)."""
        bus = self.services.events
        if not isinstance(bus, EventBus) or self._first_event is None:
            raise TypeError("published() needs the harness's own event bus")
        sub = bus.subscribe(last_event_id=self._first_event, queue=1_000_000)
        try:
            out: list[Event] = []
            while (item := sub.get_nowait()) is not None:
                if isinstance(item, Event) and (type is None or item.type == type):
                    out.append(item)
            return out
        finally:
            sub.close()

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one metric sample (e.g. ``gatewayd_breaker_state``), None if absent."""
        services = self._lineage.services
        if not isinstance(services, HarnessServices):
            raise TypeError("sample() needs HarnessServices (the harness's own metrics)")
        return services.registry.get_sample_value(name, labels)

    # -- lifecycle -------------------------------------------------------------------------------

    def reload(self, config: dict[str, Any] | BaseModel | None = None) -> PluginHarness:
        """The next generation, as a SIGHUP builds it: a new plugin instance with ``config``
        (None: the same config as now) that gets the kept state of this one when its config is
        unchanged. The extra ``plugins`` keep their configs. This harness keeps working."""
        if self._lineage.closed:
            raise RuntimeError("the harness is closed")
        entries = list(self._entries)
        if config is not None:
            entries[0] = (entries[0][0], config)
        nxt = object.__new__(PluginHarness)
        nxt._setup(
            entries,
            self.upstream,
            self.route,
            self.targets,
            self._lineage,
            Handover(self.handover),
        )
        return nxt

    async def start(self) -> None:
        """Call the plugins' ``start()`` (done by the first request if not called)."""
        if self._lineage.closed:
            raise RuntimeError("the harness is closed")
        if not self._started:
            self._started = True
            for plugin in self.plugins:
                start = getattr(plugin, "start", None)
                if callable(start):
                    await start()

    async def close(self) -> None:
        """Close every harness of this reload lineage: the plugins' ``close()``, the state they
        kept (``close()`` of kept objects) and the services the harness made."""
        lineage = self._lineage
        if lineage.closed:
            return
        lineage.closed = True
        kept: dict[int, Any] = {}
        for member in lineage.members:
            for plugin in member.plugins:
                close = getattr(plugin, "close", None)
                if callable(close):
                    await close()
            for obj in member.handover.objects.values():
                kept[id(obj)] = obj
        await close_objects(list(kept.values()))
        if lineage.owned is not None:
            await lineage.owned.close()

    async def __aenter__(self) -> PluginHarness:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------------------

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | CIMultiDict[str] | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        client_ip: str = "127.0.0.1",
        query_string: str = "",
        *,
        host: str | None = None,
        principal: Principal | None = None,
    ) -> Response:
        """One request through the chain (and the fake backend unless a plugin answers).

        ``body`` is bytes or an async iterable of chunks (streamed: no Content-Length unless
        ``headers`` has one). ``principal`` authenticates the request before the chain runs, as
        an earlier auth plugin would. Incoming ``X-Gateway-*`` identity headers are removed, as
        the daemon does. Returns the reply with its body collected into bytes (a body that
        fails while it streams raises here: the daemon's client sees a cut connection)."""
        async with self.stream(
            method,
            path,
            headers=headers,
            body=body,
            client_ip=client_ip,
            query_string=query_string,
            host=host,
            principal=principal,
        ) as reply:
            assert not isinstance(reply.body, bytes)
            reply.body = b"".join([chunk async for chunk in reply.body])
        return reply

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | CIMultiDict[str] | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        client_ip: str = "127.0.0.1",
        query_string: str = "",
        *,
        host: str | None = None,
        principal: Principal | None = None,
    ) -> AsyncIterator[Response]:
        """:meth:`request` for a reply read as it streams (SSE, big bodies)::

            async with h.stream("GET", "/events") as reply:
                first = await anext(reply.body)

        ``reply.body`` is an async iterator of chunks whatever the backend gave; leaving the
        block closes it (a client that goes away) and runs ``on_done``."""
        await self.start()
        ctx = self._context(method, path, headers, body, client_ip, query_string, host)
        if principal is not None:
            ctx.authenticate(principal)
        self._last_context = ctx
        catcher = _FailureCatcher(ctx.request_id)
        chain_log = logging.getLogger("gatewayd.chain")
        chain_log.addHandler(catcher)
        chain = self.chain
        seen = -1
        reply_body: AsyncGenerator[bytes, None] | None = None
        try:
            reply, seen = await run_request(chain, ctx)
            if reply is None:
                reply = await self._forward(ctx)
            reply = await run_response(chain, ctx, reply, seen)
            ctx.response = reply
            reply.headers["X-Request-ID"] = ctx.request_id
            reply_body = _counted_out(reply.body, ctx)
            reply.body = reply_body
            yield reply
        finally:
            try:
                if reply_body is not None:
                    await reply_body.aclose()
                await run_done(chain, ctx, seen)
            finally:
                chain_log.removeHandler(catcher)
                self.failures += catcher.failures
            done = [f for f in catcher.failures if f.phase == "on_done"]
            if done:
                raise PluginFailed(done)

    def _context(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | CIMultiDict[str] | None,
        body: bytes | AsyncIterable[bytes] | None,
        client_ip: str,
        query_string: str,
        host: str | None,
    ) -> RequestContext:
        h: CIMultiDict[str] = CIMultiDict(headers or {})
        for name in PRINCIPAL_HEADERS:  # only the gateway sets these, as in the daemon
            h.popall(name, None)
        declared = h.get("Content-Length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        request = Request(
            method,
            path,
            query_string,
            h,
            host or h.get("Host") or "gateway.test",
            "http",
            client_ip,
            None,
            len(body) if isinstance(body, bytes) else length,
        )
        ctx = RequestContext(request, new_request_id(), RouteInfo(self.route, UPSTREAM, ""))
        if isinstance(body, bytes):
            request.body = body
        elif body is not None:
            request.body = _counted(body, ctx)
        return ctx

    async def _forward(self, ctx: RequestContext) -> Response:
        """A request to the fake backend through the daemon's own upstream machinery
        (:class:`~gatewayd.proxy.upstream.ManagedUpstream`: target choice, excluded targets,
        timeouts, attempts), as the dispatcher forwards it (also ``PluginContext.forward``);
        failures are the daemon's error replies."""
        if self._managed is None:
            config = UpstreamConfig()
            kind = _HarnessKind(self)
            self._managed = ManagedUpstream(UPSTREAM, kind, config, UpstreamState(UPSTREAM, config))
        request = ctx.request
        try:
            return await self._managed.send(ctx, request.path, request.headers, TimeoutsConfig())
        except (UpstreamError, PluginError) as exc:
            return error_reply(ctx, exc)


class _HarnessKind:
    """The harness's upstream kind: its targets are ``PluginHarness(targets=...)``, one attempt
    reads the request body and asks the fake backend coroutine for the reply."""

    kind: ClassVar[str] = "harness"

    def __init__(self, harness: PluginHarness) -> None:
        self.name = UPSTREAM
        self.harness = harness
        self._targets = [Target(t) for t in harness.targets]

    def targets(self) -> Sequence[Target]:
        return self._targets

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        request = ctx.request
        data = await _read(request.body)  # a plugin's body limit raises PluginError here
        request.body = data
        self.harness.upstream_requests.append(
            UpstreamRequest(
                request.method,
                request.path,
                request.query_string,
                CIMultiDict(request.headers),
                data,
                request.client_ip,
                ctx.upstream,
                target.id,
                ctx,
            )
        )
        try:
            reply = await self.harness.upstream(ctx)
        except UpstreamError as exc:
            if attempt.error is None:
                attempt.error = (
                    "timeout"
                    if isinstance(exc, UpstreamTimeout)
                    else "connect"
                    if isinstance(exc, UpstreamConnectError)
                    else "disconnect"
                )
            raise
        return Response(reply.status, CIMultiDict(reply.headers), reply.body, reply.reason)

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
        raise UpstreamError(501, "websocket_unsupported", "the harness backend has no WebSockets")


async def _counted(body: AsyncIterable[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
    async for chunk in body:
        ctx.bytes_in += len(chunk)
        yield chunk


async def _read(body: Body | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return b"".join([chunk async for chunk in body])


async def _counted_out(body: Body, ctx: RequestContext) -> AsyncGenerator[bytes, None]:
    """The reply body as the daemon writes it: chunk by chunk, counted, the source closed."""
    if isinstance(body, bytes):
        ctx.bytes_out += len(body)
        yield body
        return
    try:
        async for chunk in body:
            ctx.bytes_out += len(chunk)
            yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
