"""``ip_filter``: allow or deny clients by address (CIDR lists; deny wins; 403).

The client address is the TCP peer, unless the peer is one of ``trusted_proxies``: then
``X-Forwarded-For`` is believed, read right to left, skipping trusted proxies; the first
untrusted address is the client. (Without ``trusted_proxies``, X-Forwarded-For is ignored:
anyone can write it.) The address used is left in ``ctx.state["client_ip"]`` for later plugins.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pydantic import field_validator

from gatewayd.chain import Plugin, PluginConfig, RequestContext, Response

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


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
    trusted_proxies: list[str] = []

    @field_validator("allow", "deny", "trusted_proxies")
    @classmethod
    def _check(cls, v: list[str]) -> list[str]:
        return _networks(v)


def _parse(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address, nets: list[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


class IpFilterPlugin(Plugin):
    name = "ip_filter"
    Config = IpFilterConfig
    priority = 3000  # first: refuse before any other work

    def __init__(self, config: IpFilterConfig, context: object) -> None:
        super().__init__(config, context)  # type: ignore[arg-type]
        net = ipaddress.ip_network
        self.allow = [net(v, strict=False) for v in config.allow]
        self.deny = [net(v, strict=False) for v in config.deny]
        self.trusted = [net(v, strict=False) for v in config.trusted_proxies]

    def client_address(self, ctx: RequestContext) -> Address | None:
        addr = _parse(ctx.request.client_ip)
        if addr is None or not self.trusted or not _within(addr, self.trusted):
            return addr
        hops = []
        for value in ctx.request.headers.getall("X-Forwarded-For", ()):
            hops += [h for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            parsed = _parse(hop)
            if parsed is None:
                return None  # garbage where an address should be: trust nothing
            addr = parsed
            if not _within(addr, self.trusted):
                return addr
        return addr

    def on_request(self, ctx: RequestContext) -> Response | None:
        addr = self.client_address(ctx)
        if addr is None:
            return ctx.error_response(403, "forbidden", "client address not allowed")
        ctx.state["client_ip"] = str(addr)
        if _within(addr, self.deny) or (self.allow and not _within(addr, self.allow)):
            return ctx.error_response(403, "forbidden", "client address not allowed")
        return None
