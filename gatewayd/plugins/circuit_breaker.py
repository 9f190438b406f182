"""``circuit_breaker``: one breaker per upstream target.

Design: the breaker never answers by itself. In ``on_request`` it adds the targets whose breaker
is open (or half-open with its probe slots taken) to ``ctx.excluded_targets``; the balancer picks
among the rest and, when none is left, the forwarder answers 503 at once without touching any
target (this plugin then sets ``Retry-After`` to when the first breaker half-opens). Because the
request still flows down the chain, a ``cache`` plugin can serve a stale copy instead of the 503.
In ``on_done`` every attempt of the request (retries included) is counted against its target.

Breakers are keyed by (upstream, target id): ``ctx.upstream`` (the route's upstream, the one an
earlier plugin chose with ``ctx.use_upstream``, or ``relay:<lease>`` on relay routes) and the
target's stable id (an HTTP target's URL, a relay peer's ``<key id>/<peer name>``, a plugin
kind's own ids), so the state survives peers' reconnects and reloads with the same config.

Admin: ``GET /_admin/plugins/circuit_breaker/breakers[?upstream=&state=]`` lists the breakers
of every route; ``describe_target`` shows a target's breaker in ``GET /_admin/upstreams``.

States: closed -> open (failure ratio over a rolling window with a minimum request count, or N
consecutive failures) -> half-open after ``open_for`` (``half_open_probes`` trial requests at a
time) -> closed after ``half_open_probes`` successes, or open again on a failure.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from gatewayd.chain import (
    AdminRequest,
    AdminRoute,
    Duration,
    Plugin,
    PluginConfig,
    PluginContext,
    PluginError,
    Ratio,
    RequestContext,
    Response,
)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
EVENTS = {CLOSED: "breaker.closed", HALF_OPEN: "breaker.half_opened", OPEN: "breaker.opened"}


class CircuitBreakerConfig(PluginConfig):
    failure_ratio: Ratio = 0.5
    min_requests: int = Field(20, ge=1)
    window: Duration = 30.0
    consecutive_failures: int | None = Field(None, ge=1)
    open_for: Duration = 15.0
    half_open_probes: int = Field(1, ge=1)
    failure_statuses: list[int] = [500, 502, 503, 504]
    failure_errors: list[Literal["connect", "timeout", "disconnect"]] = [
        "connect",
        "timeout",
        "disconnect",
    ]


class Breaker:
    """The state of one target's breaker, with a rolling window of one-second buckets."""

    __slots__ = (
        "buckets",
        "config",
        "consecutive",
        "opened_at",
        "probe_successes",
        "probes",
        "state",
        "target",
        "upstream",
    )

    def __init__(self, upstream: str, target: str, config: CircuitBreakerConfig) -> None:
        self.upstream = upstream
        self.target = target
        self.config = config
        self.state = CLOSED
        self.opened_at = 0.0
        self.consecutive = 0
        self.probes = 0  # half-open trial requests in flight
        self.probe_successes = 0
        self.buckets: deque[list[int]] = deque()  # [second, total, failures]

    def retry_after(self, now: float) -> float:
        return max(0.0, self.opened_at + self.config.open_for - now)

    def _window(self, now: float) -> tuple[int, int]:
        sec = int(now)
        horizon = sec - max(1, int(self.config.window))
        while self.buckets and self.buckets[0][0] <= horizon:
            self.buckets.popleft()
        total = sum(b[1] for b in self.buckets)
        failures = sum(b[2] for b in self.buckets)
        return total, failures

    def record(self, failed: bool, now: float) -> str | None:
        """Count one attempt; returns the new state when it changed."""
        if self.state == HALF_OPEN:
            if failed:
                return self._open(now)
            self.probe_successes += 1
            if self.probe_successes >= self.config.half_open_probes:
                self.state = CLOSED
                self.buckets.clear()
                self.consecutive = 0
                return CLOSED
            return None
        if self.state == OPEN:  # a request that started before the breaker opened
            return None
        sec = int(now)
        if not self.buckets or self.buckets[-1][0] != sec:
            self.buckets.append([sec, 0, 0])
        bucket = self.buckets[-1]
        bucket[1] += 1
        if not failed:
            self.consecutive = 0
            return None
        bucket[2] += 1
        self.consecutive += 1
        cfg = self.config
        if cfg.consecutive_failures is not None and self.consecutive >= cfg.consecutive_failures:
            return self._open(now)
        total, failures = self._window(now)
        if total >= cfg.min_requests and failures / total >= cfg.failure_ratio:
            return self._open(now)
        return None

    def _open(self, now: float) -> str:
        self.state = OPEN
        self.opened_at = now
        self.probes = 0
        self.probe_successes = 0
        self.consecutive = 0
        self.buckets.clear()
        return OPEN

    def admit(self, now: float) -> tuple[bool, str | None]:
        """May a request go to this target? Also returns a state change (open -> half-open)."""
        changed = None
        if self.state == OPEN:
            if now - self.opened_at < self.config.open_for:
                return False, None
            self.state = HALF_OPEN
            self.probes = 0
            self.probe_successes = 0
            changed = HALF_OPEN
        if self.state == HALF_OPEN:
            if self.probes >= self.config.half_open_probes:
                return False, changed
            self.probes += 1
            return True, changed
        return True, changed

    def snapshot(self, now: float) -> dict[str, Any]:
        total, failures = self._window(now)
        out: dict[str, Any] = {
            "upstream": self.upstream,
            "target": self.target,
            "state": self.state,
            "window_requests": total,
            "window_failures": failures,
            "consecutive_failures": self.consecutive,
        }
        if self.state == OPEN:
            out["retry_after"] = round(self.retry_after(now), 3)
        return out


