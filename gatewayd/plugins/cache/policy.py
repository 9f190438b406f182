"""RFC 9111 for a shared cache: what may be stored, for how long, and under which key.

Every header is read once, when the response is stored (:func:`make_entry`); a hit only
compares numbers kept in the :class:`Entry`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict, MultiMapping

from gatewayd.plugins.cache.fields import (
    Directives,
    age_value,
    parse_cache_control,
    parse_targeted,
    seconds,
    split_list,
    vary_names,
)
from gatewayd.plugins.cache.httpdate import first_date, parse_http_date

Headers = MultiMapping[str]

# Heuristically cacheable statuses (RFC 9110 15.1): stored without explicit freshness too.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Final statuses whose semantics this cache knows (``must-understand``, RFC 9111 5.2.2.3). 206
# is not among them: partial responses are never stored (a stored full 200 answers ranges).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505}
)
NEVER_STORED_STATUSES = frozenset({206, 304})  # a part, and an answer to a validation
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


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """The plugin's config as :func:`make_entry` needs it (built once per plugin)."""

    default_ttl: float | None = None
    # RFC 9213 targeted fields in priority order: the first present and valid one is this
    # cache's policy, and Cache-Control and Expires are then ignored.
    targeted: tuple[str, ...] = ("Gatewayd-Cache-Control", "CDN-Cache-Control")
    # Removed from what is stored and what the client gets (lower case).
    strip: frozenset[str] = frozenset({"gatewayd-cache-control"})


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
    stale_if_error: float | None = None  # the directive's window; None: not given
    must_revalidate: bool = False  # must-revalidate or proxy-revalidate
    no_cache: bool = False
    s_maxage: bool = False  # s-maxage implies proxy-revalidate (RFC 9111 5.2.2.10)
    etag: str | None = None
    last_modified: str | None = None
    modified_at: float | None = None  # Last-Modified, else Date, as a timestamp
    date_at: float | None = None  # Date as a timestamp
    vary: tuple[str, ...] = ()
    size: int = field(default=0)
    retain: float = 0.0  # how long past freshness the entry may still be used (Redis expiry)

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    @property
    def forbids_stale(self) -> bool:
        """May a stale copy be served without a directive allowing it (RFC 9111 4.2.4)?"""
        return self.must_revalidate or self.no_cache or self.s_maxage

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def secondary_key(host: str, vary: tuple[str, ...], headers: Headers) -> str:
    """The variant of a stored response a request selects: its host and the normalised values
    of the headers the response varies on."""
    parts = [host.lower()]
    for name in vary:
        values = headers.getall(name, [])
        parts.append(name + "=" + ",".join(" ".join(v.split()) for v in values))
    return "\n".join(parts)


def directives(headers: Headers, policy: StorePolicy) -> tuple[Directives, bool]:
    """This cache's directives for a response, and whether ``Expires`` counts: the first valid,
    non-empty targeted field (RFC 9213 2.1), else ``Cache-Control`` over all its lines."""
    for name in policy.targeted:
        targeted = parse_targeted(headers.getall(name, []))
        if targeted is not None:
            return targeted, False
    return parse_cache_control(headers.getall("Cache-Control", [])), True


def make_entry(
    status: int,
    headers: Headers,
    body: bytes,
    policy: StorePolicy,
    has_authorization: bool,
    now: float | None = None,
    request_time: float | None = None,
) -> Entry | None:
    """An entry for a response to a GET, or None when RFC 9111 forbids a shared cache to store
    it: no-store (unless must-understand and the status is understood), private, Authorization
    without public/s-maxage/must-revalidate, Vary: *, Set-Cookie, a partial or interim
    response, or nothing that says how long it stays fresh. Any final status with explicit
    freshness is stored (a 404 or a 500 with max-age too); heuristic freshness (default_ttl)
    only for heuristically cacheable statuses or ``public``."""
    if status < 200 or status in NEVER_STORED_STATUSES:
        return None
    cc, use_expires = directives(headers, policy)
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return None
    elif "no-store" in cc:
        return None
    if "private" in cc or "set-cookie" in headers:
        return None
    if has_authorization and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return None
    vary = vary_names(headers.getall("Vary", []))
    if vary is None:
        return None
    now = time.time() if now is None else now
    ttl = freshness(cc, headers, now, use_expires)
    if ttl is None:
        heuristic = status in HEURISTIC_STATUSES or "public" in cc
        if heuristic and policy.default_ttl:
            ttl = policy.default_ttl
        elif "no-cache" in cc and status in HEURISTIC_STATUSES:
            ttl = 0.0  # stored to be revalidated on every use
        else:
            return None
    stored = [(k, v) for k, v in headers.items() if k.lower() not in NOT_STORED | policy.strip]
    date_at = first_date(headers.getall("Date", []), now)
    etags = headers.getall("ETag", [])
    modified = headers.getall("Last-Modified", [])
    last_modified_at = first_date(modified, now)
    entry = Entry(
        status=status,
        headers=stored,
        body=body,
        stored_at=now,
        initial_age=initial_age(headers, now, request_time),
        ttl=ttl,
        stale_while_revalidate=seconds(cc, "stale-while-revalidate") or 0.0,
        stale_if_error=seconds(cc, "stale-if-error"),
        must_revalidate="must-revalidate" in cc or "proxy-revalidate" in cc,
        no_cache="no-cache" in cc,
        s_maxage="s-maxage" in cc,
        etag=etags[0] if etags else None,
        last_modified=modified[0] if last_modified_at is not None else None,
        modified_at=last_modified_at if last_modified_at is not None else date_at,
        date_at=date_at,
        vary=vary,
    )
    entry.size = len(body) + sum(len(k) + len(v) for k, v in stored) + 256
    return entry


