"""gatewayd/plugins/cache/httpdate.py: HTTP-date exactly as RFC 9110 5.6.7 writes it."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.plugins.cache.httpdate import first_date, parse_http_date

T = calendar.timegm((1994, 11, 6, 8, 49, 37))
NOW = calendar.timegm((2026, 12, 1, 12, 0, 0))


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # rfc850-date
        "Sun Nov  6 08:49:37 1994",  # asctime-date, day as SP DIGIT
        "Sun Nov 06 08:49:37 1994",  # asctime-date, day as 2DIGIT
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",  # OWS around a field value is not part of it
        "Mon, 06 Nov 1994 08:49:37 GMT",  # the day name is not checked against the date
    ],
)
def test_the_three_forms(value):
    assert parse_http_date(value, NOW) == T


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08.49.37 GMT",  # time separators
        "Sun, 06 Nov 1994 8:49:37 GMT",  # one-digit hour
        "Sun, 06 Nov 94 08:49:37 GMT",  # two-digit year in an IMF-fixdate
        "Sun 06 Nov 1994 08:49:37 GMT",  # no comma
        "Sun,  06 Nov 1994 08:49:37 GMT",  # two spaces
        "Sun, 06 Nov 1994  08:49:37 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes in an IMF-fixdate
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 AEST",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37",
        "sun, 06 nov 1994 08:49:37 gmt",  # case-sensitive
        "Sunday, 06 Nov 1994 08:49:37 GMT",  # a long day name in an IMF-fixdate
        "Sun, 06-Nov-94 08:49:37 GMT",  # a short day name in an rfc850-date
        "Sunday, 06-Nov-1994 08:49:37 GMT",  # four-digit year in an rfc850-date
        "Sun Nov 6 08:49:37 1994",  # asctime needs two characters for the day
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",  # no such day
        "Sun, 29 Feb 1900 08:49:37 GMT",  # not a leap year
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits are not DIGIT
        "0",
        "-1",
        "",
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
    ],
)
def test_everything_else_is_not_a_date(value):
    assert parse_http_date(value, NOW) is None


def test_calendar_edges():
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == calendar.timegm(
        (2000, 2, 29, 0, 0, 0)
    )
    assert parse_http_date("Wed, 31 Dec 2098 23:59:60 GMT") == calendar.timegm(
        (2099, 1, 1, 0, 0, 0)
    )  # a leap second
    assert parse_http_date("Sat, 01 Jan 0000 00:00:00 GMT") == -62167219200.0


@pytest.mark.parametrize(
    ("yy", "year"),
    [("26", 2026), ("76", 2076), ("77", 1977), ("99", 1999), ("00", 2000), ("75", 2075)],
)
def test_rfc850_years_more_than_50_years_ahead_are_in_the_past(yy, year):
    """On 2026-12-01: 2076-11-06 is within 50 years, 2077 is not (so 1977)."""
    got = parse_http_date(f"Friday, 06-Nov-{yy} 08:49:37 GMT", NOW)
    assert got == calendar.timegm((year, 11, 6, 8, 49, 37))


def test_rfc850_boundary_is_exact():
    # 50 years ahead to the second is not "more than 50 years": kept in the future
    assert parse_http_date("Tuesday, 01-Dec-76 12:00:00 GMT", NOW) == calendar.timegm(
        (2076, 12, 1, 12, 0, 0)
    )
    assert parse_http_date("Tuesday, 01-Dec-76 12:00:01 GMT", NOW) == calendar.timegm(
        (1976, 12, 1, 12, 0, 1)
    )
    # late in a century, a small two-digit year is the next century's
    late = calendar.timegm((2099, 6, 1, 0, 0, 0))
    assert parse_http_date("Monday, 01-Jan-00 00:00:00 GMT", late) == calendar.timegm(
        (2100, 1, 1, 0, 0, 0)
    )


def test_first_of_several_lines():
    assert first_date(["0", "Sun, 06 Nov 1994 08:49:37 GMT"]) is None
    assert first_date(["Sun, 06 Nov 1994 08:49:37 GMT", "0"]) == T
    assert first_date([]) is None


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
moments = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))


@given(moments)
def test_any_imf_fixdate_and_asctime_round_trip(t):
    ts = calendar.timegm(t.timetuple())
    d, m = DAYS[t.weekday()], MONTHS[t.month - 1]
    imf = f"{d}, {t.day:02d} {m} {t.year:04d} {t:%H:%M:%S} GMT"
    asctime = f"{d} {m} {t.day:2d} {t:%H:%M:%S} {t.year:04d}"
    assert parse_http_date(imf) == ts
    assert parse_http_date(asctime) == ts


@given(st.datetimes(min_value=dt.datetime(1977, 1, 1), max_value=dt.datetime(2076, 12, 1)))
def test_any_rfc850_date_within_the_window_round_trips(t):
    d, m = LONG_DAYS[t.weekday()], MONTHS[t.month - 1]
    value = f"{d}, {t.day:02d}-{m}-{t.year % 100:02d} {t:%H:%M:%S} GMT"
    assert parse_http_date(value, NOW) == calendar.timegm(t.timetuple())


@given(st.text() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF)))
def test_any_text_is_a_date_or_none(value):
    got = parse_http_date(value, NOW)
    assert got is None or isinstance(got, float)
