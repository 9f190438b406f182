"""Upstreams added at run time (``services.upstreams``, :class:`gatewayd.chain.UpstreamDirectory`).

Process-wide, not per generation: each one is built like a configured upstream (the daemon
hands in :func:`gatewayd.daemon.upstreams.build_upstream`: the same validation, kinds, state and
metrics) and served from :attr:`RuntimeUpstreams.serving`, the mapping every generation's
dispatcher falls back to when the name is not one of its configured upstreams. A replaced or
removed upstream closes once the requests in flight on it are done (at most ``DRAIN_MAX``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gatewayd.chain.handover import Handover, close_objects
from gatewayd.chain.registry import PluginConfigProblems, PluginRegistry
from gatewayd.chain.upstream import UpstreamConfigInvalid
from gatewayd.config.errors import UPSTREAM_KIND_TAGS, problems_from_validation
from gatewayd.config.schema import AnyUpstreamConfig, UpstreamConfig
from gatewayd.proxy.upstream import ManagedUpstream

log = logging.getLogger("gatewayd.upstreams")
DRAIN_POLL = 0.25
DRAIN_MAX = 600.0  # a stream still open after this long is cut
NAME_MAX = 128

_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyUpstreamConfig)
# (name, validated config, registry, handover) -> the upstream, not started
Builder = Callable[[str, UpstreamConfig, PluginRegistry, Handover], ManagedUpstream]


@dataclass(slots=True)
class _Entry:
    upstream: ManagedUpstream
    owner: str
    config: UpstreamConfig
    handover: Handover


def _field(path: str) -> str:
    """A problem's path without the union's tag (``extension.base_url`` -> ``base_url``)."""
    head, _, rest = path.partition(".")
    return rest if head in UPSTREAM_KIND_TAGS and rest else path


class RuntimeUpstreams:
    def __init__(self, build: Builder, registry: PluginRegistry) -> None:
        self._build = build
        self.registry = registry
        self.serving: dict[str, ManagedUpstream] = {}  # what dispatchers read
        self._entries: dict[str, _Entry] = {}
        self._configured: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    # -- what the generations tell it ----------------------------------------------------------

    def set_configured(self, names: frozenset[str], registry: PluginRegistry) -> None:
        """The serving config's upstream names (and its registry), at start and each swap."""
        self._configured = names
        self.registry = registry
        for name in names & self._entries.keys():
            log.warning(
                "a configured upstream shadows a run-time one",
                extra={"upstream": name, "owner": self._entries[name].owner},
            )

    # -- UpstreamDirectory ---------------------------------------------------------------------

    def configured(self) -> frozenset[str]:
        return self._configured

    def runtime(self) -> dict[str, str]:
        return {name: e.owner for name, e in self._entries.items()}

    async def put(self, name: str, config: dict[str, Any], owner: str) -> None:
        if not name or len(name) > NAME_MAX or name.startswith("relay:"):
            raise ValueError(f"invalid upstream name {name!r}")
        if name in self._configured:
            raise ValueError(f"upstream '{name}' is defined in the config file (read-only)")
        async with self._lock:
            old = self._entries.get(name)
            if old is not None and old.owner != owner:
                raise ValueError(f"upstream '{name}' belongs to '{old.owner}'")
            parsed, validated = self._validate(config)
            if old is not None and old.config == validated:
                return  # the same config: nothing to rebuild
            handover = Handover(old.handover if old is not None else None)
            upstream: ManagedUpstream | None = None
            try:
                upstream = self._build(name, parsed, self.registry, handover)
                await upstream.start()
            except BaseException as exc:
                if upstream is not None:
                    await upstream.close()
                fresh = handover.abandoned_by(old.handover) if old else handover.objects.values()
                await close_objects(list(fresh))
                if isinstance(exc, PluginConfigProblems):
                    problems = [(p.path.lstrip("."), p.message) for p in exc.problems]
                    raise UpstreamConfigInvalid(problems) from None
                raise
            handover.forget_previous()
            self._entries[name] = _Entry(upstream, owner, validated, handover)
            self.serving[name] = upstream
            if old is not None:
                self._retire(old, handover)
        log.info("run-time upstream put", extra={"upstream": name, "owner": owner})

    async def remove(self, name: str, owner: str) -> bool:
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.owner != owner:
                return False
            del self._entries[name]
            self.serving.pop(name, None)
            self._retire(entry, None)
        log.info("run-time upstream removed", extra={"upstream": name, "owner": owner})
        return True

    # -- the rest ------------------------------------------------------------------------------

    def _validate(self, config: dict[str, Any]) -> tuple[UpstreamConfig, UpstreamConfig]:
        """(the config as the YAML's schema reads it, the same validated by its kind)."""
        try:
            parsed: UpstreamConfig = _ADAPTER.validate_python(config)
        except ValidationError as exc:
            problems = problems_from_validation(exc, ())
            raise UpstreamConfigInvalid([(_field(p.path), p.message) for p in problems]) from None
        try:
            return parsed, self.registry.validate_upstream(parsed, "")[1]
        except PluginConfigProblems as exc:
            raise UpstreamConfigInvalid(
                [(p.path.lstrip("."), p.message) for p in exc.problems]
            ) from None

    def _retire(self, entry: _Entry, successor: Handover | None) -> None:
        abandoned = (
            entry.handover.abandoned_by(successor)
            if successor is not None
            else list(entry.handover.objects.values())
        )
        task = asyncio.create_task(self._close_when_idle(entry.upstream, abandoned))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_when_idle(upstream: ManagedUpstream, abandoned: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_MAX
        # Polled: the targets' in-flight counts are plain integers (no event to wait on).
        while loop.time() < deadline and any(t.inflight for t in upstream.targets()):  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL)
        try:
            await upstream.close()
        finally:
            await close_objects(abandoned)

    async def close(self) -> None:
        """At shutdown: close every run-time upstream (the requests have drained by then)."""
        entries, self._entries = list(self._entries.values()), {}
        self.serving.clear()
        for task in list(self._closing):
            task.cancel()
        for entry in entries:
            await entry.upstream.close()
            await close_objects(list(entry.handover.objects.values()))
