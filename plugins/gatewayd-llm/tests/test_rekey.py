"""gatewayd_llm.rekey and ``gatewayd llm rekey``: real key files, the catalog's real SQLite
store (1,000 sealed secrets), a daemon's keyring reading values meanwhile, the command as a
subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from gatewayd_llm.catalog import (
    CatalogConflict,
    ProviderRecord,
    RedisCatalogStore,
    SqliteCatalogStore,
)
from gatewayd_llm.rekey import RekeyError, rekey
from gatewayd_llm.sealing import (
    Keyring,
    KeyringError,
    SealError,
    context,
    generate_key_file,
    token_key_id,
)
from llm_testkit import free_port
from redis.asyncio import Redis

N = 1000


def secret_of(i: int) -> str:
    return f"sk-provider-{i:04d}-Zq8"


async def fill(store: SqliteCatalogStore, keyring: Keyring, n: int = N) -> None:
    records = {}
    for i in range(n):
        pid = f"p{i}"
        token = keyring.seal(secret_of(i), context(f"provider:{pid}", "api_key"))
        rec = ProviderRecord(pid, "openai", {"base_url": "http://x/v1"}, {"api_key": token})
        records[("providers", pid)] = rec.to_json()
    await store.transact(lambda catalog: (records, None))


def opened(keyring: Keyring, values: list[tuple[str, str, str]]) -> dict[str, str]:
    return {rid: keyring.open(token, context(rid, field)) for rid, field, token in values}


@pytest.fixture
async def store(tmp_path: Path) -> SqliteCatalogStore:
    s = SqliteCatalogStore(tmp_path / "state" / "llm" / "catalog.sqlite3")
    await s.start()
    yield s  # type: ignore[misc]
    await s.close()


async def test_rekey_of_1000_secrets(tmp_path: Path, store: SqliteCatalogStore) -> None:
    key_file = tmp_path / "llm.key"
    old_id = generate_key_file(key_file)
    old_copy = key_file.read_bytes()
    await fill(store, Keyring(key_file))
    daemon = Keyring(key_file)  # a running daemon's keyring, loaded before the rekey

    result = await rekey(key_file, store)

    assert result.resealed == N and result.dropped == [old_id] and result.key_id != old_id
    assert [line.split()[0] for line in key_file.read_text().splitlines()] == [result.key_id]
    values = await store.sealed()
    assert len(values) == N and {token_key_id(t) for _, _, t in values} == {result.key_id}
    fresh = Keyring(key_file)
    assert opened(fresh, values) == {f"provider:p{i}": secret_of(i) for i in range(N)}
    # The daemon meets the new key id, reads the file again, and opens them all.
    assert opened(daemon, values[:5]) == {f"provider:p{i}": secret_of(i) for i in range(5)}

    # A store sealed with the old key alone, opened with the new file alone: refused.
    old_file = tmp_path / "only-old.key"
    old_file.write_bytes(old_copy)
    old_file.chmod(0o600)
    stale = Keyring(old_file).seal(secret_of(0), context("provider:p0", "api_key"))
    with pytest.raises(SealError) as err:
        fresh.open(stale, context("provider:p0", "api_key"))
    assert str(err.value) == f"sealed with key {old_id}, which is not in {key_file}"


async def test_a_value_that_does_not_open_stops_the_rekey_before_any_change(
    tmp_path: Path, store: SqliteCatalogStore
) -> None:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    other = tmp_path / "other.key"
    generate_key_file(other)
    await fill(store, Keyring(key_file), 3)
    # p1's value sealed under a key this file does not hold.
    foreign = Keyring(other).seal("sk-foreign-secret", context("provider:p1", "api_key"))
    good = {rid: t for rid, _, t in await store.sealed()}
    await store.reseal([("provider:p1", "api_key", good["provider:p1"], foreign)])
    before = key_file.read_bytes()
    with pytest.raises(RekeyError) as err:
        await rekey(key_file, store)
    assert str(err.value).startswith("provider:p1 api_key: sealed with key ")
    assert "sk-foreign" not in str(err.value)
    assert key_file.read_bytes() == before
    assert {rid: t for rid, _, t in await store.sealed()} == {**good, "provider:p1": foreign}


class RacingStore:
    """A store whose value changes (an API write) during the first reseal: compare-and-set."""

    def __init__(self, keyring_path: Path) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.path = keyring_path
        self.conflicts = 0

    async def sealed(self) -> list[tuple[str, str, str]]:
        return [(r, f, t) for (r, f), t in sorted(self.values.items())]

    async def reseal(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        if self.conflicts == 0:
            self.conflicts += 1
            # The daemon rotates a secret meanwhile; it seals with the file's first key.
            ring = Keyring(self.path)
            self.values[("provider:a", "api_key")] = ring.seal(
                "sk-rotated-meanwhile", context("provider:a", "api_key")
            )
        for record, field, old, _ in changes:
            if self.values[(record, field)] != old:
                raise CatalogConflict(f"{record}.{field} changed")
        for record, field, _, new in changes:
            self.values[(record, field)] = new


async def test_a_value_changed_meanwhile_is_resealed_in_the_next_round(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    ring = Keyring(key_file)
    store = RacingStore(key_file)
    for rid in ("provider:a", "provider:b"):
        store.values[(rid, "api_key")] = ring.seal(f"sk-{rid}", context(rid, "api_key"))
    result = await rekey(key_file, store)
    assert store.conflicts == 1
    fresh = Keyring(key_file)
    assert opened(fresh, await store.sealed()) == {
        "provider:a": "sk-rotated-meanwhile",
        "provider:b": "sk-provider:b",
    }
    assert fresh.key_ids == [result.key_id]


async def test_a_bad_key_file_mode_is_refused(tmp_path: Path, store: SqliteCatalogStore) -> None:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    key_file.chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        await rekey(key_file, store)


# -- the command ---------------------------------------------------------------------------------


def write_config(tmp_path: Path, key_file: Path | None) -> Path:
    llm: dict[str, object] = {"models": {"m": [{"upstream": "u", "model": "m"}]}}
    if key_file is not None:
        llm["secrets_key_file"] = str(key_file)
    config = {
        "listen": [{"address": "127.0.0.1:0"}],
        "state": {"dir": str(tmp_path / "state")},
        "upstreams": {"u": {"targets": ["http://127.0.0.1:9"]}},
        "routes": [
            {"name": "llm", "match": {"path": "/v1/"}, "upstream": "u", "plugins": [{"llm": llm}]}
        ],
    }
    path = tmp_path / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "llm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_command_rekeys_the_configs_store(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    made = gatewayd("keygen", str(key_file))
    assert made.returncode == 0, made.stderr
    old_id = Keyring(key_file).sealing_key_id
    assert made.stdout.strip() == f"key {old_id} written to {key_file}"
    config = write_config(tmp_path, key_file)
    store = SqliteCatalogStore(tmp_path / "state" / "llm" / "catalog.sqlite3")
    await store.start()
    try:
        await fill(store, Keyring(key_file), 20)
        done = await asyncio.to_thread(gatewayd, "rekey", "-c", str(config))
        assert done.returncode == 0, done.stderr
        new_id = Keyring(key_file).sealing_key_id
        assert done.stdout.strip() == (
            f"20 values sealed with key {new_id}; keys dropped from {key_file}: {old_id}"
        )
        values = await store.sealed()
        assert opened(Keyring(key_file), values)["provider:p7"] == secret_of(7)
    finally:
        await store.close()


async def test_command_user_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    no_file = gatewayd("rekey", "-c", str(config))
    assert no_file.returncode == 1
    assert no_file.stderr.count("\n") == 1 and "--key-file" in no_file.stderr
    missing = gatewayd("rekey", "-c", str(config), "--key-file", str(tmp_path / "none.key"))
    assert missing.returncode == 1
    assert (
        missing.stderr == f"gatewayd llm rekey: key file {tmp_path / 'none.key'} does not exist\n"
    )
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    other = tmp_path / "other.key"
    generate_key_file(other)
    store = SqliteCatalogStore(tmp_path / "state" / "llm" / "catalog.sqlite3")
    await store.start()
    try:
        await fill(store, Keyring(other), 2)  # sealed with another key
    finally:
        await store.close()
    refused = await asyncio.to_thread(
        gatewayd, "rekey", "-c", str(config), "--key-file", str(key_file)
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("gatewayd llm rekey: provider:p0 api_key: sealed with key ")
    assert "Traceback" not in refused.stderr and "sk-provider" not in refused.stderr
    again = gatewayd("keygen", str(key_file))
    assert again.returncode == 1 and "exists already" in again.stderr


async def test_command_on_the_redis_store(
    tmp_path: Path,
    llm_redis_url: str,
) -> None:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    config = write_config(tmp_path, key_file)
    data = yaml.safe_load(config.read_text())
    data["state"].update(backend="redis", redis_url=llm_redis_url)
    config.write_text(yaml.safe_dump(data))
    client = Redis.from_url(llm_redis_url)
    store = RedisCatalogStore(client)
    try:
        await store.start()
        await fill(store, Keyring(key_file), 50)  # type: ignore[arg-type]
        done = await asyncio.to_thread(gatewayd, "rekey", "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("50 values sealed with key ")
        values = await store.sealed()
        fresh = Keyring(key_file)
        assert {token_key_id(t) for _, _, t in values} == {fresh.sealing_key_id}
        assert opened(fresh, values)["provider:p49"] == secret_of(49)
    finally:
        await client.aclose()


async def test_command_with_redis_down_is_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    config = write_config(tmp_path, key_file)
    data = yaml.safe_load(config.read_text())
    data["state"].update(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    config.write_text(yaml.safe_dump(data))
    before = key_file.read_bytes()
    done = await asyncio.to_thread(gatewayd, "rekey", "-c", str(config))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("gatewayd llm rekey: the catalog store failed: ")
    assert key_file.read_bytes() == before