def freshness(cc: Directives, headers: Headers, now: float, use_expires: bool) -> float | None:
    """The explicit freshness lifetime (s-maxage, max-age, Expires - Date), or None. An invalid
    argument or ``Expires`` means stale (0)."""
    for name in ("s-maxage", "max-age"):
        v = seconds(cc, name)
        if v is not None:
            return v
    if use_expires:
        values = headers.getall("Expires", [])
        if values:
            expires = first_date(values, now)
            if expires is None:
                return 0.0  # an invalid Expires means already expired (RFC 9111 5.3)
            date = first_date(headers.getall("Date", []), now)
            return max(0.0, expires - (now if date is None else date))
    return None


def initial_age(headers: Headers, now: float, request_time: float | None = None) -> float:
    """RFC 9111 4.2.3: max(apparent age from Date, Age + the response delay)."""
    age = age_value(headers.getall("Age", []))
    date = first_date(headers.getall("Date", []), now)
    apparent = max(0.0, int(now) - date) if date is not None else 0.0
    delay = max(0.0, now - request_time) if request_time is not None else 0.0
    return max(apparent, (age or 0.0) + delay)


def refresh(
    entry: Entry, headers: Headers, policy: StorePolicy, request_time: float | None = None
) -> Entry:
    """Freshen a stored entry with the headers of a 304 (RFC 9111 4.3.4): every field the 304
    carries replaces all the stored lines of that field."""
    now = time.time()
    fresh_names = {k.lower() for k in headers} - NOT_STORED - {"content-length"}
    md: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in entry.headers if k.lower() not in fresh_names
    )
    for k, v in headers.items():
        if k.lower() in fresh_names:
            md.add(k, v)
    fresh = make_entry(entry.status, md, entry.body, policy, False, now, request_time)
    if fresh is None:  # the 304 says it may not be stored any more: keep it stale
        entry.ttl = 0.0
        return entry
    fresh.retain = entry.retain
    return fresh


def not_modified(entry: Entry, request_headers: Headers) -> bool:
    """Do the client's conditional headers match the entry (so a 304 will do)?"""
    inm = request_headers.getall("If-None-Match", [])
    if inm:
        if entry.etag is None:
            return False
        tags = split_list(inm)
        if tags == ["*"]:
            return True
        mine = _weak(entry.etag)
        return any(_weak(t) == mine for t in tags)
    ims = request_headers.getall("If-Modified-Since", [])
    if len(ims) != 1:  # more than one member: ignored (RFC 9110 13.1.3)
        return False
    since = parse_http_date(ims[0])
    return since is not None and entry.modified_at is not None and entry.modified_at <= since


def if_range_matches(entry: Entry, value: str) -> bool:
    """RFC 9110 13.1.5: an entity-tag matches by strong comparison; a date matches only the
    exact, strong Last-Modified (at least a second before the response's Date)."""
    value = value.strip(" \t")
    if value.startswith(('"', "W/")):
        tag = entry.etag
        return tag is not None and not value.startswith("W/") and tag == value
    since = parse_http_date(value)
    lm, date = entry.modified_at, entry.date_at
    if since is None or entry.last_modified is None or lm is None or date is None:
        return False
    return lm == since and date - lm >= 1.0


def invalidated(primary: str, base: str, host: str, headers: Headers) -> list[str]:
    """What a successful unsafe request drops (RFC 9111 4.4): its own target (``primary``), and
    the ``Location`` and ``Content-Location`` URIs (resolved against the request URI ``base``)
    whose host is the request's own ``host``, as primary keys."""
    out = [primary]
    for name in ("Location", "Content-Location"):
        for value in headers.getall(name, []):
            try:
                url = urlsplit(urljoin(base, value.strip()))
            except ValueError:
                continue
            if url.netloc.lower() != host.lower() or not url.path:
                continue
            target = f"{url.path}?{url.query}" if url.query else url.path
            if target not in out:
                out.append(target)
    return out


def _weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
