"""gatewayd/plugins/cache/ranges.py: one byte range out of a stored body (RFC 9110 14)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.plugins.cache.ranges import UNSATISFIABLE, byte_range


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=7-", 10, (7, 9)),
        ("bytes=8-100", 10, (8, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("Bytes=2-5", 10, (2, 5)),  # the unit is case-insensitive
        (" bytes=2-5 ", 10, (2, 5)),
        ("bytes=2-5, ", 10, (2, 5)),  # an empty list member
        ("bytes=10-", 10, UNSATISFIABLE),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=-5", 0, UNSATISFIABLE),
        ("bytes=0-1,4-5", 10, None),  # several: the whole body
        ("bytes=5-2", 10, None),  # invalid
        ("bytes=-", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1 - 2", 10, None),
        ("bytes=", 10, None),
        ("bytes 0-1", 10, None),
        ("items=0-1", 10, None),
        ("", 10, None),
    ],
)
def test_byte_range(value, length, expected):
    assert byte_range(value, length) == expected


@given(st.text(), st.integers(0, 10**6))
def test_any_range_header_gives_a_span_inside_the_body_or_none(value, length):
    got = byte_range(value, length)
    if isinstance(got, tuple):
        first, last = got
        assert 0 <= first <= last < length
