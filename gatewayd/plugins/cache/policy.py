"""RFC 9111 for a shared cache: what may be stored, for how long, and under which key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict

# Heuristically cacheable statuses (RFC 9110 15.1); others only with explicit freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
EXPLICIT_STATUSES = HEURISTIC_STATUSES | {302, 307}
# Not stored with the entry: hop-by-hop, per-request and per-hop headers.
NOT_STORED = frozenset(
    {
        "age",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-cache",
        "x-request-id",
        "te",
        "trailer",
    }
)


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """``max-age=60, no-cache="Set-Cookie", public`` -> {"max-age": "60", ...} (names lowered)."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in value.split(","):
        name, eq, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            out[name] = arg.strip().strip('"') if eq else None
    return out


def seconds(cc: Mapping[str, str | None], name: str) -> float | None:
    v = cc.get(name)
    if v is None:
        return None
    try:
        return max(0.0, float(int(v)))
    except ValueError:
        return 0.0  # an invalid value means stale (RFC 9111 1.2.2)


def http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(slots=True)
class Entry:
    """A stored response and what is needed to decide whether it may be served."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float  # wall clock when the response arrived (or was revalidated)
    initial_age: float
    ttl: float  # freshness lifetime
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    must_revalidate: bool = False
    no_cache: bool = False
    etag: str | None = None
    last_modified: str | None = None
    vary: tuple[str, ...] = ()
    size: int = field(default=0)

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def vary_names(value: str | None) -> tuple[str, ...] | None:
    """Sorted lower-case header names of a Vary header; None for ``Vary: *``."""
    if not value:
        return ()
    names = sorted({n.strip().lower() for n in value.split(",") if n.strip()})
    return None if "*" in names else tuple(names)


def secondary_key(host: str, vary: tuple[str, ...], headers: Mapping[str, str]) -> str:
    """The variant of a stored response a request selects: its host and the normalised values
    of the headers the response varies on."""
    parts = [host.lower()]
    for name in vary:
        values = headers.getall(name, []) if hasattr(headers, "getall") else [headers.get(name, "")]
        parts.append(name + "=" + ",".join(" ".join(v.split()) for v in values))
    return "\n".join(parts)


def make_entry(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    default_ttl: float | None,
    has_authorization: bool,
    now: float | None = None,
) -> Entry | None:
    """An entry for a response to a GET, or None when RFC 9111 forbids a shared cache to store
    it (no-store, private, Authorization without public/s-maxage/must-revalidate, Vary: *,
    Set-Cookie, nothing to say how long it stays fresh)."""
    cc = parse_cache_control(headers.get("Cache-Control"))
    if "no-store" in cc or "private" in cc or "set-cookie" in headers:
        return None
    if has_authorization and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return None
    vary = vary_names(headers.get("Vary"))
    if vary is None:
        return None
    now = time.time() if now is None else now
    ttl = freshness(cc, headers, now)
    if ttl is None:
        if status not in HEURISTIC_STATUSES or not default_ttl:
            if "no-cache" not in cc:
                return None
            ttl = 0.0
        else:
            ttl = default_ttl
    elif status not in EXPLICIT_STATUSES:
        return None
    stored = [(k, v) for k, v in headers.items() if k.lower() not in NOT_STORED]
    entry = Entry(
        status=status,
        headers=stored,
        body=body,
        stored_at=now,
        initial_age=initial_age(headers, now),
        ttl=ttl,
        stale_while_revalidate=seconds(cc, "stale-while-revalidate") or 0.0,
        stale_if_error=seconds(cc, "stale-if-error") or 0.0,
        must_revalidate="must-revalidate" in cc or "proxy-revalidate" in cc,
        no_cache="no-cache" in cc,
        etag=headers.get("ETag"),
        last_modified=headers.get("Last-Modified"),
        vary=vary,
    )
    entry.size = len(body) + sum(len(k) + len(v) for k, v in stored) + 256
    return entry


def freshness(cc: Mapping[str, str | None], headers: Mapping[str, str], now: float) -> float | None:
    """The explicit freshness lifetime (s-maxage, max-age, Expires - Date), or None."""
    for name in ("s-maxage", "max-age"):
        v = seconds(cc, name)
        if v is not None:
            return v
    if "Expires" in headers:
        expires = http_date(headers.get("Expires"))
        if expires is None:
            return 0.0  # an invalid Expires means already expired
        date = http_date(headers.get("Date")) or now
        return max(0.0, expires - date)
    return None


def initial_age(headers: Mapping[str, str], now: float) -> float:
    try:
        age = max(0.0, float(int(headers.get("Age", "0"))))
    except ValueError:
        age = 0.0
    date = http_date(headers.get("Date"))
    apparent = max(0.0, int(now) - date) if date is not None else 0.0
    return max(age, apparent)


def refresh(entry: Entry, headers: Mapping[str, str], default_ttl: float | None) -> Entry:
    """Freshen a stored entry with the headers of a 304 (RFC 9111 4.3.4)."""
    now = time.time()
    merged = {k.lower(): (k, v) for k, v in entry.headers}
    for k, v in headers.items():
        if k.lower() not in NOT_STORED and k.lower() != "content-length":
            merged[k.lower()] = (k, v)
    md = CIMultiDict(list(merged.values()))
    fresh = make_entry(entry.status, md, entry.body, default_ttl, False, now)
    if fresh is None:  # the 304 says it may not be stored any more: keep it stale
        entry.ttl = 0.0
        return entry
    return fresh


def not_modified(entry: Entry, request_headers: Mapping[str, str]) -> bool:
    """Do the client's conditional headers match the entry (so a 304 will do)?"""
    inm = request_headers.get("If-None-Match")
    if inm is not None:
        if entry.etag is None:
            return False
        if inm.strip() == "*":
            return True
        mine = _weak(entry.etag)
        return any(_weak(t) == mine for t in inm.split(","))
    ims = http_date(request_headers.get("If-Modified-Since"))
    if ims is not None:
        lm = http_date(entry.last_modified) or http_date(entry.header("Date"))
        return lm is not None and lm <= ims
    return False


def _weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
