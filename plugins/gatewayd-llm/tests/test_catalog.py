"""The catalog's stores (gatewayd_llm.catalog): SQLite and a real redis-server, the same
behaviour: transactions bump the version, a failed change writes nothing, reseal is
compare-and-set and all or nothing, and a change on one store object is seen by another."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gatewayd_llm.catalog import (
    Catalog,
    CatalogConflict,
    CatalogStore,
    ModelRecord,
    ProviderRecord,
    Writes,
    open_store,
    stamp,
)

from gatewayd.stores.redis import connect


@pytest.fixture(params=["memory", "redis"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[CatalogStore]]:
    """Two store objects over the same catalog (two instances' view of it)."""
    made: list[CatalogStore] = []
    clients = []
    for _ in range(2):
        if request.param == "redis":
            url = request.getfixturevalue("llm_redis_url")
            client = connect(url)
            clients.append(client)
            store = open_store("redis", tmp_path, lambda c=client: c)
        else:
            store = open_store("memory", tmp_path, lambda: None)
        await store.start()
        made.append(store)
    yield made
    for store in made:
        await store.close()
    for client in clients:
        await client.aclose()


def add_provider(pid: str, token: str = "tok-1") -> object:
    def change(catalog: Catalog) -> tuple[Writes, str]:
        rec = stamp(
            ProviderRecord(pid, "openai", {"base_url": "http://x"}, {"api_key": token}),
            catalog.providers.get(pid),
        )
        model = stamp(
            ModelRecord(f"{pid}-m", [{"upstream": pid, "model": "gpt"}], provider=pid), None
        )
        return {("providers", pid): rec.to_json(), ("models", model.name): model.to_json()}, pid

    return change


async def test_a_change_is_versioned_and_seen_by_the_other_instance(
    stores: list[CatalogStore],
) -> None:
    one, two = stores
    assert await two.version() == 0
    result, version = await one.transact(add_provider("p1"))  # type: ignore[arg-type]
    assert (result, version) == ("p1", 1)
    assert await two.version() == 1
    seen = await two.load()
    assert seen.providers["p1"].secrets == {"api_key": "tok-1"}
    assert seen.providers["p1"].config == {"base_url": "http://x"}
    assert seen.models["p1-m"].provider == "p1"
    assert seen.provider_models("p1") == ["p1-m"]
    _, version = await two.transact(add_provider("p1", "tok-2"))  # type: ignore[arg-type]
    assert version == 2
    again = (await one.load()).providers["p1"]
    assert again.version == 2 and again.created == seen.providers["p1"].created
    # Nothing to write: no new version.
    _, version = await one.transact(lambda c: ({}, None))
    assert version == 2


async def test_a_change_that_raises_writes_nothing(stores: list[CatalogStore]) -> None:
    one, _ = stores
    await one.transact(add_provider("p1"))  # type: ignore[arg-type]

    def broken(catalog: Catalog) -> tuple[Writes, None]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await one.transact(broken)
    assert await one.version() == 1


async def test_concurrent_changes_all_land(stores: list[CatalogStore]) -> None:
    one, two = stores
    await asyncio.gather(
        *(
            (one if i % 2 else two).transact(add_provider(f"p{i}"))  # type: ignore[arg-type]
            for i in range(20)
        )
    )
    catalog = await one.load()
    assert sorted(catalog.providers) == sorted(f"p{i}" for i in range(20))
    assert catalog.version == 20


async def test_reseal_is_compare_and_set_and_all_or_nothing(stores: list[CatalogStore]) -> None:
    one, two = stores
    await one.transact(add_provider("a", "ta"))  # type: ignore[arg-type]
    await one.transact(add_provider("b", "tb"))  # type: ignore[arg-type]
    assert sorted(await two.sealed()) == [
        ("provider:a", "api_key", "ta"),
        ("provider:b", "api_key", "tb"),
    ]
    with pytest.raises(CatalogConflict):  # b's token is not "old" any more: nothing changes
        await two.reseal(
            [("provider:a", "api_key", "ta", "ta2"), ("provider:b", "api_key", "stale", "x")]
        )
    assert sorted(t for _, _, t in await one.sealed()) == ["ta", "tb"]
    await two.reseal(
        [("provider:a", "api_key", "ta", "ta2"), ("provider:b", "api_key", "tb", "tb2")]
    )
    assert sorted(t for _, _, t in await one.sealed()) == ["ta2", "tb2"]


async def test_changes_tick_within_a_quarter_second(stores: list[CatalogStore]) -> None:
    one, two = stores
    feed = two.changes()
    await anext(feed)  # subscribed
    loop = asyncio.get_running_loop()
    await one.transact(add_provider("p"))  # type: ignore[arg-type]
    start = loop.time()
    await asyncio.wait_for(anext(feed), 1.0)
    assert loop.time() - start < 0.5
    assert await two.version() == 1
    await feed.aclose()  # type: ignore[attr-defined]


async def test_sqlite_file_is_wal_and_private(tmp_path: Path) -> None:
    store = open_store("memory", tmp_path, lambda: None)
    await store.start()
    await store.transact(add_provider("p"))  # type: ignore[arg-type]
    path = tmp_path / "llm" / "catalog.sqlite3"
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["catalog.sqlite3", "catalog.sqlite3-shm", "catalog.sqlite3-wal"]
    for f in path.parent.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.close()
    reopened = open_store("memory", tmp_path, lambda: None)
    await reopened.start()
    assert list((await reopened.load()).providers) == ["p"]
    await reopened.close()
