"""Discovery of plugins (entry-point group ``gatewayd.plugins``) and of upstream kinds that plugin
distributions add (``gatewayd.upstreams``)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ValidationError

from gatewayd.chain.api import PHASES
from gatewayd.config.errors import Problem, problems_from_validation
from gatewayd.config.schema import ExtensionUpstreamConfig, PluginSpec, UpstreamConfig

GROUP = "gatewayd.plugins"
KIND_GROUP = "gatewayd.upstreams"
BUILTIN_KINDS = frozenset({"http", "relay"})
KIND_METHODS = ("targets", "send", "upgrade", "start", "close")
log = logging.getLogger("gatewayd.chain")


class PluginLoadError(Exception):
    """A plugin's entry point could not be loaded or does not look like a plugin."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"plugin '{name}': {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PluginType:
    name: str
    cls: type[Any]
    config_model: type[BaseModel]
    priority: int
    distribution: str


def inspect_plugin(name: str, cls: Any, distribution: str = "") -> PluginType:
    if not isinstance(cls, type):
        raise PluginLoadError(name, f"entry point is {type(cls).__name__}, expected a class")
    if not any(callable(getattr(cls, p, None)) for p in PHASES):
        raise PluginLoadError(name, "defines none of the phases " + ", ".join(PHASES))
    model = getattr(cls, "Config", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PluginLoadError(name, "Config must be a pydantic model class")
    priority = getattr(cls, "priority", 1000)
    if not isinstance(priority, int):
        raise PluginLoadError(name, "priority must be an int")
    return PluginType(name, cls, model, priority, distribution)


@dataclass(frozen=True, slots=True)
class UpstreamKindType:
    name: str
    cls: type[Any]
    config_model: type[UpstreamConfig]
    distribution: str


def inspect_kind(name: str, cls: Any, distribution: str = "") -> UpstreamKindType:
    if name in BUILTIN_KINDS:
        raise PluginLoadError(name, f"upstream kind '{name}' is built in")
    if not isinstance(cls, type):
        raise PluginLoadError(name, f"entry point is {type(cls).__name__}, expected a class")
    missing = [m for m in KIND_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise PluginLoadError(name, "upstream kind lacks " + ", ".join(missing))
    model = getattr(cls, "Config", None)
    if not (isinstance(model, type) and issubclass(model, UpstreamConfig)):
        raise PluginLoadError(name, "Config must subclass gatewayd.chain.UpstreamConfig")
    return UpstreamKindType(name, cls, model, distribution)


def _scan(group: str, inspect: Any) -> tuple[list[Any], dict[str, str]]:
    found: list[Any] = []
    errors: dict[str, str] = {}
    for ep in metadata.entry_points(group=group):
        if any(t.name == ep.name for t in found):
            continue
        dist = ep.dist.name if ep.dist is not None else ""
        try:
            found.append(inspect(ep.name, ep.load(), dist))
        except PluginLoadError as exc:
            errors[ep.name] = exc.reason
        except Exception as exc:  # a broken third-party package must not stop the daemon
            errors[ep.name] = f"cannot be imported: {type(exc).__name__}: {exc}"
    for name, reason in errors.items():
        log.warning(
            "entry point not loaded", extra={"group": group, "entry_point": name, "reason": reason}
        )
    return found, errors


class PluginRegistry:
    """The plugin types and upstream kinds known to this process, by config name."""

    def __init__(
        self,
        types: Iterable[PluginType] = (),
        errors: dict[str, str] | None = None,
        kinds: Iterable[UpstreamKindType] = (),
        kind_errors: dict[str, str] | None = None,
    ):
        self.types: dict[str, PluginType] = {t.name: t for t in types}
        self.errors: dict[str, str] = dict(errors or {})
        self.kinds: dict[str, UpstreamKindType] = {k.name: k for k in kinds}
        self.kind_errors: dict[str, str] = dict(kind_errors or {})

    @classmethod
    def discover(cls) -> PluginRegistry:
        """Scan installed distributions now (plugins pip-installed since start-up are found)."""
        importlib.invalidate_caches()
        types, errors = _scan(GROUP, inspect_plugin)
        kinds, kind_errors = _scan(KIND_GROUP, inspect_kind)
        return cls(types, errors, kinds, kind_errors)

    def add(self, name: str, cls: type[Any]) -> None:
        self.types[name] = inspect_plugin(name, cls)

    def add_kind(self, name: str, cls: type[Any]) -> None:
        self.kinds[name] = inspect_kind(name, cls)

    def get(self, name: str) -> PluginType | None:
        return self.types.get(name)

    def validate_upstream(
        self, config: UpstreamConfig, path: str
    ) -> tuple[UpstreamKindType | None, UpstreamConfig]:
        """The kind of an upstream and its config validated by that kind's ``Config``
        (``None`` for the built-in kinds, already validated); raises a list of problems."""
        if not isinstance(config, ExtensionUpstreamConfig):
            return None, config
        name = config.kind
        ktype = self.kinds.get(name)
        if ktype is None:
            if name in self.kind_errors:
                msg = f"upstream kind '{name}' failed to load: {self.kind_errors[name]}"
            else:
                known = ", ".join(sorted({*BUILTIN_KINDS, *self.kinds}))
                msg = f"unknown upstream kind '{name}' (installed: {known})"
            raise PluginConfigProblems([Problem(f"{path}.kind", msg)])
        data = config.model_dump(exclude_unset=True)
        try:
            return ktype, ktype.config_model.model_validate(data)
        except ValidationError as exc:
            raise PluginConfigProblems(problems_from_validation(exc, (path,))) from None

    def check_upstreams(self, upstreams: dict[str, UpstreamConfig]) -> list[Problem]:
        problems: list[Problem] = []
        for name, config in upstreams.items():
            try:
                self.validate_upstream(config, f"upstreams.{name}")
            except PluginConfigProblems as exc:
                problems += exc.problems
        return problems

    def validate(self, spec: PluginSpec, path: str) -> tuple[PluginType, BaseModel]:
        """The plugin type and its validated config; raises a list of problems."""
        ptype = self.types.get(spec.name)
        if ptype is None:
            if spec.name in self.errors:
                msg = f"plugin '{spec.name}' failed to load: {self.errors[spec.name]}"
            else:
                known = ", ".join(sorted(self.types)) or "none"
                msg = f"unknown plugin '{spec.name}' (installed: {known})"
            raise PluginConfigProblems([Problem(path, msg)])
        try:
            return ptype, ptype.config_model.model_validate(spec.config)
        except ValidationError as exc:
            raise PluginConfigProblems(problems_from_validation(exc, (path, spec.name))) from None

    def check_chain(self, specs: list[PluginSpec], path: str) -> list[Problem]:
        problems: list[Problem] = []
        for i, spec in enumerate(specs):
            try:
                self.validate(spec, f"{path}[{i}]")
            except PluginConfigProblems as exc:
                problems += exc.problems
        return problems


class PluginConfigProblems(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems
