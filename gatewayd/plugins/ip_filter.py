"""``ip_filter``: allow or deny clients by address (CIDR lists; deny wins; 403).

The address is the request's real client IP, ``ctx.request.client_ip``: the socket peer or,
behind the listener's ``listen[].trusted_proxies`` / ``trusted_hops``, the one the core worked
out from X-Forwarded-For (docs/identity.md). It is the same value the rate limiter, the
balancer and the access log use, so this plugin has no trusted proxies of its own: the former
``ip_filter.trusted_proxies`` key is refused with an error that points to the listener's. A
client IP that is not an address (which the core never produces for a TCP client) is refused.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from pydantic import field_validator, model_validator

from gatewayd.chain import Plugin, PluginConfig, PluginContext, RequestContext, Response

Masks = tuple[tuple[int, int, int], ...]  # (IP version, network as int, netmask as int)


def _networks(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"invalid address or CIDR {v!r}") from None
    return values


class IpFilterConfig(PluginConfig):
    allow: list[str] = []
    deny: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trusted_proxies" in data:
            raise ValueError(
                "'trusted_proxies' moved to the listener: set listen[].trusted_proxies (or "
                "listen[].trusted_hops) so that every plugin, the balancer and the access log "
                "see the same client IP; ip_filter then filters on it"
            )
        return data

    @field_validator("allow", "deny")
    @classmethod
    def _check(cls, v: list[str]) -> list[str]:
        return _networks(v)


def _masks(values: list[str]) -> Masks:
    nets = [ipaddress.ip_network(v, strict=False) for v in values]
    return tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)


@functools.lru_cache(maxsize=8192)
def _address(value: str) -> tuple[int, int] | None:
    """(IP version, integer value) of a client IP, IPv4-mapped IPv6 as IPv4; None if it is not
    an address. Cached: the same clients come back, and ``ipaddress`` is slow."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, int(addr)


def _within(addr: tuple[int, int], masks: Masks) -> bool:
    version, value = addr
    return any(v == version and value & m == net for v, net, m in masks)


class IpFilterPlugin(Plugin):
    name = "ip_filter"
    Config = IpFilterConfig
    priority = 3000  # first: refuse before any other work

    def __init__(self, config: IpFilterConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.allow = _masks(config.allow)
        self.deny = _masks(config.deny)

    def on_request(self, ctx: RequestContext) -> Response | None:
        addr = _address(ctx.request.client_ip)
        if (
            addr is None
            or _within(addr, self.deny)
            or (self.allow and not _within(addr, self.allow))
        ):
            return ctx.error_response(403, "forbidden", "client address not allowed")
        return None
