"""gatewayd/plugins/cache/policy.py: what is stored, for how long, and how it is read back."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gatewayd.plugins.cache.httpdate import parse_http_date
from gatewayd.plugins.cache.policy import (
    StorePolicy,
    freshness,
    if_range_matches,
    initial_age,
    invalidated,
    make_entry,
    not_modified,
    refresh,
)

NOW = float(calendar.timegm((2026, 12, 1, 12, 0, 0)))
DATE = "Tue, 01 Dec 2026 12:00:00 GMT"
POLICY = StorePolicy()  # the config's defaults: Gatewayd-Cache-Control, CDN-Cache-Control


def h(*lines: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(lines)


def entry(status: int, *lines: tuple[str, str], policy: StorePolicy = POLICY, auth=False):
    return make_entry(status, h(("Date", DATE), *lines), b"x", policy, auth, NOW)


def test_s_maxage_on_a_later_line_wins():
    e = entry(200, ("Cache-Control", "max-age=3600"), ("Cache-Control", "s-maxage=1"))
    assert e is not None and e.ttl == 1 and e.s_maxage and e.forbids_stale


@pytest.mark.parametrize("status", [200, 203, 204, 301, 308, 400, 404, 410, 500, 503, 599])
def test_any_final_status_with_explicit_freshness_is_stored(status):
    e = entry(status, ("Cache-Control", "max-age=60"))
    assert e is not None and e.ttl == 60


@pytest.mark.parametrize("status", [100, 103, 206, 304])
def test_interim_partial_and_not_modified_are_never_stored(status):
    assert entry(status, ("Cache-Control", "max-age=60")) is None


def test_heuristic_freshness_only_for_heuristic_statuses_or_public():
    policy = StorePolicy(default_ttl=30)
    assert entry(404, policy=policy).ttl == 30
    assert entry(500, policy=policy) is None
    assert entry(500, ("Cache-Control", "public"), policy=policy).ttl == 30


def test_must_understand():
    mu = ("Cache-Control", "must-understand, no-store, max-age=60")
    assert entry(200, mu).ttl == 60
    assert entry(599, mu) is None
    assert entry(200, ("Cache-Control", "no-store, max-age=60")) is None


def test_targeted_fields_in_priority_order_replace_cache_control_and_expires():
    e = entry(
        200,
        ("Cache-Control", "private, max-age=1"),
        ("Expires", "0"),
        ("CDN-Cache-Control", "max-age=60"),
        ("Gatewayd-Cache-Control", "max-age=120, stale-if-error=30"),
    )
    assert e is not None and (e.ttl, e.stale_if_error) == (120, 30)
    assert entry(200, ("CDN-Cache-Control", "max-age=60"), ("Cache-Control", "no-store")).ttl == 60
    # an invalid targeted field is ignored: the next one, then Cache-Control decide
    e = entry(200, ("Gatewayd-Cache-Control", "max-age=1,"), ("CDN-Cache-Control", "max-age=7"))
    assert e.ttl == 7
    assert entry(200, ("CDN-Cache-Control", "Max-Age=60"), ("Cache-Control", "max-age=3")).ttl == 3
    # a targeted max-age that is not an Integer is stale, not absent
    assert entry(200, ("CDN-Cache-Control", "max-age=abc"), ("Cache-Control", "max-age=9")).ttl == 0


def test_stripped_fields_are_not_stored():
    e = entry(200, ("Gatewayd-Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=1"))
    assert e is not None and e.ttl == 5
    assert [k for k, _ in e.headers if "cache-control" in k.lower()] == ["CDN-Cache-Control"]


@pytest.mark.parametrize(
    ("expires", "ttl"),
    [
        (["Tue, 01 Dec 2026 13:00:00 GMT"], 3600),
        (["Tuesday, 01-Dec-26 13:00:00 GMT"], 3600),
        (["Tue Dec  1 13:00:00 2026"], 3600),
        (["Tue, 01 Dec 2026 13:00:00 UTC"], 0),
        (["Tue, 01 Dec 2026 13.00.00 GMT"], 0),
        (["0", "Tue, 01 Dec 2026 13:00:00 GMT"], 0),
        (["Tue, 01 Dec 2026 13:00:00 GMT", "0"], 3600),
        (["Tue, 01 Dec 2026 11:00:00 GMT"], 0),
    ],
)
def test_expires_minus_date(expires, ttl):
    e = entry(200, *(("Expires", v) for v in expires))
    assert e is not None and e.ttl == ttl


def test_age_the_first_member_and_the_apparent_age():
    assert entry(200, ("Cache-Control", "max-age=60"), ("Age", "7200, 0")).initial_age == 7200
    assert entry(200, ("Cache-Control", "max-age=60"), ("Age", "junk")).initial_age == 0
    older = make_entry(200, h(("Date", "Tue, 01 Dec 2026 11:59:00 GMT")), b"", POLICY, False, NOW)
    assert older is None  # nothing says how long: not stored
    e = make_entry(
        200,
        h(("Date", "Tue, 01 Dec 2026 11:59:00 GMT"), ("Cache-Control", "max-age=600")),
        b"",
        POLICY,
        False,
        NOW,
        request_time=NOW - 2,
    )
    assert e.initial_age == 60  # apparent age from Date beats Age 0 + 2 s of delay
    assert initial_age(h(("Age", "10")), NOW, NOW - 2) == 12  # corrected: Age + delay


def test_vary_over_lines():
    assert entry(200, ("Cache-Control", "max-age=60"), ("Vary", ""), ("Vary", "*")) is None
    e = entry(200, ("Cache-Control", "max-age=60"), ("Vary", "B"), ("Vary", "a"))
    assert e.vary == ("a", "b")


def test_refresh_replaces_every_line_of_the_fields_a_304_carries():
    e = entry(200, ("Cache-Control", "max-age=1"), ("Cache-Control", "must-revalidate"), ("X", "1"))
    fresh = refresh(e, h(("Cache-Control", "max-age=100"), ("Cache-Control", "public")), POLICY)
    assert fresh.ttl == 100 and not fresh.must_revalidate
    assert [v for k, v in fresh.headers if k == "Cache-Control"] == ["max-age=100", "public"]
    assert ("X", "1") in fresh.headers


def test_conditionals():
    e = entry(
        200,
        ("Cache-Control", "max-age=60"),
        ("ETag", '"v1"'),
        ("Last-Modified", "Tue, 01 Dec 2026 11:00:00 GMT"),
    )
    assert not_modified(e, h(("If-None-Match", 'W/"v0", W/"v1"')))
    assert not_modified(e, h(("If-Modified-Since", "Tue, 01 Dec 2026 11:00:00 GMT")))
    assert not not_modified(e, h(("If-Modified-Since", "Tue, 01 Dec 2026 10:59:59 GMT")))
    two = h(("If-Modified-Since", DATE), ("If-Modified-Since", DATE))
    assert not not_modified(e, two)  # more than one member: ignored
    assert not not_modified(e, h(("If-Modified-Since", "Tue, 01 Dec 2026 13:00:00 UTC")))
    assert if_range_matches(e, '"v1"') and not if_range_matches(e, 'W/"v1"')
    assert if_range_matches(e, "Tue, 01 Dec 2026 11:00:00 GMT")
    assert not if_range_matches(e, "Tue, 01 Dec 2026 11:00:01 GMT")
    # a Last-Modified equal to Date is weak: a date If-Range does not match it
    weak = entry(200, ("Cache-Control", "max-age=60"), ("Last-Modified", DATE))
    assert not if_range_matches(weak, DATE)


def test_invalidated_targets_on_the_same_host_only():
    base, host = "http://api.example:8080/v1/items", "api.example:8080"
    headers = h(
        ("Location", "7?x=1"),  # relative to /v1/items
        ("Content-Location", "http://API.example:8080/v1/other"),
        ("Content-Location", "https://elsewhere.example/v1/x"),
        ("Location", "http://api.example/v1/no-port"),  # another authority
        ("Location", "http://[::1"),  # not a URI
    )
    got = invalidated("/v1/items", base, host, headers)
    assert got == ["/v1/items", "/v1/7?x=1", "/v1/other"]


# -- properties ------------------------------------------------------------------------------

values = st.text() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF))
lines = st.lists(values, max_size=3)
FIELDS = ("Cache-Control", "CDN-Cache-Control", "Expires", "Date", "Age", "Vary", "ETag",
          "Last-Modified", "Gatewayd-Cache-Control")  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=8), st.integers(100, 599))
def test_any_headers_give_an_entry_or_none(pairs, status):
    e = make_entry(status, h(*pairs), b"body", POLICY, False, NOW)
    if e is not None:
        assert e.ttl >= 0 and e.initial_age >= 0


@given(lines)
def test_an_invalid_expires_is_already_expired(expires):
    headers = h(("Date", DATE), *(("Expires", v) for v in expires))
    ttl = freshness({}, headers, NOW, True)
    if not expires:
        assert ttl is None
    elif parse_http_date(expires[0], NOW) is None:
        assert ttl == 0
    else:
        assert ttl == max(0.0, parse_http_date(expires[0], NOW) - NOW)


@given(lines)
def test_an_invalid_age_never_lowers_the_age(ages):
    base = h(("Date", "Tue, 01 Dec 2026 11:59:00 GMT"))
    without = initial_age(base, NOW)
    with_ages = initial_age(h(*base.items(), *(("Age", v) for v in ages)), NOW)
    assert with_ages >= without
