"""The error a bad configuration produces: a list of problems, each with the path of its field."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

# Tags of the union in GatewayConfig.upstreams (see gatewayd.config.schema._upstream_kind).
UPSTREAM_KIND_TAGS = frozenset({"http", "relay", "extension", "none"})


def format_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more problems in a configuration, each naming the field's path."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.describe())

    def describe(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return head + str(self.problems[0])
        lines = [f"{head}{len(self.problems)} problems:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    @classmethod
    def single(cls, path: str, message: str) -> ConfigError:
        return cls([Problem(path, message)])


def problems_from_validation(
    exc: ValidationError, prefix: Sequence[str | int] = ()
) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        if len(loc) >= 3 and loc[0] == "upstreams" and loc[2] in UPSTREAM_KIND_TAGS:
            del loc[2]  # the tag of the upstream kind the entry was read as: not a field
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(Problem(format_path([*prefix, *loc]), msg))
    return problems
