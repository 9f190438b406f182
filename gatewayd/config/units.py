"""Human-readable durations, rates, sizes and ratios, as pydantic-ready annotated types.

Durations: ``250ms``, ``2s``, ``5m``, ``1h``, ``1d`` (a bare number is seconds).
Rates: ``100/s``, ``6000/min``, ``1000/day`` (periods ``s``, ``m``/``min``, ``h``/``hour``,
``d``/``day``, optionally with a multiplier: ``10/5min``).
Sizes: ``64KiB``, ``10MiB``, ``1GiB``, ``500KB`` (a bare number is bytes).
Ratios: ``20%`` or ``0.2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([a-z]+)\s*$", re.IGNORECASE)
_RATE_PERIODS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``250ms``/``2s``/``5m``/``1h``/``1d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 2s, 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r} (expected e.g. 250ms, 2s, 5m, 1h)")


def parse_size(value: Any) -> int:
    """Bytes from ``64KiB``/``10MiB``/``1GB`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "b").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"invalid size {value!r} (expected e.g. 64KiB, 10MiB, 1GiB)")


def parse_ratio(value: Any) -> float:
    """A fraction in [0, 1] from ``20%`` or ``0.2``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"invalid ratio {value!r} (expected e.g. 20% or 0.2)") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError(f"invalid ratio {value!r} (expected a value between 0% and 100%)")


@dataclass(frozen=True, slots=True)
class RateValue:
    """``count`` events per ``period`` seconds."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        for name, secs in (("day", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.period == secs:
                return f"{self.count:g}/{name}"
        return f"{self.count:g}/{self.period:g}s"


def parse_rate(value: Any) -> RateValue:
    if isinstance(value, RateValue):
        return value
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m and m.group(3).lower() in _RATE_PERIODS:
            count = float(m.group(1))
            mult = float(m.group(2)) if m.group(2) else 1.0
            period = mult * _RATE_PERIODS[m.group(3).lower()]
            if count > 0 and period > 0:
                return RateValue(count, period)
    raise ValueError(f"invalid rate {value!r} (expected e.g. 100/s, 6000/min, 1000/day)")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": ["string", "number"], "examples": ["250ms", "2s", "5m"]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"], "examples": ["64KiB", "10MiB"]}),
]
Ratio = Annotated[
    float,
    BeforeValidator(parse_ratio),
    WithJsonSchema({"type": ["string", "number"], "examples": ["20%", 0.2]}),
]
Rate = Annotated[
    RateValue,
    BeforeValidator(parse_rate),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["100/s", "6000/min", "1000/day"]}),
]
