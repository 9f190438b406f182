"""gatewayd/plugins/cache/fields.py: Cache-Control, targeted fields, Age, Vary over all lines."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gatewayd.plugins.cache.fields import (
    INVALID,
    MAX_DELTA,
    age_value,
    delta_seconds,
    parse_cache_control,
    parse_targeted,
    seconds,
    split_list,
    vary_names,
)

# Header values as they can arrive: any text, and the latin-1 range an HTTP parser hands over.
values = st.text() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF))
lines = st.lists(values, max_size=4)


def test_split_list_respects_quoted_strings_and_drops_empty_members():
    assert split_list(['a, "b, c", d', "", " , e "]) == ["a", '"b, c"', "d", "e"]
    assert split_list(['"x\\", y", z']) == ['"x\\", y"', "z"]


def test_cache_control_lines_are_one_list():
    cc = parse_cache_control(["max-age=3600", "s-maxage=1"])
    assert cc == {"max-age": "3600", "s-maxage": "1"}


def test_cache_control_arguments_tokens_and_quoted_strings():
    cc = parse_cache_control(['no-cache="Set-Cookie, X-A", Max-Age="60", public, x=a b'])
    assert cc == {"no-cache": "Set-Cookie, X-A", "max-age": "60", "public": None, "x": INVALID}
    assert seconds(cc, "max-age") == 60


@pytest.mark.parametrize(
    ("lines", "max_age"),
    [
        (["max-age=60", "max-age=60"], 60),  # the same twice: fine
        (["max-age=60", "max-age=10"], 0),  # conflicting: stale
        (["max-age=60, max-age=abc"], 0),
        (["max-age=abc"], 0),
        (["max-age=-1"], 0),
        (["max-age=1.5"], 0),
        (["max-age="], 0),
        (["max-age"], 0),
        (["max-age=99999999999999999999"], MAX_DELTA),
        ([], None),
    ],
)
def test_invalid_delta_seconds_mean_stale(lines, max_age):
    assert seconds(parse_cache_control(lines), "max-age") == max_age


def test_delta_seconds():
    assert delta_seconds("0") == 0 and delta_seconds("2147483648") == MAX_DELTA
    assert delta_seconds("\u0661") is None and delta_seconds("+1") is None


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        (["7200, 0"], 7200),
        (["7200", "0"], 7200),
        (["0", "7200"], 0),  # the first member counts
        (["", "30"], 30),  # an empty line is no member
        (["abc"], None),
        (["-5"], None),
        (["1.5"], None),
        ([], None),
    ],
)
def test_age_first_member(lines, age):
    assert age_value(lines) == age


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        (["Accept-Language", "x-tenant, Accept-Encoding"], ("accept-encoding", "accept-language",
                                                            "x-tenant")),
        (["", "*"], None),
        (["Accept, *"], None),
        (["Accept", ""], ("accept",)),
        (['"Accept"'], None),  # not a field name
        ([], ()),
    ],
)  # fmt: skip
def test_vary_lines_are_one_list(lines, names):
    assert vary_names(lines) == names


@pytest.mark.parametrize(
    ("lines", "directives"),
    [
        (["max-age=60"], {"max-age": "60"}),
        (["max-age=60, no-store"], {"max-age": "60", "no-store": None}),
        (["max-age=60", "stale-if-error=30"], {"max-age": "60", "stale-if-error": "30"}),
        (["no-store=?1, public=?0"], {"no-store": None}),  # false: absent
        (['private="set-cookie"'], {"private": "set-cookie"}),
        (["max-age=60;a=1, s-maxage=5"], {"max-age": "60", "s-maxage": "5"}),  # params ignored
        (["max-age=60, max-age=10"], {"max-age": "10"}),  # a repeated key: the last one
        (["max-age=-1"], {"max-age": INVALID}),
        (["max-age=1.5"], {"max-age": INVALID}),
        (["max-age=abc"], {"max-age": "abc"}),  # a token: not an Integer, so stale below
        (["max-age=(1 2)"], {"max-age": INVALID}),
        (["", "max-age=60"], {"max-age": "60"}),
        # not a Dictionary: ignored
        (["max-age=60,"], None),
        (["Max-Age=60"], None),  # keys are lower case
        (['a="unterminated'], None),
        (["max-age=60 no-store"], None),
        (["max-age==60"], None),
        ([""], None),
        ([], None),
    ],
)
def test_targeted_fields_are_sf_dictionaries(lines, directives):
    assert parse_targeted(lines) == directives


# -- properties: any value gives an answer, and an invalid one is never fresher ---------------


@given(lines)
def test_any_cache_control_gives_directives(value):
    cc = parse_cache_control(value)
    for name in ("max-age", "s-maxage", "stale-if-error"):
        got = seconds(cc, name)
        assert got is None or 0 <= got <= MAX_DELTA


@given(lines)
def test_any_targeted_field_gives_directives_or_none(value):
    got = parse_targeted(value)
    assert got is None or (isinstance(got, dict) and got)


@given(values)
def test_an_invalid_max_age_is_stale(arg):
    assume(not re.fullmatch("[0-9]+", arg.strip(" \t")) and '"' not in arg and "," not in arg)
    cc = parse_cache_control([f"max-age={arg}"])
    assert seconds(cc, "max-age") == 0


@given(lines)
def test_more_lines_never_make_a_valid_max_age_fresher(extra):
    cc = parse_cache_control(["max-age=60", *extra])
    assert seconds(cc, "max-age") <= 60


@given(lines)
def test_any_age_is_none_or_a_delta(value):
    got = age_value(value)
    assert got is None or 0 <= got <= MAX_DELTA


@given(st.integers(0, 10**12), lines)
def test_a_valid_first_age_is_never_lowered_by_what_follows(age, extra):
    assert age_value([f"{age}", *extra]) == min(age, MAX_DELTA)


@given(lines)
def test_any_vary_is_names_or_never_storable(value):
    got = vary_names(value)
    if any(m == "*" for m in split_list(value)):
        assert got is None
    assert got is None or all(n == n.lower() and n for n in got)
