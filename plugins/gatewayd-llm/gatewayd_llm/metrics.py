"""Prometheus metrics of the llm plugin, named after OpenTelemetry's GenAI semantic conventions.

The GenAI conventions' instruments, as an OpenTelemetry-to-Prometheus exporter names them (dots
to underscores, the unit ``s`` as ``_seconds``), with their attributes as labels
(``gen_ai.provider.name``, which replaced ``gen_ai.system``, and so on) and the buckets the
conventions recommend:

- ``gen_ai_client_token_usage`` (histogram, tokens per request) by ``gen_ai_operation_name``,
  ``gen_ai_provider_name``, ``gen_ai_request_model``, ``gen_ai_token_type`` (input, output);
- ``gen_ai_client_operation_duration_seconds`` (histogram) by operation, provider, model and
  ``error_type`` (empty on success, else the status code, or ``cancelled``);
- ``gen_ai_server_time_to_first_token_seconds`` (histogram, streamed requests) by operation,
  provider and model;

and the gateway's own: ``gatewayd_llm_overhead_seconds{model}`` (time not spent waiting for the
provider), ``gatewayd_llm_fallbacks_total{model, reason}``, ``gatewayd_llm_errors_total{model,
kind}``, ``gatewayd_llm_tokens_total{model, provider, type, tenant}`` and
``gatewayd_llm_cost_total{model, tenant}``.

Every label is bounded: a model that is not configured counts as ``other``; tenants are labelled
only within a bounded set (the ``tenants`` given, else the first ``max_tenants`` seen by the
process), every other tenant as ``other`` (no tenant: ``none``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gatewayd.chain import CounterSeries, HistogramSeries, MetricsFactory, StateStores
from gatewayd_llm.usage import UsageRecord

# The buckets the GenAI conventions recommend.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# The gateway's own time per request: tens of microseconds to tens of milliseconds.
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
OTHER = "other"
SHARED_TENANTS = "llm:metrics:tenants"  # the process's set of tenants labelled by name
NO_TENANT = "none"

OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


MAX_SERIES = 4096  # kept label combinations (beyond: looked up per request, still bounded)


class Series:
    """The labelled series of one (operation, provider, model, error, tenant), looked up once
    and kept; those not every request touches are looked up on first use (so no empty series
    is exported that the old per-request lookups would not have made)."""

    __slots__ = (
        "cost",
        "duration",
        "inputs",
        "key",
        "metrics",
        "outputs",
        "overhead",
        "tokens",
        "ttft",
    )

    def __init__(self, metrics: LlmMetrics, key: tuple[str, str, str, str, str]) -> None:
        op, provider, model, error, _tenant = key
        self.metrics = metrics
        self.key = key
        usage = metrics.token_usage
        self.inputs: HistogramSeries = usage.labels(op, provider, model, "input")
        self.outputs: HistogramSeries | None = None
        self.duration: HistogramSeries = metrics.duration.labels(op, provider, model, error)
        self.overhead: HistogramSeries = metrics.overhead.labels(model)
        self.ttft: HistogramSeries | None = None
        self.tokens: dict[str, CounterSeries] = {}
        self.cost: CounterSeries | None = None

    def output(self) -> HistogramSeries:
        if self.outputs is None:
            op, provider, model, _, _ = self.key
            self.outputs = self.metrics.token_usage.labels(op, provider, model, "output")
        return self.outputs

    def first_token(self) -> HistogramSeries:
        if self.ttft is None:
            op, provider, model, _, _ = self.key
            self.ttft = self.metrics.ttft.labels(op, provider, model)
        return self.ttft

    def token_count(self, kind: str) -> CounterSeries:
        series = self.tokens.get(kind)
        if series is None:
            _, provider, model, _, tenant = self.key
            series = self.tokens[kind] = self.metrics.tokens.labels(model, provider, kind, tenant)
        return series

    def spent(self) -> CounterSeries:
        if self.cost is None:
            _, _, model, _, tenant = self.key
            self.cost = self.metrics.cost.labels(model, tenant)
        return self.cost


class LlmMetrics:
    """The llm plugin's collectors. Made again on every reload, it finds the same collectors
    (the factory returns the same one for the same name), so counts carry on.

    ``models``: the configured model names (others are labelled ``other``; None: any name).
    ``tenants``: the tenants labelled by name; None: the first ``max_tenants`` seen. That set
    is the process's (``stores.shared``: one for every llm plugin and every generation, so no
    reload ever labels more); without ``stores``, it is kept with ``keep`` (the plugin
    context's: only across reloads that leave the config unchanged), else this instance's."""

    def __init__(
        self,
        metrics: MetricsFactory,
        *,
        models: Iterable[str] | None = None,
        tenants: Iterable[str] | None = None,
        max_tenants: int = 20,
        keep: Callable[[str, Callable[[], Any]], Any] | None = None,
        stores: StateStores | None = None,
    ) -> None:
        self.models = None if models is None else frozenset(models)
        self.fixed_tenants = None if tenants is None else frozenset(tenants)
        self.max_tenants = max_tenants
        seen: set[str]
        if stores is not None:
            seen = stores.shared(SHARED_TENANTS, set)
        else:
            seen = set() if keep is None else keep("metrics.tenants", set)
        self.seen_tenants = seen
        self.series: dict[tuple[str, str, str, str, str], Series] = {}
        self.token_usage = metrics.histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request (GenAI semconv gen_ai.client.token.usage), by token type",
            (*GENAI, "gen_ai_token_type"),
            TOKEN_BUCKETS,
        )
        self.duration = metrics.histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of LLM requests through the gateway (GenAI semconv"
            " gen_ai.client.operation.duration), by error type (empty on success)",
            (*GENAI, "error_type"),
            DURATION_BUCKETS,
        )
        self.ttft = metrics.histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first token of a streamed answer (GenAI semconv"
            " gen_ai.server.time_to_first_token)",
            GENAI,
            TTFT_BUCKETS,
        )
        self.overhead = metrics.histogram(
            "gatewayd_llm_overhead_seconds",
            "Time the gateway spent on an LLM request when not waiting for the provider",
            ("model",),
            OVERHEAD_BUCKETS,
        )
        self.fallbacks = metrics.counter(
            "gatewayd_llm_fallbacks_total",
            "LLM requests sent on to the next deployment or fallback model, by model and reason",
            ("model", "reason"),
        )
        self.errors = metrics.counter(
            "gatewayd_llm_errors_total",
            "LLM request failures, by model and kind",
            ("model", "kind"),
        )
        self.tokens = metrics.counter(
            "gatewayd_llm_tokens_total",
            "Tokens used, by model, provider, type (input, output) and tenant (a bounded set)",
            ("model", "provider", "type", "tenant"),
        )
        self.cost = metrics.counter(
            "gatewayd_llm_cost_total",
            "Cost of LLM requests in the currency of the prices, by model and tenant",
            ("model", "tenant"),
        )

    def model(self, name: str) -> str:
        models = self.models
        return name if models is None or name in models else OTHER

    def tenant(self, name: str | None) -> str:
        if name is None:
            return NO_TENANT
        fixed = self.fixed_tenants
        if fixed is not None:
            return name if name in fixed else OTHER
        seen = self.seen_tenants
        if name in seen:
            return name
        if len(seen) < self.max_tenants:
            seen.add(name)
            return name
        return OTHER

    def record(
        self, rec: UsageRecord, provider: str, overhead_s: float, operation: str = "chat"
    ) -> None:
        """One request's usage record: tokens, duration, time to first token, overhead.
        ``operation``: chat, completions or embeddings."""
        model = self.model(rec.model)
        op = OPERATIONS.get(operation, operation)
        error = "cancelled" if rec.cancelled else (str(rec.status) if rec.status >= 400 else "")
        key = (op, provider, model, error, self.tenant(rec.tenant))
        series = self.series.get(key)
        if series is None:
            series = Series(self, key)
            if len(self.series) < MAX_SERIES:  # labels are bounded sets: so is this map
                self.series[key] = series
        series.inputs.observe(rec.prompt_tokens)
        if operation != "embeddings":
            series.output().observe(rec.completion_tokens)
        series.duration.observe(rec.duration_ms / 1000)
        if rec.stream and rec.ttft_ms is not None:  # a whole answer has no first token
            series.first_token().observe(rec.ttft_ms / 1000)
        series.overhead.observe(max(0.0, overhead_s))
        if rec.prompt_tokens:
            series.token_count("input").inc(rec.prompt_tokens)
        if rec.completion_tokens:
            series.token_count("output").inc(rec.completion_tokens)
        if rec.cost > 0:
            series.spent().inc(rec.cost)

    def fallback(self, model: str, reason: str) -> None:
        self.fallbacks.labels(self.model(model), reason).inc()

    def error(self, model: str, kind: str) -> None:
        self.errors.labels(self.model(model), kind).inc()
