"""Secrets out of log lines: what the ``process`` kind logs of a command line and of stderr.

:func:`mask` replaces the values it is given (the upstream's ``env``: they may be credentials)
and anything that looks like one: well-known key prefixes (``sk-``, ``ghp_``, ``hf_``, ``xoxb-``,
``AKIA``...), ``<name>=<value>`` where the name ends in key, token, secret, password, auth or
credential(s), and ``Bearer``/``Basic`` credentials. :func:`mask_argv` also hides the argument
after a flag with such a name (``--api-key VALUE``). It errs on the side of masking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MASK", "mask", "mask_argv"]

MASK = "***"
_KEYLIKE = re.compile(
    r"\b(?:sk|pk|rk|ghp|gho|ghs|glpat|xox[abprs]|hf)[-_][A-Za-z0-9_-]{8,}|\bAKIA[A-Z0-9]{12,}"
)
_SECRET_WORD = r"(?:[a-z0-9]+[-_.])*(?:key|token|secret|passw(?:or)?d|auth|credentials?)"
_ASSIGNED = re.compile(rf"(?i)\b({_SECRET_WORD}\s*[=:]\s*)([^\s&,;]+)")
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;]+")
_SECRET_FLAG = re.compile(rf"(?i)^--?{_SECRET_WORD}$")  # its value is the next argument


def mask(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with ``secrets`` and anything that looks like a credential replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _KEYLIKE.sub(MASK, text)
    text = _ASSIGNED.sub(lambda m: m.group(1) + MASK, text)
    return _SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", text)


def mask_argv(argv: Sequence[str], secrets: Sequence[str] = ()) -> list[str]:
    """An argv for the log: each argument masked, and the one after ``--api-key`` and the like
    replaced whole."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        out.append(MASK if hide_next else mask(arg, secrets))
        hide_next = bool(_SECRET_FLAG.match(arg))
    return out
