"""An upstream: its targets, its balancer and one pooled aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatewayd.chain.api import Attempt, RequestContext, Response
from gatewayd.config.schema import TimeoutsConfig, UpstreamConfig
from gatewayd.proxy.balancer import BALANCERS, Target
from gatewayd.proxy.client import Fetcher, ProxyClientRequest
from gatewayd.proxy.deadlines import Deadlines
from gatewayd.proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatewayd.proxy.headers import response_headers
from gatewayd.proxy.health import HealthChecker
from gatewayd.proxy.retry import RetryBudget, RetryPolicy

# Responses up to this size with a Content-Length are read in one go (bounded) and written with
# one call; anything larger or of unknown length streams chunk by chunk.
SMALL_BODY = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})
log = logging.getLogger("gatewayd.proxy")


class Upstream(Protocol):
    """What the forwarder needs from an upstream (HTTP targets here; the relay has its own)."""

    name: str

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], timeouts: TimeoutsConfig
    ) -> Response: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class UpstreamState:
    """What an upstream keeps across reloads while its config is unchanged (handed over like
    plugin state): its targets (health, ejection, in-flight counts), the active health checker
    and the retry budget."""

    def __init__(self, name: str, config: UpstreamConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self.targets = [Target(url) for url in config.targets]
        self.events = getattr(services, "events", None)
        self.metrics = _metrics(services)
        retries = config.retries
        self.budget = RetryBudget(retries.budget, retries.min_retries) if retries else None
        self.health = (
            HealthChecker(name, self.targets, config.health, self.changed)
            if config.health
            else None
        )
        self._timers: dict[str, asyncio.TimerHandle] = {}
        if self.metrics is not None:
            for t in self.targets:
                self.metrics[0].labels(name, t.url).set(1)

    def start(self) -> None:
        if self.health is not None:
            self.health.start()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self.health is not None:
            await self.health.close()

    def available(self, target: Target) -> bool:
        return target.healthy and not target.ejected

    def changed(self, target: Target, healthy: bool, reason: str) -> None:
        """A target went in or out of the rotation (health check or passive ejection)."""
        usable = target.healthy and not target.ejected
        if usable != healthy:
            return  # still out for the other reason
        event = "target.healthy" if healthy else "target.unhealthy"
        log.warning(event, extra={"upstream": self.name, "target": target.url, "reason": reason})
        if self.metrics is not None:
            self.metrics[0].labels(self.name, target.url).set(1 if healthy else 0)
        if self.events is not None:
            try:
                self.events.publish(
                    event, {"upstream": self.name, "target": target.url, "reason": reason}
                )
            except Exception:
                log.exception("publishing a target event failed")

    def account(self, target: Target, failed: bool) -> None:
        """Passive ejection: consecutive failures take a target out for ``eject_for``."""
        passive = self.config.passive
        if not failed:
            target.failures = 0
            return
        target.failures += 1
        if passive is None or target.ejected or target.failures < passive.failures:
            return
        if not any(t is not target and t.healthy and not t.ejected for t in self.targets):
            return  # never eject the last target in the rotation
        target.ejected = True
        target.failures = 0
        self.changed(target, False, f"ejected after {passive.failures} consecutive failures")
        loop = asyncio.get_running_loop()
        self._timers[target.url] = loop.call_later(passive.eject_for, self._restore, target)

    def _restore(self, target: Target) -> None:
        self._timers.pop(target.url, None)
        target.ejected = False
        self.changed(target, True, "ejection ended")

    def retried(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics[1].labels(self.name, outcome).inc()

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for t in self.targets:
            item: dict[str, Any] = {
                "url": t.url,
                "healthy": t.healthy,
                "ejected": t.ejected,
                "available": t.healthy and not t.ejected,
                "inflight": t.inflight,
                "consecutive_failures": t.failures,
            }
            if self.health is not None:
                item["health_check"] = self.health.snapshot(t.url)
            out.append(item)
        return out


def _metrics(services: Any) -> tuple[Any, Any] | None:
    metrics = getattr(services, "metrics", None)
    if metrics is None:
        return None
    return (
        metrics.gauge(
            "gatewayd_upstream_target_up",
            "Whether a target is in the rotation (1) or out: unhealthy or ejected (0)",
            ["upstream", "target"],
        ),
        metrics.counter(
            "gatewayd_upstream_retries_total",
            "Retries, by upstream and outcome (retried, budget_exhausted)",
            ["upstream", "outcome"],
        ),
    )


class HttpUpstream:
    def __init__(
        self, name: str, config: UpstreamConfig, state: UpstreamState | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.owns_state = state is None
        self.state = state if state is not None else UpstreamState(name, config)
        self.targets = self.state.targets
        self.balancer = BALANCERS[config.balance](self.targets)
        self.hash_header = config.hash_on[7:] if config.hash_on.startswith("header:") else None
        self.session: aiohttp.ClientSession | None = None
        self.fetcher: Fetcher | None = None
        self.deadlines: Deadlines | None = None
        self._client_timeouts: dict[int, aiohttp.ClientTimeout] = {}
        budget = self.state.budget
        self.retry = (
            RetryPolicy(config.retries, budget)
            if config.retries is not None and config.retries.attempts > 0 and budget is not None
            else None
        )
        passive = config.passive
        self.passive_statuses = frozenset(passive.statuses) if passive else frozenset()

    async def start(self) -> None:
        pool = self.config.pool
        connector = aiohttp.TCPConnector(
            limit=pool.max_connections,
            limit_per_host=0,
            keepalive_timeout=pool.keepalive,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            request_class=ProxyClientRequest,
            timeout=aiohttp.ClientTimeout(total=None),
            requote_redirect_url=False,
        )
        self.fetcher = Fetcher(self.session, pool.read_buffer)
        self.deadlines = Deadlines(asyncio.get_running_loop())
        self.state.start()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.owns_state:
            await self.state.close()

    def hash_key(self, ctx: RequestContext) -> str | None:
        if self.config.balance != "hash":
            return None
        if self.hash_header:
            return ctx.request.headers.get(self.hash_header, "")
        return ctx.request.client_ip

    def pick(self, ctx: RequestContext) -> Target:
        target = self.balancer.pick(ctx.excluded_targets, self.hash_key(ctx))
        if target is None:
            raise UpstreamUnavailable(f"no healthy target in upstream '{self.name}'")
        return target

    def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], timeouts: TimeoutsConfig
    ) -> Awaitable[Response]:
        """The reply of one target, or of several with retries. A plain function handing back
        the coroutine that does the work: no extra ``await`` layer on the hot path."""
        policy = self.retry
        if policy is None:
            return self.send_to(self.pick(ctx), ctx, path, headers, timeouts)
        return self.send_with_retries(policy, ctx, path, headers, timeouts)

    async def send_with_retries(
        self,
        policy: RetryPolicy,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        """Try, and on a retryable failure try another target after a backoff, while attempts
        and the budget last. A reply is only returned once: nothing has reached the client yet,
        so a retry never follows response bytes."""
        req = ctx.request
        policy.budget.request()
        body = req.body
        if body is not None and not isinstance(body, bytes) and policy.replayable(req):
            limit = policy.config.max_body
            if req.content_length is not None and req.content_length <= limit:
                await ctx.read_body(limit)  # held in memory so it can be sent again
        tried: set[str] = set()
        tries = 0
        while True:
            target = self.pick_other(ctx, tried)
            tries += 1
            try:
                reply = await self.send_to(target, ctx, path, headers, timeouts)
            except UpstreamError:
                error = ctx.attempts[-1].error if ctx.attempts else None
                if error is None or not self._retry(policy, req, tries, error, None):
                    raise
            else:
                if not self._retry(policy, req, tries, None, reply.status):
                    return reply
                await _discard(reply.body)
            tried.add(target.url)
            await asyncio.sleep(policy.backoff(tries - 1))

    def _retry(
        self, policy: RetryPolicy, req: Any, tries: int, error: str | None, status: int | None
    ) -> bool:
        if not policy.retryable(req, tries, error, status):
            return False
        if not policy.budget.try_spend():
            self.state.retried("budget_exhausted")
            return False
        self.state.retried("retried")
        return True

    def pick_other(self, ctx: RequestContext, tried: set[str]) -> Target:
        """A target not tried yet by this request if there is one, else any available one."""
        if tried:
            target = self.balancer.pick(ctx.excluded_targets | tried, self.hash_key(ctx))
            if target is not None:
                return target
        return self.pick(ctx)

    async def send_to(
        self,
        target: Target,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        fetcher = self.fetcher
        deadlines = self.deadlines
        assert fetcher is not None and deadlines is not None, "upstream not started"
        req = ctx.request
        qs = req.query_string
        url = URL(f"{target.url}{path}?{qs}" if qs else f"{target.url}{path}", encoded=True)
        attempt = Attempt(target.url)
        ctx.attempts.append(attempt)
        ctx.target = target.url
        started = time.monotonic()
        target.inflight += 1
        resp: aiohttp.ClientResponse | None = None
        client_timeout = self._client_timeouts.get(id(timeouts))
        if client_timeout is None:
            client_timeout = self._client_timeouts[id(timeouts)] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect
            )
        # One deadline until the headers (and a small body) are in: ``total``, or ``read`` when
        # there is no request body to upload first (see gatewayd.proxy.deadlines: a fraction of
        # asyncio.timeout()'s and aiohttp's per-read timer's cost); streamed bodies time each read.
        wait = timeouts.total if req.body is not None else min(timeouts.total, timeouts.read)
        deadline = deadlines.start(wait)
        try:
            resp = await fetcher.fetch(req.method, url, headers, req.body, client_timeout)
            length = resp.content_length
            small = (
                req.method == "HEAD"
                or resp.status in NO_BODY_STATUS
                or (length is not None and length <= SMALL_BODY)
            )
            if small:
                body: bytes | AsyncIterator[bytes] = await resp.read()
                resp.release()
            deadline.cancel()
        except BaseException as exc:
            deadline.cancel()
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
            if resp is not None:
                resp.close()
            if deadline.expired and isinstance(exc, asyncio.CancelledError):
                deadline.uncancel()
                exc = TimeoutError()
            mapped = self._map_error(exc, attempt)
            if mapped is exc:
                raise
            self.state.account(target, True)  # passive health: a failed attempt
            raise mapped from exc
        attempt.status = resp.status
        self.state.account(target, resp.status in self.passive_statuses)
        if small:
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
        else:
            body = _stream(resp, target, attempt, started, deadlines, timeouts.read)
        return Response(resp.status, response_headers(resp.headers), body, resp.reason)

    def _map_error(self, exc: BaseException, attempt: Attempt) -> BaseException:
        if isinstance(exc, aiohttp.ClientConnectorError):
            attempt.error = "connect"
            return UpstreamConnectError(f"cannot connect to upstream '{self.name}'")
        if isinstance(exc, TimeoutError):  # asyncio.timeout, ServerTimeoutError, connect timeout
            attempt.error = "timeout"
            return UpstreamTimeout(f"upstream '{self.name}' timed out")
        if isinstance(exc, aiohttp.ClientError):
            attempt.error = "disconnect"
            return UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
        return exc


async def _discard(body: Any) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


async def _stream(
    resp: aiohttp.ClientResponse,
    target: Target,
    attempt: Attempt,
    started: float,
    deadlines: Deadlines,
    read: float,
) -> AsyncIterator[bytes]:
    """The response body, chunk by chunk as it arrives; the connection is released (or closed,
    if the body was not read to the end) whatever happens. Each read may wait at most ``read``
    seconds (the time spent writing to a slow client does not count)."""
    content = resp.content
    try:
        while True:
            deadline = deadlines.start(read)
            try:
                chunk = await content.readany()
            except asyncio.CancelledError:
                if not deadline.expired:
                    raise
                deadline.uncancel()
                attempt.error = "timeout"
                raise UpstreamTimeout("upstream read timed out mid-response") from None
            finally:
                deadline.cancel()
            if not chunk:
                return
            yield chunk
    except aiohttp.ClientError as exc:
        attempt.error = "disconnect"
        raise UpstreamError(502, "upstream_error", "upstream failed mid-response") from exc
    finally:
        target.inflight -= 1
        attempt.duration = time.monotonic() - started
        if content.at_eof():
            resp.release()
        else:
            resp.close()


def build_upstream(
    name: str, config: UpstreamConfig, relay: Any = None, handover: Any = None, services: Any = None
) -> Any:
    """An HTTP upstream, or a relay upstream when the config names a lease. With a handover,
    the upstream's state (health, ejections, retry budget) survives reloads that leave its
    config unchanged."""
    if getattr(config, "relay", None):
        if relay is None:
            raise RuntimeError("relay upstreams need the relay registry")
        return relay.upstream(name, config)
    if handover is None:
        return HttpUpstream(name, config)
    key = f"upstream:{name}/{config.model_dump_json()}#state"
    state = handover.keep(key, lambda: UpstreamState(name, config, services))
    return HttpUpstream(name, config, state)
