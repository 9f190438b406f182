"""The catalog applied to this process: one object for every ``llm`` instance and generation.

:class:`CatalogSync` (``services.stores.shared("llm:catalog")``, :func:`catalog_sync`) is started
by the first llm instance's ``start()`` and stopped when the last one closes. It loads the
store (:mod:`gatewayd_llm.catalog`) and applies it:

- each provider's secrets are opened with the :class:`~gatewayd_llm.sealing.Keyring`
  (``llm.secrets_key_file``) and set in the process's
  :class:`~gatewayd_llm.credentials.Credentials` (a rotation keeps the old one as the alternate
  for the rest of its grace), then the provider is served as a run-time upstream
  (``services.upstreams.put(id, {kind, ..., credential: id}, owner="llm")``);
- the models (parsed once here: :attr:`CatalogSync.models`) are offered to every llm route,
  which rebuilds its router when :attr:`CatalogSync.generation` moves (YAML models win a name
  clash).

Then it follows the store: a change made here is applied before the admin call answers; one
made by another instance (Redis) within the store's tick (pub/sub, and the version polled every
250 ms). The providers and models survive a reload (this object is the process's) and a restart
(the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.chain import PluginServices
from gatewayd_llm.catalog import (
    Catalog,
    CatalogStore,
    ModelRecord,
    ProviderRecord,
    Writes,
    open_store,
    record_id,
)
from gatewayd_llm.config import DeploymentConfig, LlmConfig, PriceConfig
from gatewayd_llm.credentials import credentials
from gatewayd_llm.sealing import CREDENTIAL_NAME, Keyring, SealError, context

__all__ = [
    "SHARED_NAME",
    "CatalogSync",
    "ServedModel",
    "catalog_sync",
    "load_keyring",
    "merged",
    "upstream_config",
]

log = logging.getLogger("gatewayd_llm.catalog")
SHARED_NAME = "llm:catalog"
OWNER = "llm"  # the owner of the run-time upstreams the catalog puts
R = TypeVar("R")
_UNSET = object()


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A catalog model as the llm routes serve it."""

    deployments: list[DeploymentConfig]
    fallbacks: list[str]
    price: PriceConfig | None


def load_keyring(path: Path | None) -> Keyring | None:
    """The keyring of ``path``, or of the systemd credential when there is one; None when no key
    is configured. Raises :class:`KeyringError` (a clear message) for a bad file."""
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not (Path(directory) / CREDENTIAL_NAME).exists():
            return None
    return Keyring.load(path)


