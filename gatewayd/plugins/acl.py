"""``acl``: allow and deny rules over the principal an auth plugin established.

Rules are ``key:<glob>``, ``tenant:<glob>``, ``sub:<glob>``, ``role:<glob>``, ``scope:<glob>``
(``fnmatch`` globs, case-sensitive). Deny wins: a matching deny rule is 403. With allow rules, a
principal must match one of them (else 403); without, everything not denied passes. A request
with no principal (no auth plugin before this one, or an ``optional`` one that found nothing)
is 401 unless ``allow_anonymous`` is set (then only rules are checked, and none can match).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import field_validator

from gatewayd.chain import (
    Plugin,
    PluginConfig,
    PluginContext,
    Principal,
    RequestContext,
    Response,
)

KINDS = ("key", "tenant", "sub", "role", "scope")


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        kind, sep, pattern = text.partition(":")
        if not sep or kind not in KINDS or not pattern:
            raise ValueError(
                f"invalid rule {text!r} (expected one of {', '.join(k + ':<glob>' for k in KINDS)})"
            )
        return cls(kind, pattern)

    def matches(self, p: Principal) -> bool:
        if self.kind == "key":
            values: tuple[str | None, ...] | frozenset[str] = (p.key_id,)
        elif self.kind == "tenant":
            values = (p.tenant,)
        elif self.kind == "sub":
            values = (p.subject,)
        elif self.kind == "role":
            values = p.roles
        else:
            values = p.scopes
        return any(v is not None and fnmatchcase(v, self.pattern) for v in values)


def _rules(value: list[str]) -> list[str]:
    for text in value:
        Rule.parse(text)
    return value


class AclConfig(PluginConfig):
    allow: list[str] = []
    deny: list[str] = []
    allow_anonymous: bool = False

    @field_validator("allow", "deny")
    @classmethod
    def _check(cls, v: list[str]) -> list[str]:
        return _rules(v)


class AclPlugin(Plugin):
    name = "acl"
    Config = AclConfig
    priority = 950  # after authentication (key_auth 1250, jwt_auth 1450)

    def __init__(self, config: AclConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.allow = [Rule.parse(r) for r in config.allow]
        self.deny = [Rule.parse(r) for r in config.deny]

    def on_request(self, ctx: RequestContext) -> Response | None:
        p = ctx.principal
        if p is None:
            if self.config.allow_anonymous and not self.allow:
                return None
            return ctx.error_response(
                401,
                "unauthorized",
                "authentication is required",
                {"WWW-Authenticate": 'Bearer realm="gatewayd"'},
            )
        if any(r.matches(p) for r in self.deny):
            return ctx.error_response(403, "forbidden", "access denied")
        if self.allow and not any(r.matches(p) for r in self.allow):
            return ctx.error_response(403, "forbidden", "access denied")
        return None
