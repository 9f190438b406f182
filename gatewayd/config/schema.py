"""The configuration contract (see docs/configuration.md) as immutable pydantic models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from gatewayd.config.audit import AuditConfig
from gatewayd.config.idp import AdminJwtConfig
from gatewayd.config.metrics import MetricsConfig
from gatewayd.config.units import Duration, Rate, Ratio, Size


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) into its parts."""
    m = re.match(r"^\[?([^\]]*)\]?:(\d{1,5})$", value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"invalid address {value!r} (expected host:port, e.g. 0.0.0.0:8080)")
    return m.group(1) or "0.0.0.0", int(m.group(2))


class TLSConfig(Model):
    cert: Path
    key: Path
    min_version: Literal["1.2", "1.3"] = "1.2"


class ListenerConfig(Model):
    address: str
    tls: TLSConfig | None = None
    # The real client IP (docs/identity.md): behind these proxies (addresses or CIDRs) and/or
    # this many of them (Envoy's xff_num_trusted_hops), X-Forwarded-For is believed.
    trusted_proxies: list[str] = []
    trusted_hops: int = Field(0, ge=0, le=32)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for cidr in v:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"invalid address or CIDR {cidr!r} (e.g. 10.0.0.0/8, 2001:db8::/32)"
                ) from None
        return [c.strip() for c in v]


class AdminToken(Model):
    id: str
    hash: str = Field(repr=False)
    role: Literal["viewer", "operator"] = "operator"  # viewer: read-only admin routes


class AdminConfig(Model):
    listen: str = "127.0.0.1:9901"
    tokens: list[AdminToken] = []
    jwt: AdminJwtConfig | None = None  # JWTs from an IdP (gatewayd.config.idp)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("tokens")
    @classmethod
    def _unique_ids(cls, v: list[AdminToken]) -> list[AdminToken]:
        ids = [t.id for t in v]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"the same token id twice: {', '.join(twice)}")
        return v


class StateConfig(Model):
    dir: Path = Path("/var/lib/gatewayd")
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


_SERVER_HEADER_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


class ServerConfig(Model):
    """Process-level settings: the pid file, how long a shutdown drains, the HTTP/1 limits of
    the public listeners and the ``Server`` header every listener sends."""

    pid_file: Path | None = None  # default: <state.dir>/gatewayd.pid
    drain_timeout: Duration = 30.0
    # Longest request target (the path and query of the request line): 414 above it.
    max_request_line: Size = 8192
    # Longest header field (name and value): 431 above it.
    max_header_size: Size = 16384
    # All header fields of a request together (names, values, ": " and CRLF), and their
    # number: 431 above either. Unset: 32 KiB (nginx's effective total, 4 x 8k buffers), or
    # twice max_header_size when that is larger (a raised field limit keeps working).
    max_headers_total: Size | None = None
    max_headers: int = Field(128, ge=1, le=10_000)
    # A client connection with no complete request for this long is closed: idle keep-alive
    # connections and clients that trickle their headers (slowloris) alike.
    keepalive_timeout: Duration = 75.0
    # The Server header of every response (public and admin listeners): sent as given, never
    # with a version; "" sends none.
    header: str = "gatewayd"

    @model_validator(mode="after")
    def _headers_total_fits_a_field(self) -> ServerConfig:
        if self.max_headers_total is not None and self.max_headers_total < self.max_header_size:
            raise ValueError("max_headers_total must be at least max_header_size")
        return self

    @property
    def headers_total(self) -> int:
        """``max_headers_total``, or its default for this ``max_header_size``."""
        if self.max_headers_total is not None:
            return self.max_headers_total
        return max(32 * 1024, 2 * self.max_header_size)

    @field_validator("header")
    @classmethod
    def _header_value(cls, value: str) -> str:
        if value and not _SERVER_HEADER_RE.fullmatch(value):
            raise ValueError(
                "must be printable ASCII words separated by single spaces (or empty: no header)"
            )
        return value


