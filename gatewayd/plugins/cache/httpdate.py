"""HTTP-date (RFC 9110 5.6.7), read strictly.

Three forms are accepted, exactly as the grammar writes them (names are case-sensitive, single
spaces, two-digit hours, ``GMT`` only)::

    Sun, 06 Nov 1994 08:49:37 GMT     IMF-fixdate (the one senders must use)
    Sunday, 06-Nov-94 08:49:37 GMT    obsolete rfc850-date (two-digit year)
    Sun Nov  6 08:49:37 1994          obsolete asctime-date (day: two digits or space + digit)

Anything else (``UTC``/``+0000`` zones, one-digit hours, missing comma, extra spaces, dashes in
an IMF-fixdate, ``0``, ``-1``) is not a date: :func:`parse_http_date` answers None and the caller
decides what that means (an invalid ``Expires`` is already expired). Hours 00-23, minutes
00-59, seconds 00-60 (a leap second), and a day that exists in its month. The day name is not
checked against the date (the grammar does not ask a recipient to). Leading and trailing
whitespace around a field value is not part of it (RFC 9110 5.5) and is dropped first.
"""

from __future__ import annotations

import re
import time

_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_L = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MON = "(" + "|".join(_MONTHS) + ")"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
# [0-9], not \d: \d also matches other scripts' digits.
_IMF = re.compile(_DAY + ", ([0-9]{2}) " + _MON + " ([0-9]{4}) " + _TIME + " GMT")
_RFC850 = re.compile(_DAY_L + ", ([0-9]{2})-" + _MON + "-([0-9]{2}) " + _TIME + " GMT")
_ASCTIME = re.compile(_DAY + " " + _MON + " ([0-9]{2}| [0-9]) " + _TIME + " ([0-9]{4})")
_DAYS_IN = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, 0000 included)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _valid(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> bool:
    days = 29 if month == 2 and _leap(year) else _DAYS_IN[month - 1]
    return 1 <= day <= days and hh <= 23 and mm <= 59 and ss <= 60


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float:
    return float(_days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss)


def _rfc850_year(yy: int, month: int, day: int, clock: tuple[int, ...], now: float) -> int:
    """RFC 9110 5.6.7: a two-digit year that would be more than 50 years in the future is
    the most recent past year with the same last two digits; otherwise the latest such year."""
    current = time.gmtime(now)
    limit = (current.tm_year + 50, current.tm_mon, current.tm_mday, *current[3:6])
    year = (current.tm_year // 100 + 1) * 100 + yy
    while (year, month, day, *clock) > limit:
        year -= 100
    return year


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """The POSIX timestamp of an HTTP-date, or None when ``value`` is not one. ``now`` (default:
    the clock) places an rfc850-date's two-digit year."""
    if value is None:
        return None
    text = value.strip(" \t")
    m = _IMF.fullmatch(text)
    if m is not None:
        day, month, year = int(m[1]), _MONTHS.index(m[2]) + 1, int(m[3])
        hh, mm, ss = int(m[4]), int(m[5]), int(m[6])
    else:
        m = _RFC850.fullmatch(text)
        if m is not None:
            day, month = int(m[1]), _MONTHS.index(m[2]) + 1
            hh, mm, ss = int(m[4]), int(m[5]), int(m[6])
            clock = (hh, mm, ss)
            year = _rfc850_year(int(m[3]), month, day, clock, time.time() if now is None else now)
        else:
            m = _ASCTIME.fullmatch(text)
            if m is None:
                return None
            month, day = _MONTHS.index(m[1]) + 1, int(m[2].lstrip(" "))
            hh, mm, ss, year = int(m[3]), int(m[4]), int(m[5]), int(m[6])
    if not _valid(year, month, day, hh, mm, ss):
        return None
    return _timestamp(year, month, day, hh, mm, ss)


def first_date(values: list[str], now: float | None = None) -> float | None:
    """The date of the first of several field lines (two ``Expires`` lines: the first counts,
    RFC 9111 4.2.1); None when there is none or it is invalid."""
    return parse_http_date(values[0], now) if values else None
