"""The core's side of every upstream, whatever its kind: :class:`ManagedUpstream`.

A kind (``gatewayd.chain.UpstreamKind``: HTTP pools, relay leases, kinds from plugin
distributions) says what its targets are and makes one attempt at one target. Everything else
is done here, once, the same way for every kind:

- balancing over ``kind.targets()`` (round robin, least connections, hashing on the client IP
  or a header), skipping unhealthy and ejected targets and those in ``ctx.excluded_targets``
  (open circuit breakers);
- the ``total`` timeout until the reply's head (the kind times each body read with ``read``),
  with the cancellation of a client that went away kept intact (499, never 504);
- retries on another target with backoff and a budget, passive ejection, active health checks
  (a ``GET`` of the health path through the kind's own ``send``);
- in-flight counts, target metrics and the admin view (:meth:`ManagedUpstream.snapshot`);
- an error a kind sets on an attempt that did answer (``attempt.error`` after the reply's head:
  mid-body, or a reply that was whole all the same, such as ``framing``) is counted in
  ``gatewayd_upstream_errors_total`` when the body ends (errors before the head are counted
  with the error reply).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from multidict import CIMultiDict

from gatewayd.chain.api import Attempt, PluginError, Request, RequestContext, Response, RouteInfo
from gatewayd.chain.upstream import (
    Target,
    UpstreamError,
    UpstreamKind,
    UpstreamTimeout,
    UpstreamUnavailable,
    WebSocketChannel,
)
from gatewayd.config.schema import TimeoutsConfig, UpstreamConfig
from gatewayd.observability.metrics import Metrics
from gatewayd.proxy.balancer import BALANCERS
from gatewayd.proxy.deadlines import Deadlines
from gatewayd.proxy.headers import upstream_response_headers
from gatewayd.proxy.health import HealthChecker
from gatewayd.proxy.retry import RetryBudget, RetryPolicy

log = logging.getLogger("gatewayd.proxy")
PROBE_ROUTE = RouteInfo("_health", None, "")


class UpstreamState:
    """What an upstream keeps across reloads while its config is unchanged (handed over like
    plugin state): the active health checker, ejection timers and the retry budget."""

    def __init__(self, name: str, config: UpstreamConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self.events = getattr(services, "events", None)
        self.metrics = _metrics(services)
        metrics = getattr(services, "metrics", None)
        self.errors = metrics.upstream_errors if isinstance(metrics, Metrics) else None
        retries = config.retries
        self.budget = RetryBudget(retries.budget, retries.min_retries) if retries else None
        self.health = HealthChecker(name, config.health, self.changed) if config.health else None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.targets_seen: set[str] = set()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self.health is not None:
            await self.health.close()

    def seen(self, targets: Sequence[Target]) -> None:
        """Targets get their ``up`` gauge the first time they are seen (relay peers arrive)."""
        if self.metrics is None:
            return
        for t in targets:
            if t.id not in self.targets_seen and len(self.targets_seen) < 10_000:
                self.targets_seen.add(t.id)
                self.metrics[0].labels(self.name, t.id).set(1 if t.available(set()) else 0)

    def changed(self, target: Target, healthy: bool, reason: str) -> None:
        """A target went in or out of the rotation (health check or passive ejection)."""
        usable = target.healthy and not target.ejected
        if usable != healthy:
            return  # still out for the other reason
        event = "target.healthy" if healthy else "target.unhealthy"
        log.warning(event, extra={"upstream": self.name, "target": target.id, "reason": reason})
        if self.metrics is not None:
            self.metrics[0].labels(self.name, target.id).set(1 if healthy else 0)
        if self.events is not None:
            try:
                self.events.publish(
                    event, {"upstream": self.name, "target": target.id, "reason": reason}
                )
            except Exception:
                log.exception("publishing a target event failed")

    def account(
        self, targets: Callable[[], Sequence[Target]], target: Target, failed: bool
    ) -> None:
        """Passive ejection: consecutive failures take a target out for ``eject_for``."""
        passive = self.config.passive
        if not failed:
            target.failures = 0
            return
        target.failures += 1
        if passive is None or target.ejected or target.failures < passive.failures:
            return
        if not any(t is not target and t.healthy and not t.ejected for t in targets()):
            return  # never eject the last target in the rotation
        target.ejected = True
        target.failures = 0
        self.changed(target, False, f"ejected after {passive.failures} consecutive failures")
        loop = asyncio.get_running_loop()
        self._timers[target.id] = loop.call_later(passive.eject_for, self._restore, target)

    def _restore(self, target: Target) -> None:
        self._timers.pop(target.id, None)
        target.ejected = False
        self.changed(target, True, "ejection ended")

    def failed_after_head(self, error: str) -> None:
        """An attempt that answered, and failed (or broke the framing) after its head."""
        if self.errors is not None:
            self.errors.labels(self.name, error).inc()

    def retried(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics[1].labels(self.name, outcome).inc()


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


class Upgraded:
    """A WebSocket opened to a target: the channel, and ``release()`` once it has closed."""

    __slots__ = ("attempt", "channel", "started", "target")

    def __init__(
        self, channel: WebSocketChannel, target: Target, attempt: Attempt, started: float
    ) -> None:
        self.channel = channel
        self.target = target
        self.attempt = attempt
        self.started = started

    def release(self) -> None:
        self.target.inflight -= 1
        self.attempt.duration = time.monotonic() - self.started


class ManagedUpstream:
    """One configured upstream as the dispatcher sees it (see the module's text)."""

    def __init__(
        self,
        name: str,
        impl: UpstreamKind,
        config: UpstreamConfig,
        state: UpstreamState,
        owns_state: bool = False,
    ) -> None:
        self.name = name
        self.impl = impl
        self.kind = impl.kind
        self.config = config
        self.state = state
        self.owns_state = owns_state
        self.balancer = BALANCERS[config.balance]()
        self.hash_header = config.hash_on[7:] if config.hash_on.startswith("header:") else None
        budget = state.budget
        self.retry = (
            RetryPolicy(config.retries, budget)
            if config.retries is not None and config.retries.attempts > 0 and budget is not None
            else None
        )
        passive = config.passive
        self.passive_statuses = frozenset(passive.statuses) if passive else frozenset()
        self.deadlines = Deadlines(asyncio.get_running_loop())  # made inside the running loop

    def targets(self) -> Sequence[Target]:
        return self.impl.targets()

    async def start(self) -> None:
        await self.impl.start()
        self.state.seen(self.impl.targets())
        if self.state.health is not None:
            self.state.health.start(self.impl.targets, self.probe)

    async def close(self) -> None:
        await self.impl.close()
        if self.owns_state:
            await self.state.close()

    # -- choosing a target ---------------------------------------------------------------

    def hash_key(self, ctx: RequestContext) -> str | None:
        if self.config.balance != "hash":
            return None
        if self.hash_header:
            return ctx.request.headers.get(self.hash_header, "")
        return ctx.request.client_ip

    def pick(self, ctx: RequestContext, tried: set[str] | None = None) -> Target:
        """A target not excluded (breakers) and, if there is one, not tried yet by this request."""
        targets = self.impl.targets()
        key = self.hash_key(ctx)
        if tried:
            target = self.balancer.pick(targets, ctx.excluded_targets | tried, key)
            if target is not None:
                return target
        target = self.balancer.pick(targets, ctx.excluded_targets, key)
        if target is None:
            if not targets:
                raise UpstreamUnavailable(f"upstream '{self.name}' has no targets")
            raise UpstreamUnavailable(f"no healthy target in upstream '{self.name}'")
        return target

    # -- requests ------------------------------------------------------------------------

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
            target = self.pick(ctx, tried)
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
            tried.add(target.id)
            await asyncio.sleep(policy.backoff(tries - 1))

    def _retry(
        self, policy: RetryPolicy, req: Request, tries: int, error: str | None, status: int | None
    ) -> bool:
        if not policy.retryable(req, tries, error, status):
            return False
        if not policy.budget.try_spend():
            self.state.retried("budget_exhausted")
            return False
        self.state.retried("retried")
        return True

    async def send_to(
        self,
        target: Target,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        """One attempt: the kind's reply, within ``total`` until its head (``read`` when there is
        no request body to upload first)."""
        deadlines = self.deadlines
        if target.id not in self.state.targets_seen:
            self.state.seen((target,))  # a target that came later (a relay peer)
        attempt = Attempt(target.id)
        ctx.attempts.append(attempt)
        ctx.target = target.id
        started = time.monotonic()
        target.inflight += 1
        body = ctx.request.body
        wait = timeouts.total if body is not None else min(timeouts.total, timeouts.read)
        deadline = deadlines.start(wait)
        try:
            reply = await self.impl.send(target, attempt, ctx, path, headers, timeouts)
            deadline.cancel()
        except BaseException as exc:
            deadline.cancel()
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
            if deadline.timed_out(exc):  # ours alone; a client's cancellation goes on as it is
                attempt.error = "timeout"
                exc = UpstreamTimeout(f"upstream '{self.name}' timed out")
            elif not isinstance(exc, UpstreamError):
                if not isinstance(exc, Exception) or isinstance(exc, PluginError):
                    raise  # the client went away, or its body broke a plugin's limit (413)
                log.error(
                    "upstream kind failed",
                    exc_info=exc,
                    extra={"upstream": self.name, "kind": self.kind, "request_id": ctx.request_id},
                )
                attempt.error = attempt.error or "disconnect"
                exc = UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
            if attempt.error is not None:
                self.state.account(self.impl.targets, target, True)
            raise exc from None
        attempt.status = reply.status
        self.state.account(self.impl.targets, target, reply.status in self.passive_statuses)
        upstream_response_headers(reply.headers)  # once, here, for every kind
        body = reply.body
        if isinstance(body, bytes | bytearray):
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
            if attempt.error is not None:  # whole all the same (bytes past its end)
                self.state.failed_after_head(attempt.error)
        else:
            reply.body = TrackedBody(body, target, attempt, started, self.state)
        return reply

    async def upgrade(
        self,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
        protocols: Sequence[str],
        max_message: int,
    ) -> Upgraded:
        """A WebSocket to a target (chosen as for a request), the handshake within ``total``.
        The caller calls ``release()`` on the result when the WebSocket has closed."""
        target = self.pick(ctx)
        attempt = Attempt(target.id)
        ctx.attempts.append(attempt)
        ctx.target = target.id
        started = time.monotonic()
        target.inflight += 1
        try:
            async with asyncio.timeout(timeouts.total):
                channel = await self.impl.upgrade(
                    target, attempt, ctx, path, headers, timeouts, protocols, max_message
                )
        except BaseException as exc:
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
            if isinstance(exc, TimeoutError) and not isinstance(exc, UpstreamError):
                attempt.error = "timeout"
                exc = UpstreamTimeout(
                    f"upstream '{self.name}' did not complete the WebSocket handshake"
                )
            elif not isinstance(exc, UpstreamError):
                if not isinstance(exc, Exception):
                    raise
                log.error("upstream kind failed", exc_info=exc, extra={"upstream": self.name})
                attempt.error = "disconnect"
                exc = UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
            if attempt.error in ("connect", "timeout", "disconnect"):
                self.state.account(self.impl.targets, target, True)
            raise exc from None
        attempt.status = 101
        self.state.account(self.impl.targets, target, False)
        return Upgraded(channel, target, attempt, started)

    async def probe(self, target: Target) -> tuple[int | None, str | None]:
        """One active health check of ``target``: ``GET <health.path>`` through the kind."""
        health = self.config.health
        assert health is not None
        request = Request("GET", health.path, "", CIMultiDict(), "", "http", "", None, None)
        ctx = RequestContext(request, "health-check", PROBE_ROUTE)
        attempt = Attempt(target.id)
        timeouts = TimeoutsConfig(connect=health.timeout, read=health.timeout, total=health.timeout)
        try:
            reply = await self.impl.send(target, attempt, ctx, health.path, CIMultiDict(), timeouts)
        except UpstreamError as exc:
            return None, attempt.error or exc.code
        await _discard(reply.body, read=True)
        return reply.status, None

    # -- the admin view ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        cfg = self.config
        targets = []
        health = self.state.health
        for t in self.impl.targets():
            item: dict[str, Any] = {
                "id": t.id,
                "url": t.id,
                "healthy": t.healthy,
                "ejected": t.ejected,
                "available": t.healthy and not t.ejected,
                "inflight": t.inflight,
                "consecutive_failures": t.failures,
            }
            if t.info:
                item["info"] = dict(t.info)
            if health is not None:
                item["health_check"] = health.snapshot(t.id)
            targets.append(item)
        return {
            "name": self.name,
            "kind": self.kind,
            "balance": cfg.balance,
            "health_checks": cfg.health is not None,
            "retries": cfg.retries.attempts if cfg.retries else 0,
            "passive_ejection": cfg.passive is not None,
            "targets": targets,
        }


class TrackedBody:
    """A kind's streamed body, with the target's in-flight count and the attempt's duration
    settled when it ends (read to the end, failed or closed), and an error the kind set on the
    attempt meanwhile counted."""

    __slots__ = ("attempt", "body", "done", "started", "state", "target")

    def __init__(
        self,
        body: AsyncIterator[bytes],
        target: Target,
        attempt: Attempt,
        started: float,
        state: UpstreamState,
    ) -> None:
        self.body = body
        self.target = target
        self.attempt = attempt
        self.started = started
        self.state = state
        self.done = False

    def __aiter__(self) -> TrackedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.body.__anext__()
        except BaseException:
            self._settle()
            raise

    def _settle(self) -> None:
        if not self.done:
            self.done = True
            self.target.inflight -= 1
            attempt = self.attempt
            attempt.duration = time.monotonic() - self.started
            if attempt.error is not None:
                self.state.failed_after_head(attempt.error)

    async def aclose(self) -> None:
        self._settle()
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()


async def _discard(body: Any, read: bool = False) -> None:
    if read and not isinstance(body, bytes | bytearray):
        async for _ in body:
            pass
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
