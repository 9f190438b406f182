"""The caching header fields, read from every field line (RFC 9110 5.3: several lines of one
field are one comma-separated list): ``Cache-Control``, the targeted fields of RFC 9213
(``CDN-Cache-Control``: a Structured Fields Dictionary, RFC 8941), ``Age`` and ``Vary``.

A value that is not valid is never read as fresher than a valid one: an invalid or repeated,
conflicting delta-seconds argument (``max-age=abc``, ``max-age=60, max-age=10``) reads as
stale; an invalid ``Age`` is ignored (the age then comes from ``Date`` and the clock)."""

from __future__ import annotations

import re
from collections.abc import Iterable

Directives = dict[str, str | None]

INVALID = "\x00invalid"  # the argument of a directive whose value cannot be used
MAX_DELTA = 2**31  # RFC 9111 1.2.2: larger values (and overflows) are 2^31
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(r"[0-9]+")


def split_list(values: Iterable[str]) -> list[str]:
    """The members of a comma-separated list over several field lines; commas inside
    quoted strings do not split; empty members are dropped (RFC 9110 5.6.1)."""
    out: list[str] = []
    for value in values:
        start = 0
        quoted = escaped = False
        for i, c in enumerate(value):
            if escaped:
                escaped = False
            elif quoted:
                if c == "\\":
                    escaped = True
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == ",":
                out.append(value[start:i])
                start = i + 1
        out.append(value[start:])
    return [m for m in (x.strip(" \t") for x in out) if m]


def _unquote(arg: str) -> str | None:
    """A token or quoted-string argument's value; None when it is neither."""
    if _TOKEN.fullmatch(arg):
        return arg
    if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
        inner, out, i = arg[1:-1], [], 0
        while i < len(inner):
            c = inner[i]
            if c == '"':
                return None
            if c == "\\":
                i += 1
                if i == len(inner):
                    return None
                c = inner[i]
            out.append(c)
            i += 1
        return "".join(out)
    return None


def parse_cache_control(values: Iterable[str]) -> Directives:
    """``Cache-Control`` over all its lines -> {directive (lower case): argument or None}.

    Members that are not ``token [= token / quoted-string]`` are ignored. A directive given
    twice keeps its first argument; given twice with different arguments its argument is
    :data:`INVALID` (RFC 9111 4.2.1: use the first or consider the response stale; stale is
    the choice that is never fresher)."""
    out: Directives = {}
    for member in split_list(values):
        name, eq, arg = member.partition("=")
        name = name.strip(" \t").lower()
        if not _TOKEN.fullmatch(name):
            continue
        value: str | None = None
        if eq:
            value = _unquote(arg.strip(" \t"))
            if value is None:
                value = INVALID
        if name in out and out[name] != value:
            out[name] = INVALID
        else:
            out.setdefault(name, value)
    return out


def delta_seconds(arg: str | None) -> float | None:
    """``1*DIGIT`` (capped at 2^31) -> seconds; None when not valid."""
    if arg is None or not _DIGITS.fullmatch(arg):
        return None
    return float(min(int(arg), MAX_DELTA)) if len(arg) < 12 else float(MAX_DELTA)


def seconds(cc: Directives, name: str) -> float | None:
    """The delta-seconds argument of directive ``name``: None when absent, 0 (stale) when
    present but not valid (RFC 9111 1.2.2, 5.2.2.1)."""
    if name not in cc:
        return None
    value = delta_seconds(cc[name])
    return 0.0 if value is None else value


def age_value(values: list[str]) -> float | None:
    """``Age`` (RFC 9111 5.1): the first member of the list counts (``Age: 7200, 0`` is 7200);
    None when absent or when that member is not a non-negative integer (the field is then
    ignored)."""
    members = split_list(values)
    return delta_seconds(members[0]) if members else None


def vary_names(values: list[str]) -> tuple[str, ...] | None:
    """The sorted lower-case field names of ``Vary`` over all its lines; None for ``*``
    anywhere (never storable); a member that is not a field name (a token) is as ``*``."""
    names: set[str] = set()
    for member in split_list(values):
        if member == "*" or not _TOKEN.fullmatch(member):
            return None
        names.add(member.lower())
    return tuple(sorted(names))


# -- Structured Fields Dictionary (RFC 8941 4.2.2), for the targeted fields ----------------------

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")


class _SFError(ValueError):
    pass


class _Parser:
    """Just enough of RFC 8941 to read a Dictionary: keys, bare items, inner lists, parameters.
    A directive's value becomes what ``parse_cache_control`` gives: a string, None for
    Boolean true; Boolean false drops the member; a negative or non-integer number, a byte
    sequence or an inner list becomes :data:`INVALID` (RFC 9213 2.2 gives each directive the
    type it has in Cache-Control)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def spaces(self, tabs: bool = False) -> None:
        while self.peek() == " " or (tabs and self.peek() == "\t"):
            self.i += 1

    def match(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.s, self.i)
        if m is None:
            raise _SFError(self.i)
        self.i = m.end()
        return m.group()

    def bare_item(self) -> str | bool:
        c = self.peek()
        if c == '"':
            return self.string()
        if c == "?":
            flag = self.s[self.i : self.i + 2]
            if flag not in ("?0", "?1"):
                raise _SFError(self.i)
            self.i += 2
            return flag == "?1"
        if c == ":":
            self.match(_BYTES)
            return INVALID
        if c == "-" or c.isdigit():
            number = self.match(_NUMBER)
            if "." in number and len(number.split(".")[0].lstrip("-")) > 12:
                raise _SFError(self.i)
            return number if _DIGITS.fullmatch(number) else INVALID
        return self.match(_SF_TOKEN)

    def string(self) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            c = self.peek()
            if c == "":
                raise _SFError(self.i)
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                c = self.peek()
                if c not in ('"', "\\"):
                    raise _SFError(self.i)
                self.i += 1
            elif not " " <= c <= "~":
                raise _SFError(self.i)
            out.append(c)

    def parameters(self) -> None:
        while self.peek() == ";":
            self.i += 1
            self.spaces()
            self.match(_KEY)
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def item_or_inner_list(self) -> str | bool:
        if self.peek() != "(":
            value = self.bare_item()
            self.parameters()
            return value
        self.i += 1
        while True:
            self.spaces()
            if self.peek() == ")":
                self.i += 1
                self.parameters()
                return INVALID
            self.bare_item()
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise _SFError(self.i)

    def dictionary(self) -> Directives:
        out: Directives = {}
        self.spaces()
        while self.i < len(self.s):
            key = self.match(_KEY)
            value: str | bool = True
            if self.peek() == "=":
                self.i += 1
                value = self.item_or_inner_list()
            else:
                self.parameters()
            out.pop(key, None)  # a repeated key: the last one counts (RFC 8941 4.2.2)
            if value is True:
                out[key] = None
            elif value is not False:
                out[key] = value
            self.spaces(tabs=True)
            if self.i == len(self.s):
                return out
            if self.peek() != ",":
                raise _SFError(self.i)
            self.i += 1
            self.spaces(tabs=True)
            if self.i == len(self.s):
                raise _SFError(self.i)  # a trailing comma
        return out


def parse_targeted(values: list[str]) -> Directives | None:
    """A targeted field (RFC 9213: ``CDN-Cache-Control``) over all its lines, as directives;
    None when it is absent, empty or not a valid Dictionary (the cache then ignores it)."""
    lines = [v for v in values if v.strip(" \t")]
    if not lines:
        return None
    try:
        out = _Parser(", ".join(lines)).dictionary()
    except _SFError:
        return None
    return out or None