class PoolConfig(Model):
    max_connections: int = Field(256, ge=1)
    keepalive: Duration = 30.0
    # Response bodies are read in chunks up to this size; reading from the target pauses while
    # more than this waits unread for a slow client (about this plus one socket read is held).
    read_buffer: Size = 512 * 1024

    @field_validator("read_buffer")
    @classmethod
    def _read_buffer_range(cls, value: int) -> int:
        if not 16 * 1024 <= value <= 16 * 1024 * 1024:
            raise ValueError("must be between 16KiB and 16MiB")
        return value


class TimeoutsConfig(Model):
    connect: Duration = 2.0
    read: Duration = 30.0
    total: Duration = 60.0


class HealthConfig(Model):
    path: str = "/healthz"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    unhealthy_after: int = Field(3, ge=1)
    healthy_after: int = Field(2, ge=1)


class RetriesConfig(Model):
    attempts: int = Field(2, ge=0, le=10)  # retries after the first try
    backoff: Duration = 0.05  # base of the exponential backoff (full jitter)
    max_backoff: Duration = 1.0
    budget: Ratio = 0.2  # retries may add at most this share of requests (10 s window) ...
    min_retries: int = Field(3, ge=0)  # ... plus this many per window, so a quiet upstream retries
    idempotency_key: bool = False  # retry non-idempotent requests that carry Idempotency-Key
    statuses: list[int] = [502, 503, 504]  # responses retried (idempotent requests only)
    max_body: Size = 1024 * 1024  # request bodies up to this are buffered so they can be resent


class PassiveConfig(Model):
    """Passive ejection: a target that fails ``failures`` times in a row is taken out of the
    rotation for ``eject_for`` (never the last available target)."""

    failures: int = Field(5, ge=1)
    eject_for: Duration = 30.0
    statuses: list[int] = [502, 503, 504]


class UpstreamConfig(Model):
    """What every upstream kind's config has; the core applies these the same way to every
    kind (HTTP pools, relay leases, kinds from plugin distributions). A kind's ``Config``
    subclasses this and adds its own keys."""

    kind: str | None = None
    balance: Literal["round_robin", "least_conn", "hash"] = "round_robin"
    hash_on: str = "ip"  # "ip" or "header:<name>"
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health: HealthConfig | None = None
    retries: RetriesConfig | None = None
    passive: PassiveConfig | None = None

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, v: str) -> str:
        if v != "ip" and not (v.startswith("header:") and len(v) > 7):
            raise ValueError("expected 'ip' or 'header:<name>'")
        return v


class HttpUpstreamConfig(UpstreamConfig):
    """``kind: http`` (the default when ``targets`` is given): a pool of HTTP targets."""

    kind: Literal["http"] | None = None
    targets: list[str] = Field(min_length=1)
    pool: PoolConfig = PoolConfig()

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.match(r"^(https?|wss?)://[^/\s]+/?$", t):
                raise ValueError(f"invalid target {t!r} (expected http://host:port)")
        return [t.rstrip("/") for t in v]


