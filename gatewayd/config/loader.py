"""Read a YAML file into a validated :class:`GatewayConfig`.

Order: parse YAML, substitute ``${VAR}`` / ``${VAR:-default}`` in every string, apply
``GATEWAYD_<SECTION>__<KEY>`` overrides, validate the schema, then cross-check references
(upstream names, unique route names) and every plugin's own config against its schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from gatewayd.config.errors import ConfigError, Problem, format_path, problems_from_validation
from gatewayd.config.schema import GatewayConfig, PluginSpec, UpstreamConfig

_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_PREFIX = "GATEWAYD_"
DEFAULT_PATH = "/etc/gatewayd/gatewayd.yaml"


class PluginChecker(Protocol):
    """What validation asks of the plugin registry (:class:`gatewayd.chain.registry.PluginRegistry`
    is one): the problems of a chain's plugin entries, each with its path. The config layer knows
    nothing above it, so it names the registry by what it does."""

    def check_chain(self, specs: list[PluginSpec], path: str) -> list[Problem]: ...

    def check_upstreams(self, upstreams: dict[str, UpstreamConfig]) -> list[Problem]: ...


def default_path(env: Mapping[str, str] | None = None) -> str:
    """The config file read without ``-c``: ``$GATEWAYD_CONFIG`` or /etc/gatewayd/gatewayd.yaml."""
    return (os.environ if env is None else env).get("GATEWAYD_CONFIG", DEFAULT_PATH)


def substitute_env(data: Any, env: Mapping[str, str], path: tuple[str | int, ...] = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    if isinstance(data, str):
        if "$" not in data:
            return data

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError.single(
                format_path(path), f"environment variable {name} is not set (and has no default)"
            )

        return _VAR_RE.sub(repl, data)
    if isinstance(data, dict):
        return {k: substitute_env(v, env, (*path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_env(v, env, (*path, i)) for i, v in enumerate(data)]
    return data


def apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``GATEWAYD_ADMIN__LISTEN=127.0.0.1:9902`` sets ``admin.listen``; values are YAML scalars."""
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            continue
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list):
            value = raw  # overrides are for scalars only
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"invalid YAML: {where}{problem}")], source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the top level must be a mapping")], source)
    return data


def cross_check(cfg: GatewayConfig) -> list[Problem]:
    problems: list[Problem] = []
    known = ", ".join(sorted(cfg.upstreams)) or "none"
    seen: dict[str, int] = {}
    for i, route in enumerate(cfg.routes):
        if route.name in seen:
            problems.append(
                Problem(
                    f"routes[{i}].name",
                    f"duplicate route name '{route.name}' (also routes[{seen[route.name]}])",
                )
            )
        seen.setdefault(route.name, i)
        if route.upstream and route.upstream not in cfg.upstreams:
            problems.append(
                Problem(
                    f"routes[{i}].upstream", f"unknown upstream '{route.upstream}' (known: {known})"
                )
            )
    return problems


def validate_data(
    data: dict[str, Any],
    registry: PluginChecker | None,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> GatewayConfig:
    env = os.environ if env is None else env
    try:
        data = substitute_env(data, env)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    data = apply_overrides(data, env)
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc), source) from None
    problems = cross_check(cfg)
    if registry is not None:
        problems += registry.check_upstreams(dict(cfg.upstreams))
        problems += registry.check_chain(cfg.plugins, "plugins")
        for i, route in enumerate(cfg.routes):
            problems += registry.check_chain(route.plugins, f"routes[{i}].plugins")
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(
    path: str | Path, registry: PluginChecker | None, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Load, substitute, override and validate; raises :class:`ConfigError`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read config: {exc.strerror}")], source) from None
    return validate_data(parse_yaml(text, source), registry, env, source)
