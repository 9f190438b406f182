"""The route table: match a request to a route, most specific first.

Specificity (first difference wins): an exact host beats a wildcard host (``*.example.com``,
one or more labels), which beats no host; then the longer path prefix; then a route that lists
methods beats one that does not; then the order in the config. A path prefix matches on segment
boundaries: ``/v1`` and ``/v1/`` both match ``/v1`` and ``/v1/x`` but not ``/v1x``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatewayd.chain.api import RouteInfo
from gatewayd.chain.builder import Chain
from gatewayd.config.schema import RouteConfig


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    name: str
    host: str | None  # exact host, lower case
    host_suffix: str | None  # ".example.com" for "*.example.com"
    prefix: str  # without trailing slash; "" for "/"
    methods: frozenset[str] | None
    rewrite: re.Pattern[str] | None
    chain: Chain
    info: RouteInfo

    def matches_path(self, path: str) -> bool:
        p = self.prefix
        return not p or path == p or (path.startswith(p) and path[len(p)] == "/")

    def matches_host(self, host: str) -> bool:
        if self.host is not None:
            return host == self.host
        if self.host_suffix is not None:
            return host.endswith(self.host_suffix) and len(host) > len(self.host_suffix)
        return True

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: prefix stripped if asked, then the regex rewrite."""
        if self.config.strip_prefix and self.prefix:
            path = path[len(self.prefix) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        rewrite = self.config.rewrite
        if self.rewrite is not None and rewrite is not None:
            path = self.rewrite.sub(rewrite.replacement, path, count=1)
        return path

    def specificity(self) -> tuple[int, int, int]:
        host_rank = 2 if self.host is not None else 1 if self.host_suffix is not None else 0
        return (host_rank, len(self.prefix) + (1 if self.prefix else 0), self.methods is not None)


def make_route(config: RouteConfig, chain: Chain, info: RouteInfo) -> Route:
    host = config.match.host.lower() if config.match.host else None
    suffix = None
    if host and host.startswith("*."):
        suffix, host = host[1:], None
    prefix = config.match.path.rstrip("/")
    methods = frozenset(config.match.methods) if config.match.methods else None
    if methods is not None and "GET" in methods:
        methods |= {"HEAD"}  # as nginx does: allowing GET allows HEAD
    rewrite = re.compile(config.rewrite.pattern) if config.rewrite else None
    return Route(config, config.name, host, suffix, prefix, methods, rewrite, chain, info)


class NoRoute(LookupError):
    pass


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        order = sorted(
            range(len(routes)), key=lambda i: (routes[i].specificity(), -i), reverse=True
        )
        self.routes = [routes[i] for i in order]
        self.by_name = {r.name: r for r in routes}

    def match(self, host: str, path: str, method: str) -> Route | None:
        host = (  # host_key(host), inline: this runs for every request
            host.partition(":")[0].lower()
            if ":" in host and not host.startswith("[")
            else host.lower()
        )
        for route in self.routes:
            if (
                route.matches_path(path)
                and route.matches_host(host)
                and (route.methods is None or method in route.methods)
            ):
                return route
        return None

    def allowed_methods(self, host: str, path: str) -> frozenset[str]:
        """After :meth:`match` found nothing: the methods of the routes whose host and path
        match (the ``Allow`` of a 405); empty when none does (a 404). A route without a
        method list would have matched, so every route counted here lists its methods."""
        host = host_key(host)
        allowed: frozenset[str] = frozenset()
        for route in self.routes:
            if route.methods is not None and route.matches_path(path) and route.matches_host(host):
                allowed |= route.methods
        return allowed


def host_key(host: str) -> str:
    """The Host header as routes match it: lower case, without the port."""
    if ":" in host and not host.startswith("["):
        return host.partition(":")[0].lower()
    return host.lower()
