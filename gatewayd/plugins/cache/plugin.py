"""The ``cache`` plugin: lookups in ``on_request``, storage in ``on_response`` (the body is teed
while it streams to the client), coalescing of concurrent misses, revalidation, stale serving."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from multidict import CIMultiDict
from pydantic import Field

from gatewayd.chain import (
    AdminRoute,
    Duration,
    Panel,
    Plugin,
    PluginConfig,
    PluginContext,
    Request,
    RequestContext,
    Response,
    Size,
    UpstreamError,
    UpstreamTimeout,
)
from gatewayd.plugins.cache import admin
from gatewayd.plugins.cache.fields import parse_cache_control, seconds
from gatewayd.plugins.cache.policy import (
    Entry,
    StorePolicy,
    invalidated,
    make_entry,
    not_modified,
    refresh,
    secondary_key,
)
from gatewayd.plugins.cache.ranges import range_reply
from gatewayd.plugins.cache.store import MemoryCacheStore, RedisCacheStore, full_key

CACHEABLE = frozenset({"GET", "HEAD"})
# RFC 9110 9.2.1: every other method is unsafe, known or not (M-SEARCH, PROPFIND, ...).
SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
FieldName = Annotated[str, Field(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")]
StaleCondition = Literal["error", "timeout", "http_500", "http_502", "http_503", "http_504"]
# What a stale-if-error directive covers (RFC 5861 4: 500, 502, 503, 504 and no answer at all).
ERROR_CONDITIONS = frozenset({"error", "timeout", "http_500", "http_502", "http_503", "http_504"})
CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")
NOT_MODIFIED_HEADERS = frozenset(
    ("cache-control", "content-location", "date", "etag", "expires", "last-modified", "vary")
)


class CacheConfig(PluginConfig):
    default_ttl: Duration | None = None  # only for responses that say nothing about freshness
    max_object: Size = 1024 * 1024  # larger bodies pass through and are not stored
    max_bytes: Size = 256 * 1024 * 1024  # memory store: LRU bound
    store: Literal["default", "memory", "redis"] = "default"
    coalesce: bool = True
    coalesce_timeout: Duration = 10.0  # a waiting request gives up and goes to the backend
    stale_if_error: Duration = 0.0  # a stale-if-error window when the response gives none
    stale_while_revalidate: Duration = 0.0
    # Like nginx's proxy_cache_use_stale: serve a stale copy that no directive forbids to be
    # served stale (must-revalidate, proxy-revalidate, no-cache, s-maxage) when the upstream
    # fails so, at most use_stale_max past its freshness. [] turns it off.
    use_stale: list[StaleCondition] = ["error", "timeout"]
    use_stale_max: Duration = 86400.0
    # RFC 9213 targeted fields, in priority order: the first present and valid one is this
    # cache's policy (Cache-Control and Expires are then ignored for caching).
    targeted_fields: list[FieldName] = ["Gatewayd-Cache-Control", "CDN-Cache-Control"]
    # Targeted fields removed from the response the client gets: our own, by default; a
    # CDN-Cache-Control goes on, for a CDN in front of the gateway.
    strip_targeted: list[FieldName] = ["Gatewayd-Cache-Control"]
    ranges: bool = True  # answer single byte ranges from a stored full response
    methods_invalidate: bool = True  # a successful unsafe method drops the entries it names
    max_revalidations: int = Field(64, ge=1)  # background revalidations in flight


class Shared:
    """What the plugin keeps across reloads: the store, in-flight fills and revalidations."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.fills: dict[str, asyncio.Future[None]] = {}
        self.revalidating: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()