class BreakerBoard:
    """All breakers of one plugin instance, by (upstream, target). Kept across reloads."""

    def __init__(self) -> None:
        self.breakers: dict[tuple[str, str], Breaker] = {}


class CircuitBreakerPlugin(Plugin):
    name = "circuit_breaker"
    Config = CircuitBreakerConfig
    priority = 200  # after rate limiting; before cache (100) so a cache may serve stale

    def __init__(self, config: CircuitBreakerConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.board = context.keep("breakers", BreakerBoard)
        services = context.services
        self.events = services.events
        self.metrics = _metrics(services)
        self.failure_statuses = frozenset(config.failure_statuses)
        self.failure_errors = frozenset(config.failure_errors)

    @classmethod
    def admin_routes(cls) -> list[AdminRoute]:
        return [
            AdminRoute(
                "GET",
                "/breakers",
                list_breakers,
                summary="breaker state per route, upstream and target (?upstream=, ?state=)",
            )
        ]

    def breakers(self) -> list[Breaker]:
        return list(self.board.breakers.values())

    def describe_target(self, upstream: str, target_id: str) -> dict[str, Any] | None:
        """This route's breaker for the target, for ``GET /_admin/upstreams`` (``None`` when
        no request of this route reached the target yet). ``available: false`` while the
        breaker keeps requests away from the target."""
        b = self.board.breakers.get((upstream, target_id))
        if b is None:
            return None
        snap = b.snapshot(time.monotonic())
        del snap["upstream"], snap["target"]
        snap["route"] = self.context.route
        snap["available"] = b.state != OPEN
        return snap

    def _breaker(self, upstream: str, target: str) -> Breaker:
        b = self.board.breakers.get((upstream, target))
        if b is None:
            b = self.board.breakers[(upstream, target)] = Breaker(upstream, target, self.config)
            if self.metrics is not None:
                self.metrics[0].labels(upstream, target).set(0)
        return b

    def on_request(self, ctx: RequestContext) -> Response | None:
        upstream = ctx.upstream
        if upstream is None or not self.board.breakers:
            return None
        now = time.monotonic()
        probes: list[Breaker] = []
        for (up, _), b in self.board.breakers.items():
            if up != upstream or b.state == CLOSED:
                continue
            ok, changed = b.admit(now)
            if changed:
                self._transition(b, changed)
            if not ok:
                ctx.excluded_targets.add(b.target)
            elif b.state == HALF_OPEN:
                probes.append(b)
        if probes:
            ctx.state["breaker_probes"] = probes
        return None

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        if response.status != 503 or getattr(ctx.error, "code", None) != "upstream_unavailable":
            return
        upstream = ctx.upstream
        now = time.monotonic()
        waits = [
            b.retry_after(now)
            for (up, _), b in self.board.breakers.items()
            if up == upstream and b.state == OPEN
        ]
        if waits:
            response.headers["Retry-After"] = str(max(1, math.ceil(min(waits))))

    def on_done(self, ctx: RequestContext) -> None:
        upstream = ctx.upstream
        probes: list[Breaker] = ctx.state.get("breaker_probes", [])
        for b in probes:  # slots reserved in on_request; the request may have gone elsewhere
            b.probes = max(0, b.probes - 1)
        if upstream is None or not ctx.attempts:
            return
        now = time.monotonic()
        for attempt in ctx.attempts:
            failed = (attempt.error is not None and attempt.error in self.failure_errors) or (
                attempt.status is not None and attempt.status in self.failure_statuses
            )
            b = self._breaker(upstream, attempt.target)
            changed = b.record(failed, now)
            if changed:
                self._transition(b, changed)

    def _transition(self, b: Breaker, state: str) -> None:
        log = self.context.logger
        log.warning("circuit breaker %s", state, extra={"upstream": b.upstream, "target": b.target})
        if self.metrics is not None:
            gauge, counter = self.metrics
            gauge.labels(b.upstream, b.target).set(STATE_VALUE[state])
            counter.labels(b.upstream, b.target, state).inc()
        if self.events is not None:
            payload = {"upstream": b.upstream, "target": b.target, "route": self.context.route}
            if state == OPEN:
                payload["open_for"] = self.config.open_for
            try:
                self.events.publish(EVENTS[state], payload)
            except Exception:
                log.exception("publishing a breaker event failed")


async def list_breakers(request: AdminRequest, instances: Sequence[Any]) -> Response:
    """``GET /_admin/plugins/circuit_breaker/breakers``: every route's breakers."""
    upstream, state = request.query.get("upstream"), request.query.get("state")
    if state is not None and state not in (CLOSED, HALF_OPEN, OPEN):
        raise PluginError(400, "bad_request", "state is one of closed, half_open, open")
    now = time.monotonic()
    out = []
    for plugin in instances:
        for b in plugin.breakers():
            if (upstream is None or b.upstream == upstream) and (state is None or b.state == state):
                out.append({"route": plugin.context.route, **b.snapshot(now)})
    out.sort(key=lambda s: (s["upstream"], s["target"], s["route"] or ""))
    return Response.json({"breakers": out})


def _metrics(services: Any) -> tuple[Any, Any] | None:
    metrics = getattr(services, "metrics", None)
    if metrics is None:
        return None
    return (
        metrics.gauge(
            "gatewayd_breaker_state",
            "Circuit breaker state per upstream target (0 closed, 1 half-open, 2 open)",
            ["upstream", "target"],
        ),
        metrics.counter(
            "gatewayd_breaker_transitions_total",
            "Circuit breaker transitions, by upstream, target and new state",
            ["upstream", "target", "state"],
        ),
    )
