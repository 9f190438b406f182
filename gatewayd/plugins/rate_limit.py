"""``rate_limit``: GCRA token buckets (``rate`` + ``burst``) and window quotas (``quota``).

Several limits per plugin (``limits: [...]``) and several plugins per chain are allowed; a request
passes only if every limit admits it, and the response carries the IETF ``RateLimit-*`` headers of
the most restrictive one. Buckets live in this process (bounded by ``max_entries``, kept across
reloads while the config is unchanged) or in Redis (shared by every gatewayd on it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableMapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gatewayd.chain import Plugin, PluginConfig, PluginContext, Rate, RequestContext, Response

KEY_KINDS = ("global", "ip", "api_key", "tenant", "route")
MAX_KEY_CHARS = 128  # longer key values are hashed, so a hostile header cannot grow memory


class LimitSpec(PluginConfig):
    rate: Rate | None = None  # token bucket: sustained rate ...
    burst: int | None = Field(None, ge=1)  # ... and how many at once (default: the rate's count)
    quota: Rate | None = None  # fixed window: e.g. 1000/day (windows aligned to the epoch)
    key: str = "ip"

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        check_key(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> LimitSpec:
        if self.rate is not None and self.quota is not None:
            raise ValueError("a limit has either 'rate' (with 'burst') or 'quota', not both")
        if self.burst is not None and self.rate is None:
            raise ValueError("'burst' goes with 'rate'")
        return self


def check_key(key: str) -> None:
    if key in KEY_KINDS:
        return
    kind, _, name = key.partition(":")
    if kind in ("header", "claim") and name:
        return
    raise ValueError(
        f"invalid key {key!r} (expected one of {', '.join(KEY_KINDS)}, header:<name>, claim:<name>)"
    )


class RateLimitConfig(LimitSpec):
    limits: list[LimitSpec] = []
    store: Literal["default", "memory", "redis"] = "default"  # default: state.backend
    on_store_error: Literal["allow", "deny"] = "allow"
    on_missing_key: Literal["ip", "deny"] = "ip"  # no principal / header / claim to key by
    max_entries: int = Field(100_000, ge=1)  # memory store: keys kept per plugin
    event_sample: int = Field(100, ge=1)  # publish one ratelimit.exceeded event in N

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitConfig:
        if self.rate is None and self.quota is None and not self.limits:
            raise ValueError("set 'rate' (and 'burst'), 'quota', or 'limits'")
        return self


class Limit:
    """One compiled limit: how to key a request, and the algorithm's parameters."""

    __slots__ = ("burst", "index", "interval", "key", "kind", "name", "period", "policy", "quota")

    def __init__(self, index: int, spec: LimitSpec) -> None:
        self.index = index
        self.key = spec.key
        self.kind, _, self.name = spec.key.partition(":")
        self.quota = 0
        self.interval = 0.0
        self.burst = 0
        self.period = 0.0
        if spec.quota is not None:
            self.quota = max(1, int(spec.quota.count))
            self.period = spec.quota.period
            self.policy = f"{self.quota};w={_num(self.period)}"
        else:
            assert spec.rate is not None
            self.interval = spec.rate.period / spec.rate.count
            self.burst = spec.burst or max(1, int(spec.rate.count))
            self.policy = f"{self.burst};w={_num(self.burst * self.interval)}"

    def value(self, ctx: RequestContext) -> str | None:
        kind = self.kind
        if kind == "ip":
            return ctx.request.client_ip
        if kind == "global":
            return ""
        if kind == "route":
            return ctx.route.name
        p = ctx.principal
        if kind == "api_key":
            v = None if p is None else (p.key_id or (p.subject if p.kind == "key" else None))
        elif kind == "tenant":
            v = None if p is None else p.tenant
        elif kind == "header":
            v = ctx.request.headers.get(self.name)
        else:  # claim
            c = None if p is None else p.claims.get(self.name)
            v = None if c is None else str(c)
        return v


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class RateLimitPlugin(Plugin):
    name = "rate_limit"
    Config = RateLimitConfig
    priority = 910  # after authentication (key_auth 1250, jwt_auth 1200) and acl (950)

    def __init__(self, config: RateLimitConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        specs = ([config] if config.rate or config.quota else []) + list(config.limits)
        self.limits = [Limit(i, s) for i, s in enumerate(specs)]
        self.policy = ", ".join(lim.policy for lim in self.limits)
        services = context.services
        stores = services.stores
        if stores is None:
            raise ValueError("rate_limit needs the daemon's state stores (services.stores)")
        backend = stores.backend if config.store == "default" else config.store
        self.counters = context.keep("counters", lambda: {"exceeded": 0})
        if backend == "redis":
            # The prefix depends only on the plugin's place and config: every gatewayd with the
            # same config shares the same buckets; a changed config starts new ones.
            digest = hashlib.sha256(context.identity.encode()).hexdigest()[:16]
            self.limiter: Any = stores.redis_limiter(f"gatewayd:rl:{digest}:")
        else:
            self.limiter = context.keep(
                "buckets", lambda: stores.memory_limiter(config.max_entries)
            )
        self.events = services.events
        # gatewayd_ratelimit_total{route, result}: plain counts, exposed when scraped
        self.counts = _counts(services, context.route or "_global")
        if not self.limiter.is_async:
            # The memory store never waits: the chain calls a plain method without the cost of
            # a coroutine (the Redis store's decisions are awaited in on_request).
            self.on_request = self.check  # type: ignore[method-assign, assignment]

    def check(self, ctx: RequestContext) -> Response | None:
        """on_request for a store that answers at once."""
        worst = None
        limiter = self.limiter
        for limit in self.limits:
            key = self._key(ctx, limit)
            if key is None:
                return self._key_missing(ctx, limit)
            try:
                if limit.quota:
                    d = limiter.window(key, limit.quota, limit.period)
                else:
                    d = limiter.gcra(key, limit.interval, limit.burst)
            except Exception as exc:
                if (reply := self._store_failed(ctx, exc)) is not None:
                    return reply
                continue
            if not d.allowed:
                return self._limited(ctx, limit, d)
            if worst is None or d.remaining < worst.remaining:
                worst = d
        self._passed(ctx, worst)
        return None

    async def on_request(self, ctx: RequestContext) -> Response | None:
        """check() for a store whose every decision is awaited (Redis). The loop is written
        twice on purpose: one shared as a generator or coroutine would cost the memory store's
        path what calling it without a coroutine saves."""
        worst = None
        limiter = self.limiter
        for limit in self.limits:
            key = self._key(ctx, limit)
            if key is None:
                return self._key_missing(ctx, limit)
            try:
                if limit.quota:
                    d = await limiter.window(key, limit.quota, limit.period)
                else:
                    d = await limiter.gcra(key, limit.interval, limit.burst)
            except Exception as exc:
                if (reply := self._store_failed(ctx, exc)) is not None:
                    return reply
                continue
            if not d.allowed:
                return self._limited(ctx, limit, d)
            if worst is None or d.remaining < worst.remaining:
                worst = d
        self._passed(ctx, worst)
        return None

    def _key(self, ctx: RequestContext, limit: Limit) -> str | None:
        """The store key for this request under ``limit``; None when it has no value for the
        limit's key and ``on_missing_key`` is ``deny``."""
        value = limit.value(ctx)
        kind = limit.kind
        if value is None:
            if self.config.on_missing_key == "deny":
                return None
            kind, value = "ip", ctx.request.client_ip
        if len(value) > MAX_KEY_CHARS:  # a hostile header cannot grow memory
            value = hashlib.sha256(value.encode()).hexdigest()
        return f"{limit.index}:{kind}:{value}"

    def _key_missing(self, ctx: RequestContext, limit: Limit) -> Response:
        return ctx.error_response(
            403, "rate_limit_key_missing", f"this route is rate limited by {limit.key}"
        )

    def _store_failed(self, ctx: RequestContext, exc: Exception) -> Response | None:
        """``on_store_error``: a 503 (deny), or None to let the request through (allow)."""
        self.counts["store_error"] += 1
        self.context.logger.warning(
            "rate-limit store failed", extra={"error": str(exc), "route": ctx.route.name}
        )
        if self.config.on_store_error == "deny":
            return ctx.error_response(
                503, "rate_limit_unavailable", "rate limiting is unavailable", {"Retry-After": "1"}
            )
        return None

    def _limited(self, ctx: RequestContext, limit: Limit, d: Any) -> Response:
        self.counts["limited"] += 1
        self._exceeded(ctx, limit)
        headers = self._headers(d)
        headers["Retry-After"] = str(max(1, math.ceil(d.retry_after)))
        return ctx.error_response(429, "rate_limited", "too many requests", headers)

    def _passed(self, ctx: RequestContext, worst: Any) -> None:
        """Remember the tightest budget left, for the response's RateLimit-* fields (the
        tightest over every rate_limit plugin on the chain)."""
        self.counts["allowed"] += 1
        if worst is not None:
            state = ctx.state
            prev = state.get("rate_limit")
            if prev is None or worst.remaining < prev[0].remaining:
                state["rate_limit"] = (worst, self.policy)

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        seen = ctx.state.get("rate_limit")
        if seen is not None:
            headers = response.headers
            if "RateLimit-Limit" not in headers:
                self._set_headers(headers, seen[0], seen[1])

    def _headers(self, d: Any, policy: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        self._set_headers(headers, d, policy)
        return headers

    def _set_headers(self, headers: MutableMapping[str, str], d: Any, policy: str | None) -> None:
        """The IETF RateLimit-* fields, set in place (no intermediate dict on the hot path)."""
        headers["RateLimit-Limit"] = str(d.limit)
        headers["RateLimit-Remaining"] = str(d.remaining)
        headers["RateLimit-Reset"] = str(max(0, math.ceil(d.reset)))
        headers["RateLimit-Policy"] = policy or self.policy

    def _exceeded(self, ctx: RequestContext, limit: Limit) -> None:
        self.counters["exceeded"] += 1
        if self.events is None or (self.counters["exceeded"] - 1) % self.config.event_sample:
            return
        try:
            self.events.publish(
                "ratelimit.exceeded",
                {
                    "route": ctx.route.name,
                    "key": limit.key,
                    "policy": limit.policy,
                    "client": ctx.request.client_ip,
                    "sampled_one_in": self.config.event_sample,
                },
            )
        except Exception:
            self.context.logger.exception("publishing ratelimit.exceeded failed")


def _counts(services: Any, route: str) -> dict[str, int]:
    """gatewayd_ratelimit_total{route, result}: plain counts, exported when scraped (unexported
    when the plugin runs without metrics)."""
    results = ("allowed", "limited", "store_error")
    metrics = getattr(services, "metrics", None)
    if metrics is None:
        return dict.fromkeys(results, 0)
    counts: dict[str, int] = metrics.results(
        "gatewayd_ratelimit_total",
        "Rate-limit decisions, by route and result (allowed, limited, store_error)",
        route,
        results,
    )
    return counts
