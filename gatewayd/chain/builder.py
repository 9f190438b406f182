"""Build plugin instances and per-route chains for one generation."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gatewayd.chain.api import PluginContext, RequestContext, Response
from gatewayd.chain.handover import Handover
from gatewayd.chain.registry import PluginConfigProblems, PluginRegistry
from gatewayd.config.errors import Problem
from gatewayd.config.schema import PluginSpec

log = logging.getLogger("gatewayd.chain")

Phase = tuple[tuple[int, str, Callable[..., Any], bool], ...]


def awaits(fn: Callable[..., Any]) -> bool:
    """Whether a phase's result must be awaited: always, unless ``fn`` is a plain (not async)
    function or method, which the chain calls without the cost of a coroutine."""
    plain = inspect.isfunction(fn) or inspect.ismethod(fn)
    return not plain or inspect.iscoroutinefunction(fn)


@dataclass(frozen=True, slots=True)
class Chain:
    """The plugins of one route in run order, and one tuple per phase holding only the plugins
    that implement it: ``(position, plugin name, bound method, awaits)``. Response phases are
    reversed. ``on_request``, ``on_response`` and ``on_done`` may be async or plain functions;
    a plain ``on_request`` may also return a coroutine (its slow path), which is awaited.
    ``all_replies``: the positions of the plugins whose ``on_response`` sees every reply of the
    route, also a local reply of a plugin before them (class attribute ``sees_all_replies``:
    e.g. a plugin that gives the route's errors its API's shape)."""

    plugins: tuple[Any, ...]
    names: tuple[str, ...]
    request: Phase
    response: Phase
    chunk: Phase
    done: Phase
    all_replies: frozenset[int] = frozenset()

    @classmethod
    def of(cls, entries: list[tuple[str, Any]]) -> Chain:
        names = tuple(n for n, _ in entries)
        plugins = tuple(p for _, p in entries)

        def phase(attr: str, reverse: bool) -> Phase:
            items = [
                (i, n, fn, awaits(fn))
                for i, (n, p) in enumerate(entries)
                if callable(fn := getattr(p, attr, None))
            ]
            return tuple(reversed(items)) if reverse else tuple(items)

        return cls(
            plugins,
            names,
            phase("on_request", False),
            phase("on_response", True),
            phase("on_response_chunk", True),
            phase("on_done", True),
            frozenset(i for i, p in enumerate(plugins) if getattr(p, "sees_all_replies", False)),
        )


EMPTY_CHAIN = Chain.of([])


def _identity(scope: str, spec: PluginSpec, seen: dict[str, int]) -> str:
    canon = json.dumps(spec.config, sort_keys=True, default=str, separators=(",", ":"))
    base = f"{scope}/{spec.name}/{canon}"
    n = seen.get(base, 0)
    seen[base] = n + 1
    return f"{base}/{n}"


class Forwarder:
    """``PluginContext.forward`` for the plugins of one generation: the generation points
    ``target`` at its dispatcher once that exists (plugins are made first)."""

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: Callable[[RequestContext], Awaitable[Response]] | None = None

    async def forward(self, ctx: RequestContext) -> Response:
        if self.target is None:
            raise RuntimeError("forward() is available once the generation is built")
        return await self.target(ctx)


class ChainBuilder:
    """Instantiates plugins (validated configs, handed-over state) and orders them."""

    def __init__(
        self,
        registry: PluginRegistry,
        services: Any,
        handover: Handover,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.registry = registry
        self.services = services
        self.handover = handover
        self.forwarder = forwarder or Forwarder()
        self.instances: list[Any] = []

    def instantiate(
        self,
        specs: list[PluginSpec],
        scope: str,
        path: str,
        route: str | None,
        upstream: str | None,
    ) -> list[tuple[int, int, str, Any]]:
        """``(priority, position, name, instance)`` for each spec."""
        seen: dict[str, int] = {}
        out = []
        for i, spec in enumerate(specs):
            ptype, config = self.registry.validate(spec, f"{path}[{i}]")
            ctx = PluginContext(
                scope=scope,
                route=route,
                upstream=upstream,
                identity=_identity(scope, spec, seen),
                services=self.services,
                handover=self.handover,
                logger=logging.getLogger(f"gatewayd.plugins.{spec.name}"),
                forward=self.forwarder.forward,
            )
            try:
                instance = ptype.cls(config, ctx)
            except Exception as exc:
                raise PluginConfigProblems(
                    [Problem(f"{path}[{i}].{spec.name}", f"plugin failed to initialise: {exc}")]
                ) from exc
            self.instances.append(instance)
            priority = spec.priority if spec.priority is not None else ptype.priority
            out.append((priority, i, spec.name, instance))
        return out

    @staticmethod
    def order(
        global_: list[tuple[int, int, str, Any]], route: list[tuple[int, int, str, Any]]
    ) -> Chain:
        # Higher priority first; on a tie the global chain first, then config order.
        keyed = [(-p, 0, i, n, inst) for p, i, n, inst in global_]
        keyed += [(-p, 1, i, n, inst) for p, i, n, inst in route]
        keyed.sort(key=lambda k: k[:3])
        return Chain.of([(n, inst) for *_, n, inst in keyed])