class CatalogSync:
    def __init__(self) -> None:
        self.key_file: Any = _UNSET  # the llm.secrets_key_file every instance names
        self.keyring: Keyring | None = None
        self.store: CatalogStore | None = None
        self.services: PluginServices | None = None
        self.catalog = Catalog()  # the one applied
        self.models: dict[str, ServedModel] = {}
        self.generation = 0  # bumped when :attr:`models` changes
        self.users = 0
        self.grace = 300.0  # the default grace of a rotation (llm.rotation_grace)
        self._start_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._failed: dict[str, int] = {}  # provider -> the version that failed to apply

    # -- the instances ---------------------------------------------------------------------------

    def claim(self, key_file: Path | None) -> None:
        """An llm instance's ``secrets_key_file``: every one must name the same file (it is read
        once, for the life of the process). Raises ``ValueError`` saying which."""
        if self.key_file is _UNSET:
            self.keyring = load_keyring(key_file)
            self.key_file = key_file
        elif self.key_file != key_file:
            raise ValueError(
                f"secrets_key_file: every llm plugin must name the same key file; this process"
                f" uses {self.key_file or 'none'} and this one names {key_file or 'none'}"
                " (changing it needs a restart)"
            )

    async def start(self, services: PluginServices, grace: float) -> None:
        async with self._start_lock:
            self.users += 1
            self.grace = grace
            if self._watch is not None:
                return
            self.services = services
            if self.store is None:
                stores = services.stores
                self.store = open_store(stores.backend, services.state_dir, stores.redis)
                await self.store.start()
            try:
                await self.refresh()
            except Exception as exc:  # the store is down: the watch retries
                log.error("llm catalog not loaded; retrying", extra={"error": str(exc)})
            self._watch = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """An instance closed: the last one stops following the store."""
        async with self._start_lock:
            self.users -= 1
            if self.users > 0 or self._watch is None:
                return
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
            if self.store is not None:
                await self.store.close()
                self.store = None

    @property
    def running(self) -> bool:
        return self.store is not None

    def the_store(self) -> CatalogStore:
        if self.store is None:
            raise RuntimeError("the llm catalog is not started")
        return self.store

    # -- changes ---------------------------------------------------------------------------------

    async def transact(self, change: Callable[[Catalog], tuple[Writes, R]]) -> R:
        """Change the store, then apply it here at once (new requests see it)."""
        result, _ = await self.the_store().transact(change)
        await self.refresh()
        return result

    async def refresh(self) -> None:
        async with self._apply_lock:
            catalog = await self.the_store().load()
            if catalog.version != self.catalog.version or self._failed:
                await self._apply(catalog)

    async def _follow(self) -> None:
        store = self.the_store()
        async for _ in store.changes():
            try:
                if await store.version() != self.catalog.version or self._failed:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("llm catalog refresh failed", extra={"error": str(exc)})

    # -- applying --------------------------------------------------------------------------------

    async def _apply(self, catalog: Catalog) -> None:
        services = self.services
        assert services is not None
        old = self.catalog
        creds = credentials(services)
        upstreams = services.upstreams
        failed: dict[str, int] = {}
        for pid, rec in catalog.providers.items():
            before = old.providers.get(pid)
            if before == rec and pid not in self._failed:
                continue
            try:
                secret = self.open_secret(rec)
                if secret is not None:
                    creds.set(pid, secret, self._grace_left(rec) if before is not None else 0.0)
                await upstreams.put(pid, upstream_config(rec, secret is not None), owner=OWNER)
            except Exception as exc:
                failed[pid] = rec.version
                if self._failed.get(pid) != rec.version:
                    log.error(
                        "llm provider not applied",
                        extra={"provider": pid, "error": str(exc)},
                    )
        models = parse_models(catalog)
        if models != self.models:
            self.models = models
            self.generation += 1
        for pid in old.providers.keys() - catalog.providers.keys():
            await upstreams.remove(pid, OWNER)
            creds.remove(pid)
        self._failed = failed
        self.catalog = catalog

    def open_secret(self, rec: ProviderRecord) -> str | None:
        token = rec.secrets.get("api_key")
        if token is None:
            return None
        if self.keyring is None:
            raise SealError("the provider has a sealed secret and no secrets key is configured")
        return self.keyring.open(token, context(record_id(rec.id), "api_key"))

    def _grace_left(self, rec: ProviderRecord) -> float:
        if rec.rotated is None:
            return 0.0
        return max(0.0, rec.rotated + rec.grace - time.time())


def upstream_config(rec: ProviderRecord, with_secret: bool) -> dict[str, Any]:
    config = {**rec.config, "kind": rec.kind}
    if with_secret:
        config["credential"] = rec.id
    return config


def parse_models(catalog: Catalog) -> dict[str, ServedModel]:
    out: dict[str, ServedModel] = {}
    for name, rec in sorted(catalog.models.items()):  # by name: /v1/models lists them so
        try:
            out[name] = served_model(rec)
        except ValueError as exc:
            log.error("llm catalog model not served", extra={"model": name, "error": str(exc)})
    return out


def served_model(rec: ModelRecord) -> ServedModel:
    return ServedModel(
        [DeploymentConfig.model_validate(d) for d in rec.deployments],
        list(rec.fallbacks),
        PriceConfig.model_validate(rec.price) if rec.price is not None else None,
    )


def merged(config: LlmConfig, models: dict[str, ServedModel]) -> LlmConfig:
    """``config`` with the catalog's ``models`` added (the YAML's win a name clash); a
    catalog model's fallbacks that name no model now are left out."""
    extra = {name: m for name, m in models.items() if name not in config.models}
    if not extra:
        return config
    names = config.models.keys() | extra.keys()
    return config.model_copy(
        update={
            "models": {**config.models, **{n: m.deployments for n, m in extra.items()}},
            "fallbacks": {
                **config.fallbacks,
                **{n: [f for f in m.fallbacks if f in names and f != n] for n, m in extra.items()},
            },
            "prices": {
                **config.prices,
                **{n: m.price for n, m in extra.items() if m.price is not None},
            },
        }
    )


def catalog_sync(services: PluginServices) -> CatalogSync:
    """The process's :class:`CatalogSync`."""
    return services.stores.shared(SHARED_NAME, CatalogSync)
