"""Header hygiene on the way up and down: hop-by-hop removal and the X-Forwarded-* family."""

from __future__ import annotations

import re

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_HOP_BY_HOP_NAMES = tuple(HOP_BY_HOP)
VIA = "1.1 gatewayd"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID_RE.match(value) is not None


def _connection_tokens(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip()
            if token:
                tokens.add(token.lower())
    return tokens


def strip_hop_by_hop(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """Remove hop-by-hop headers (the fixed list and those named in Connection), in place."""
    if "Connection" in headers:
        for name in _connection_tokens(headers):
            headers.popall(name, None)
    for name in _HOP_BY_HOP_NAMES:
        if name in headers:
            headers.popall(name)
    return headers


def add_forwarded(headers: CIMultiDict[str], client_ip: str, scheme: str, host: str) -> None:
    """X-Forwarded-For: as the listener left it (the real client, the trusted proxies it came
    through and our peer: :mod:`gatewayd.proxy.client_ip`), else the client alone; set
    X-Forwarded-Proto/-Host; append to Via."""
    if "X-Forwarded-For" not in headers:
        headers["X-Forwarded-For"] = client_ip
    headers["X-Forwarded-Proto"] = scheme
    if host:
        headers["X-Forwarded-Host"] = host
    via = headers.get("Via")
    headers["Via"] = f"{via}, {VIA}" if via else VIA


def upstream_response_headers(headers: CIMultiDict[str]) -> None:
    """An upstream's response headers made ours, in place, whatever the kind that fetched them:
    no hop-by-hop headers, our hop in Via."""
    strip_hop_by_hop(headers)
    via = headers.get("Via")
    headers["Via"] = f"{via}, {VIA}" if via else VIA
