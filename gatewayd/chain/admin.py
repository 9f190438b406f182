"""Admin routes that plugins contribute, mounted by the admin listener.

A plugin class may define a classmethod ``admin_routes()`` returning :class:`AdminRoute`
entries. The admin listener serves each under ``/_admin/plugins/<plugin name><path>``, behind the
admin tokens like every admin endpoint: a ``viewer`` route answers any admin token, an
``operator`` route only tokens with the operator role. ::

    class CachePlugin(Plugin):
        name = "cache"

        @classmethod
        def admin_routes(cls) -> list[AdminRoute]:
            return [AdminRoute("POST", "/purge", purge, role="operator")]


    async def purge(request: AdminRequest, instances: Sequence[Any]) -> Response:
        ...  # ``instances``: this plugin's instances in the serving generation

``path`` starts with ``/`` (or is empty for the prefix itself) and may hold ``{name}`` segments,
which match one path segment and arrive in ``request.params``. The handler returns a
:class:`~gatewayd.chain.Response` (``Response.json(...)`` for the usual case); raising
:class:`~gatewayd.chain.PluginError` answers its status with the JSON error body, any other
exception answers 500 (logged; the body never holds the traceback).

A plugin class may also set ``admin_path`` (``"/_admin/llm"``: ``/_admin/`` and one segment of
lowercase letters, digits, ``-`` and ``_``) to serve the same routes under that prefix too, for a
product whose API should not read as a plugin's (the LLM gateway's ``/_admin/llm/providers``).
A path the admin API itself serves (:data:`RESERVED`) is refused, and so is one that two plugins
claim (the routes stay reachable under ``/_admin/plugins/<name>``).

A plugin may also define the instance method ``describe_target(upstream, target_id)``: a JSON
object about that target of that upstream (or ``None``), shown with the target in
``GET /_admin/upstreams`` (the ``circuit_breaker`` shows its state there).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gatewayd.chain.api import Response

AdminRole = Literal["viewer", "operator"]
ROLES: tuple[AdminRole, ...] = ("viewer", "operator")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """What a plugin's admin handler sees of the call."""

    method: str
    path: str  # the path under the plugin's prefix, e.g. ``/purge``
    params: Mapping[str, str]  # the ``{name}`` segments of the route's path
    query: Mapping[str, str]  # the query string (first value of each name)
    body: Any  # the JSON body (``None`` when there is none)
    admin: str  # the id of the admin token that made the call
    role: AdminRole  # its role


AdminHandler = Callable[[AdminRequest, Sequence[Any]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One admin endpoint of a plugin: ``method`` and ``path`` under the plugin's prefix, the
    handler, the role it needs (``viewer``: read-only, ``operator``: changes things) and a
    one-line summary (listed by ``GET /_admin/plugins``)."""

    method: str
    path: str
    handler: AdminHandler
    role: AdminRole = "viewer"
    summary: str = ""
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        method = self.method.upper()
        if method not in METHODS:
            raise ValueError(f"admin route {self.path!r}: method {self.method!r} not supported")
        if self.path and not self.path.startswith("/"):
            raise ValueError(f"admin route {self.path!r}: the path must start with '/'")
        if self.role not in ROLES:
            raise ValueError(f"admin route {self.path!r}: role must be 'viewer' or 'operator'")
        if not callable(self.handler):
            raise ValueError(f"admin route {self.path!r}: the handler is not callable")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "pattern", _compile(self.path))

    def match(self, path: str) -> dict[str, str] | None:
        """The ``{name}`` parameters when ``path`` is this route's, else ``None``."""
        m = self.pattern.fullmatch(path)
        return m.groupdict() if m is not None else None


ADMIN_PATH = re.compile(r"/_admin/[a-z][a-z0-9_-]{0,62}")
# The first segments under /_admin/ that the admin API serves itself (or will).
RESERVED = frozenset(
    {"audit", "cache", "config", "dashboard", "events", "keys", "openapi.json", "plugins"}
    | {"relay", "reload", "routes", "session", "tokens", "upstreams", "usage"}
)


def admin_path_of(cls: type[Any]) -> str | None:
    """The extra prefix a plugin class asks for (``None`` without ``admin_path``); raises
    ``ValueError`` naming the problem when it is malformed or reserved."""
    path = getattr(cls, "admin_path", None)
    if path is None:
        return None
    if not isinstance(path, str) or not ADMIN_PATH.fullmatch(path):
        raise ValueError(f"admin_path {path!r} must be /_admin/<one lowercase segment>")
    if path.removeprefix("/_admin/") in RESERVED:
        raise ValueError(f"admin_path {path!r} is one the admin API serves itself")
    return path


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(path: str) -> re.Pattern[str]:
    out: list[str] = []
    pos = 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    return re.compile("".join(out))


def admin_routes_of(cls: type[Any]) -> tuple[AdminRoute, ...]:
    """The admin routes a plugin class declares (none without ``admin_routes``); raises
    ``ValueError`` naming the problem when the declaration is malformed."""
    declare = getattr(cls, "admin_routes", None)
    if declare is None:
        return ()
    if not callable(declare):
        raise ValueError("admin_routes must be a classmethod")
    routes = tuple(declare())
    seen: set[tuple[str, str]] = set()
    for r in routes:
        if not isinstance(r, AdminRoute):
            raise ValueError(f"admin_routes() returned {type(r).__name__}, expected AdminRoute")
        if (r.method, r.path) in seen:
            raise ValueError(f"admin route {r.method} {r.path!r} is declared twice")
        seen.add((r.method, r.path))
    return routes