class CacheState:
    """Per request: what the lookup found and what to do with the response."""

    __slots__ = (
        "client_conditionals",
        "entry",
        "fill",
        "key",
        "mode",
        "primary",
        "requested_at",
        "secondary",
    )

    def __init__(self, mode: str, primary: str, key: str | None = None) -> None:
        self.mode = mode  # "hit", "miss", "validate", "bypass", "unsafe"
        self.primary = primary
        self.requested_at = 0.0  # when the request went to the origin (set when it does)
        self.key = key
        self.secondary: str | None = None
        self.entry: Entry | None = None
        self.fill: asyncio.Future[None] | None = None
        self.client_conditionals: CIMultiDict[str] | None = None  # when revalidating

    def request_time(self) -> float:
        """When the request went to the origin (RFC 9111 4.2.3's request_time)."""
        return self.requested_at or time.time()


class CachePlugin(Plugin):
    name = "cache"
    Config = CacheConfig
    priority = 100  # last: after auth, ACL, rate limiting and the breaker

    def __init__(self, config: CacheConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        stores = context.services.stores
        backend = config.store
        if backend == "default":
            backend = getattr(stores, "backend", "memory")
        if backend == "redis":
            if stores is None:
                raise ValueError("the redis cache store needs the daemon's state stores")
            digest = hashlib.sha256(context.identity.encode()).hexdigest()[:16]
            prefix = f"gatewayd:cache:{digest}:"
            self.shared = context.keep(
                "cache", lambda: Shared(RedisCacheStore(stores.redis(), prefix))
            )
        else:
            self.shared = context.keep("cache", lambda: Shared(MemoryCacheStore(config.max_bytes)))
        self.store = self.shared.store
        self.policy = StorePolicy(
            config.default_ttl,
            tuple(config.targeted_fields),
            frozenset(n.lower() for n in config.strip_targeted),
        )
        self.use_stale = frozenset(config.use_stale)
        self.retain = max(
            config.stale_if_error,
            config.stale_while_revalidate,
            config.use_stale_max if config.use_stale else 0.0,
        )
        # gatewayd_cache_total{route, result}: plain counts, exposed when scraped
        self.counts = _counts(context.services, context.route or "_global")

    # -- purge (admin API) ---------------------------------------------------------------

    @classmethod
    def admin_routes(cls) -> list[AdminRoute]:
        return [
            AdminRoute(
                "POST",
                "/purge",
                admin.purge,
                role="operator",
                summary='drop entries: {"key": "/path?q"} or {"prefix": "/v1/"}, optional "route"',
            )
        ]

    @classmethod
    def dashboard_panels(cls) -> list[Panel]:
        return [Panel("Cache", admin.panel)]

    async def purge(self, key: str | None = None, prefix: str | None = None) -> int:
        result = self.store.purge(key=key, prefix=prefix)
        purged: int = await result if self.store.is_async else result
        return purged

    async def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.store, name)(*args)
        if self.store.is_async:
            try:
                return await result
            except Exception as exc:
                self.context.logger.warning("cache store failed", extra={"error": str(exc)})
                return None
        return result

    # -- request ---------------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> Response | None:
        req = ctx.request
        qs = req.query_string
        primary = f"{req.path}?{qs}" if qs else req.path
        if req.method not in CACHEABLE:
            if req.method not in SAFE and self.config.methods_invalidate:
                ctx.state["cache"] = CacheState("unsafe", primary)
            return None
        lines = req.headers.getall("Cache-Control", ())
        rcc = parse_cache_control(lines) if lines else {}
        if "no-store" in rcc or req.is_websocket:
            ctx.state["cache"] = CacheState("bypass", primary)
            return None
        st = CacheState("miss", primary)
        ctx.state["cache"] = st
        entry = await self._lookup(ctx, st)
        if entry is None and "only-if-cached" in rcc:
            return ctx.error_response(504, "not_cached", "not in cache (only-if-cached)")
        if entry is None and self.config.coalesce:
            entry = await self._wait_or_lead(ctx, st)
        if entry is None:
            st.requested_at = time.time()
            return None
        now = time.time()
        age = entry.age(now)
        client_max_age = seconds(rcc, "max-age")
        must_check = entry.no_cache or "no-cache" in rcc
        if client_max_age is not None and age > client_max_age:
            must_check = True
        if not must_check and age < entry.ttl:
            return self._hit(ctx, entry, age, "HIT")
        swr = max(entry.stale_while_revalidate, self.config.stale_while_revalidate)
        if not must_check and not entry.must_revalidate and age < entry.ttl + swr:
            self._revalidate_later(ctx, st, entry)
            return self._hit(ctx, entry, age, "STALE")
        # Revalidate now: ask the backend with the entry's validators.
        st.mode = "validate"
        st.entry = entry
        st.requested_at = now
        conditionals: CIMultiDict[str] = CIMultiDict()
        st.client_conditionals = conditionals
        for name in CONDITIONALS:
            for value in req.headers.popall(name, ()):
                conditionals.add(name, value)
        if entry.etag:
            req.headers["If-None-Match"] = entry.etag
        if entry.last_modified:
            req.headers["If-Modified-Since"] = entry.last_modified
        return None

    async def _lookup(self, ctx: RequestContext, st: CacheState) -> Entry | None:
        req = ctx.request
        vary = await self._call("vary", st.primary)
        if vary is None:
            return None
        st.secondary = secondary_key(req.host, vary, req.headers)
        st.key = full_key(st.primary, st.secondary)
        entry: Entry | None = await self._call("get", st.key)
        return entry

    async def _wait_or_lead(self, ctx: RequestContext, st: CacheState) -> Entry | None:
        """N concurrent misses for one key: the first goes to the backend, the others wait for
        its response to be stored and are then served from the cache."""
        fills = self.shared.fills
        fill_key = st.primary + "\x00" + ctx.request.host.lower()
        fut = fills.get(fill_key)
        if fut is None:
            st.fill = fills[fill_key] = asyncio.get_running_loop().create_future()
            ctx.state["cache_fill_key"] = fill_key
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), self.config.coalesce_timeout)
        return await self._lookup(ctx, st)

    def _hit(self, ctx: RequestContext, entry: Entry, age: float, how: str) -> Response:
        st: CacheState = ctx.state["cache"]
        # When revalidating, the request carries our validators: judge the client's own.
        conditionals = st.client_conditionals
        if conditionals is None or st.mode != "validate":
            conditionals = ctx.request.headers
        st.mode = "hit"
        self.counts[how] += 1
        if not_modified(entry, conditionals):
            headers = CIMultiDict(
                (k, v) for k, v in entry.headers if k.lower() in NOT_MODIFIED_HEADERS
            )
            headers["Age"] = str(int(age))
            headers["X-Cache"] = how
            return Response(304, headers, b"")
        headers = CIMultiDict(entry.headers)
        headers["Age"] = str(int(age))
        headers["X-Cache"] = how
        if self.config.ranges and entry.status == 200 and ctx.request.method == "GET":
            ranges = ctx.request.headers.get("Range")
            if ranges is not None:
                return range_reply(ctx, entry, headers, ranges)
        return Response(entry.status, headers, entry.body)

    # -- response --------------------------------------------------------------------------

    async def on_response(self, ctx: RequestContext, response: Response) -> None:
        st: CacheState | None = ctx.state.get("cache")
        if st is None or st.mode == "hit":
            return
        await self._on_response(ctx, st, response)
        if self.policy.strip:  # read for the policy above; not for the client
            for name in self.policy.strip:
                response.headers.popall(name, None)

    async def _on_response(self, ctx: RequestContext, st: CacheState, response: Response) -> None:
        if st.mode == "unsafe":
            if 200 <= response.status < 400:
                req = ctx.request
                base = f"{req.scheme}://{req.host}{req.path}"
                for primary in invalidated(st.primary, base, req.host, response.headers):
                    await self._call("purge", primary, None)
            return
        if st.mode == "bypass":
            response.headers["X-Cache"] = "BYPASS"
            self.counts["BYPASS"] += 1
            return
        entry = st.entry
        condition = _failure(ctx, response)
        if st.mode == "validate" and entry is not None:
            if response.status == 304:
                fresh = refresh(entry, response.headers, self.policy, st.request_time())
                await self._store(st, fresh)
                self._replace(ctx, response, fresh, "HIT")
                return
            if condition is not None and self._may_serve_stale(entry, condition):
                self._replace(ctx, response, entry, "STALE")
                return
        elif entry is None and condition is not None and st.key is not None:
            # A miss now, but an entry may have expired just before: serve it if allowed.
            old = await self._call("get", st.key)
            if old is not None and self._may_serve_stale(old, condition):
                self._replace(ctx, response, old, "STALE")
                return
        response.headers["X-Cache"] = "MISS"
        self.counts["MISS"] += 1
        if ctx.request.method != "GET":
            return
        await self._maybe_store(ctx, st, response)

    def _may_serve_stale(self, entry: Entry, condition: str) -> bool:
        """RFC 9111 4.2.4 and RFC 5861: a stale-if-error window (the response's, else the
        config's) decides alone, for any failure; without one, only a copy that no directive
        forbids to be served stale, for the ``use_stale`` conditions, up to ``use_stale_max``."""
        staleness = entry.age(time.time()) - entry.ttl
        window = entry.stale_if_error  # the origin's own bound, when it gives one
        if window is None and self.config.stale_if_error:
            window = self.config.stale_if_error
        if window is not None:
            return condition in ERROR_CONDITIONS and staleness < window
        if entry.forbids_stale or condition not in self.use_stale:
            return False
        return staleness < self.config.use_stale_max

    def _replace(self, ctx: RequestContext, response: Response, entry: Entry, how: str) -> None:
        st: CacheState = ctx.state["cache"]
        reply = self._hit(ctx, entry, entry.age(time.time()), how)
        old_body = response.body
        if not isinstance(old_body, bytes):
            aclose = getattr(old_body, "aclose", None)
            if aclose is not None:
                task = asyncio.ensure_future(aclose())
                self.shared.tasks.add(task)
                task.add_done_callback(self.shared.tasks.discard)
        response.status, response.headers, response.body = reply.status, reply.headers, reply.body
        response.reason = None
        st.mode = "hit"

    async def _maybe_store(self, ctx: RequestContext, st: CacheState, response: Response) -> None:
        has_auth = "Authorization" in ctx.request.headers
        # Decide on the headers first; the body is only collected when the answer is yes.
        probe = make_entry(
            response.status,
            response.headers,
            b"",
            self.policy,
            has_auth,
            request_time=st.request_time(),
        )
        if probe is None:
            return
        probe.retain = self.retain
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.config.max_object:
            return
        secondary = secondary_key(ctx.request.host, probe.vary, ctx.request.headers)
        key = full_key(st.primary, secondary)
        body = response.body
        if isinstance(body, bytes):
            if len(body) <= self.config.max_object:
                probe.body = body
                probe.size += len(body)
                await self._store_at(st.primary, key, probe)
            return
        response.body = self._tee(st.primary, key, probe, body)

    async def _tee(
        self, primary: str, key: str, entry: Entry, body: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """Pass the body through while keeping a copy; store it only if it arrived whole and
        within ``max_object`` (past it, the copy is dropped and the stream goes on)."""
        parts: list[bytes] | None = []
        size = 0
        limit = self.config.max_object
        try:
            async for chunk in body:
                if parts is not None:
                    size += len(chunk)
                    if size > limit:
                        parts = None
                    else:
                        parts.append(chunk)
                yield chunk
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        if parts is not None:
            entry.body = b"".join(parts)
            entry.size += size
            await self._store_at(primary, key, entry)

    async def _store(self, st: CacheState, entry: Entry) -> None:
        if st.key is not None:
            await self._store_at(st.primary, st.key, entry)

    async def _store_at(self, primary: str, key: str, entry: Entry) -> None:
        await self._call("set", primary, key, entry)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.shared.tasks.add(task)
        task.add_done_callback(self.shared.tasks.discard)

    async def on_done(self, ctx: RequestContext) -> None:
        fill_key = ctx.state.get("cache_fill_key")
        if fill_key is None:
            return
        st: CacheState = ctx.state["cache"]
        fut = self.shared.fills.pop(fill_key, None)
        if st.fill is not None and not st.fill.done():
            st.fill.set_result(None)
        if fut is not None and fut is not st.fill and not fut.done():
            fut.set_result(None)

    # -- background revalidation (stale-while-revalidate) ----------------------------------

    def _revalidate_later(self, ctx: RequestContext, st: CacheState, entry: Entry) -> None:
        """Serve stale now and refresh in the background: a copy of the request, with the
        entry's validators, goes to the request's upstream through ``context.forward`` (as the
        daemon forwards it, without running the chain again); a 304 freshens the entry, a
        storable reply replaces it, a failure leaves the stale copy in place."""
        key = st.key or st.primary
        shared = self.shared
        if key in shared.revalidating or len(shared.revalidating) >= self.config.max_revalidations:
            return
        req = ctx.request
        headers = CIMultiDict(req.headers)
        for name in (*CONDITIONALS, "Cache-Control", "Content-Length", "Transfer-Encoding"):
            headers.popall(name, None)
        if entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
        copy = Request(
            "GET",  # a HEAD's stale entry came from a GET: refresh it with one
            req.path,
            req.query_string,
            headers,
            req.host,
            req.scheme,
            req.client_ip,
            None,
            None,
        )
        bg = RequestContext(copy, f"{ctx.request_id}-revalidate", ctx.route)
        bg.upstream = ctx.upstream
        if ctx.principal is not None:  # its identity headers are in the copied headers
            bg.authenticate(ctx.principal, forward_headers=False)
        bg.excluded_targets = set(ctx.excluded_targets)  # the breaker's view of this moment
        state = CacheState("validate", st.primary, st.key)
        state.entry = entry
        state.requested_at = time.time()
        shared.revalidating.add(key)
        self._spawn(self._revalidate(key, bg, state))

    async def _revalidate(self, key: str, bg: RequestContext, st: CacheState) -> None:
        shared = self.shared
        response: Response | None = None
        try:
            response = await self.context.forward(bg)
            entry = st.entry
            if response.status == 304 and entry is not None:
                fresh = refresh(entry, response.headers, self.policy, st.request_time())
                await self._store(st, fresh)
            elif response.status < 500:
                body = response.body
                await self._maybe_store(bg, st, response)
                teed = response.body
                if teed is not body and not isinstance(teed, bytes):
                    async for _ in teed:  # teed: reading it to the end stores it
                        pass
            else:
                self.context.logger.info(
                    "background revalidation failed: the stale copy stays",
                    extra={"status": response.status, "key": st.primary},
                )
        except Exception as exc:
            self.context.logger.warning("background revalidation failed", extra={"error": str(exc)})
        finally:
            if response is not None and not isinstance(response.body, bytes):
                aclose = getattr(response.body, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            shared.revalidating.discard(key)


def _failure(ctx: RequestContext, response: Response) -> str | None:
    """How the upstream failed, in ``use_stale`` terms: ``timeout`` or ``error`` (no answer:
    connect, disconnect, no target available: the gateway's own 502/503/504), ``http_5xx``
    (the origin answered 500/502/503/504), or None."""
    if isinstance(ctx.error, UpstreamTimeout):
        return "timeout"
    if isinstance(ctx.error, UpstreamError):
        return "error"
    if response.status in (500, 502, 503, 504):
        return f"http_{response.status}"
    return None


def _counts(services: Any, route: str) -> dict[str, int]:
    """gatewayd_cache_total{route, result}: plain counts, exported when scraped (unexported
    when the plugin runs without metrics)."""
    results = ("HIT", "MISS", "STALE", "BYPASS")
    metrics = getattr(services, "metrics", None)
    if metrics is None:
        return dict.fromkeys(results, 0)
    counts: dict[str, int] = metrics.results(
        "gatewayd_cache_total",
        "Cache lookups, by route and result (HIT, MISS, STALE, BYPASS)",
        route,
        results,
    )
    return counts