class RelayUpstreamConfig(UpstreamConfig):
    """``kind: relay`` (the default when ``relay`` is given): the peers holding a lease."""

    kind: Literal["relay"] | None = None
    relay: str

    @field_validator("relay")
    @classmethod
    def _lease(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", v):
            raise ValueError("a lease name is 1-63 letters, digits, '_', '.', '-'")
        return v


class ExtensionUpstreamConfig(UpstreamConfig):
    """An upstream of a kind registered by a plugin distribution (``gatewayd.upstreams``): its
    own keys are checked against that kind's ``Config`` once the kinds are known."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)
    kind: str


def _upstream_kind(data: Any) -> str:
    if isinstance(data, UpstreamConfig):
        kind = data.kind or ("relay" if isinstance(data, RelayUpstreamConfig) else "http")
    elif isinstance(data, dict):
        kind = data.get("kind") or ""
        if not kind:
            has_targets, has_relay = "targets" in data, "relay" in data
            if has_targets == has_relay:
                return "none"
            kind = "relay" if has_relay else "http"
    else:
        return "none"
    return kind if kind in ("http", "relay") else "extension"


class _NoKind(Model):
    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        raise ValueError(
            "an upstream needs 'targets' (HTTP), 'relay' (a relay lease) or 'kind' (exactly one)"
        )


if TYPE_CHECKING:  # what a validated config holds: _NoKind never validates
    AnyUpstreamConfig = HttpUpstreamConfig | RelayUpstreamConfig | ExtensionUpstreamConfig
else:
    AnyUpstreamConfig = Annotated[
        Annotated[HttpUpstreamConfig, Tag("http")]
        | Annotated[RelayUpstreamConfig, Tag("relay")]
        | Annotated[ExtensionUpstreamConfig, Tag("extension")]
        | Annotated[_NoKind, Tag("none")],
        Discriminator(_upstream_kind),
    ]


class MatchConfig(Model):
    host: str | None = None
    path: str = "/"
    methods: list[str] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("a path prefix must start with '/'")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [m.upper() for m in v]


class RewriteConfig(Model):
    pattern: str
    replacement: str

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return v


class PluginSpec(Model):
    """One entry of a chain: ``- rate_limit: {...}`` with an optional sibling ``priority:``."""

    name: str
    config: dict[str, Any] = {}
    priority: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data, "config": {}}
        if isinstance(data, dict) and "name" not in data:
            rest = {k: v for k, v in data.items() if k != "priority"}
            if len(rest) != 1:
                raise ValueError(
                    "a plugin entry is a mapping with one plugin name, e.g. '- rate_limit: {...}'"
                )
            ((name, config),) = rest.items()
            if config is None:
                config = {}
            if not isinstance(config, dict):
                raise ValueError(f"the config of plugin '{name}' must be a mapping")
            return {"name": name, "config": config, "priority": data.get("priority")}
        return data


class WebSocketConfig(Model):
    idle_timeout: Duration = 300.0
    max_message: Size = 16 * 1024 * 1024


class RouteConfig(Model):
    name: str
    match: MatchConfig = MatchConfig()
    upstream: str | None = None
    relay: str | None = None  # "by_path" or a lease name
    strip_prefix: bool = False
    rewrite: RewriteConfig | None = None
    preserve_host: bool = False
    timeouts: TimeoutsConfig | None = None
    websocket: WebSocketConfig = WebSocketConfig()
    plugins: list[PluginSpec] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", v):
            raise ValueError("a route name is 1-64 letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if self.upstream and self.relay:
            raise ValueError("a route has either 'upstream' or 'relay', not both")
        return self


class HeartbeatConfig(Model):
    interval: Duration = 20.0
    timeout: Duration = 30.0


class RelayConfig(Model):
    path: str = "/_relay/connect"
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    max_connections: int = Field(1000, ge=1)
    connect_rate: Rate = "10/min"  # type: ignore[assignment]
    max_event_bytes: Size = 1024 * 1024
    event_types: list[str] = []
    max_frame: Size = 1024 * 1024
    stream_window: Size = 256 * 1024
    max_streams: int = Field(1000, ge=1)  # streams in flight per peer connection

    @field_validator("path")
    @classmethod
    def _relay_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("the relay path must start with '/'")
        return v

    @field_validator("max_frame", "stream_window")
    @classmethod
    def _relay_sizes(cls, v: int) -> int:
        if not 16 * 1024 <= v <= 2**31 - 1:
            raise ValueError("must be between 16KiB and 2GiB")
        return v


class EventsConfig(Model):
    """The event bus: ``buffer`` events kept for Last-Event-ID resume, ``queue`` events a
    consumer may fall behind before it gets a gap (both need a restart), and the SSE
    heartbeat interval (a ``: ping`` comment on idle streams)."""

    buffer: int = Field(1024, ge=16, le=1_000_000)
    queue: int = Field(1000, ge=16, le=1_000_000)
    heartbeat: Duration = 15.0


class GatewayConfig(Model):
    listen: list[ListenerConfig] = [ListenerConfig(address="0.0.0.0:8080")]
    admin: AdminConfig = AdminConfig()
    state: StateConfig = StateConfig()
    logging: LoggingConfig = LoggingConfig()
    server: ServerConfig = ServerConfig()
    plugins: list[PluginSpec] = []
    upstreams: dict[str, AnyUpstreamConfig] = {}
    routes: list[RouteConfig] = []
    relay: RelayConfig = RelayConfig()
    events: EventsConfig = EventsConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def pid_file(self) -> Path:
        return self.server.pid_file or self.state.dir / "gatewayd.pid"
