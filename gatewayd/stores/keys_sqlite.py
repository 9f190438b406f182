"""The SQLite key backend: one file under ``state.dir`` (WAL mode, created on first use).

Every revoke/rotate also appends to a ``changes`` table; a running daemon polls it (every
250 ms, one indexed query) so a ``gatewayd keys revoke`` from another process takes effect
within a second. All SQLite calls run on one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gatewayd.stores.keys import Change, KeyRecord, KeyStoreError, StoredKey

POLL_INTERVAL = 0.25
SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    tenant TEXT NOT NULL,
    scopes TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    rotated_at REAL,
    hash TEXT NOT NULL,
    old_hash TEXT,
    old_hash_until REAL
);
CREATE INDEX IF NOT EXISTS keys_tenant ON keys (tenant);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL
);
"""
COLUMNS = (
    "key_id, prefix, tenant, scopes, description, created_at, expires_at, revoked_at, "
    "rotated_at, hash, old_hash, old_hash_until"
)


def _row(s: StoredKey) -> tuple[Any, ...]:
    r = s.record
    return (
        r.key_id,
        r.prefix,
        r.tenant,
        json.dumps(sorted(r.scopes)),
        r.description,
        r.created_at,
        r.expires_at,
        r.revoked_at,
        r.rotated_at,
        s.hash,
        s.old_hash,
        s.old_hash_until,
    )


def _stored(row: tuple[Any, ...]) -> StoredKey:
    key_id, prefix, tenant, scopes, desc, created, expires, revoked, rotated = row[:9]
    record = KeyRecord(
        key_id=key_id,
        tenant=tenant,
        scopes=frozenset(json.loads(scopes)),
        description=desc,
        created_at=created,
        expires_at=expires,
        revoked_at=revoked,
        prefix=prefix,
        rotated_at=rotated,
    )
    return StoredKey(record, row[9], row[10], row[11])


class SQLiteKeyBackend:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(1, "gatewayd-keys-sqlite")
        self._db: sqlite3.Connection | None = None
        self._seen: set[int] = set()  # change rows written by this process

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            os.chmod(self.path, 0o600)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _get(self, key_id: str) -> StoredKey | None:
        row = (
            self._conn()
            .execute(f"SELECT {COLUMNS} FROM keys WHERE key_id = ?", (key_id,))
            .fetchone()
        )
        return _stored(row) if row else None

    async def get(self, key_id: str) -> StoredKey | None:
        result: StoredKey | None = await self._run(self._get, key_id)
        return result

    def _insert(self, stored: StoredKey) -> None:
        try:
            self._conn().execute(
                f"INSERT INTO keys ({COLUMNS}) VALUES ({','.join('?' * 12)})", _row(stored)
            )
        except sqlite3.IntegrityError:
            raise KeyStoreError(f"a key with id '{stored.record.key_id}' exists") from None

    async def insert(self, stored: StoredKey) -> None:
        await self._run(self._insert, stored)

    def _update(self, stored: StoredKey, change: str) -> None:
        db = self._conn()
        row = _row(stored)
        sets = ", ".join(f"{c.strip()} = ?" for c in COLUMNS.split(",")[1:])
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"UPDATE keys SET {sets} WHERE key_id = ?", (*row[1:], row[0]))
            cur = db.execute(
                "INSERT INTO changes (key_id, kind, at) VALUES (?, ?, ?)",
                (stored.record.key_id, change, time.time()),
            )
            self._seen.add(int(cur.lastrowid or 0))

    async def update(self, stored: StoredKey, change: str) -> None:
        await self._run(self._update, stored, change)

    def _delete(self, key_id: str) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
            cur = db.execute(  # other processes drop it from their caches as for a revocation
                "INSERT INTO changes (key_id, kind, at) VALUES (?, ?, ?)",
                (key_id, "revoked", time.time()),
            )
            self._seen.add(int(cur.lastrowid or 0))

    async def delete(self, key_id: str) -> None:
        await self._run(self._delete, key_id)

    def _list(self, tenant: str | None) -> list[StoredKey]:
        db = self._conn()
        if tenant is None:
            rows = db.execute(f"SELECT {COLUMNS} FROM keys ORDER BY created_at").fetchall()
        else:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM keys WHERE tenant = ? ORDER BY created_at", (tenant,)
            ).fetchall()
        return [_stored(r) for r in rows]

    async def list(self, tenant: str | None = None) -> list[StoredKey]:
        result: list[StoredKey] = await self._run(self._list, tenant)
        return result

    # builtins.list: in the class body below ``list`` is the method above
    def _changes_since(self, seq: int) -> builtins.list[tuple[int, str, str]]:
        rows = (
            self._conn()
            .execute("SELECT seq, key_id, kind FROM changes WHERE seq > ? ORDER BY seq", (seq,))
            .fetchall()
        )
        return [(int(a), str(b), str(c)) for a, b, c in rows]

    def _last_seq(self) -> int:
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        return int(row[0])

    async def watch(self, on_change: Callable[[Change], None]) -> None:
        last = await self._run(self._last_seq)
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                rows = await self._run(self._changes_since, last)
            except sqlite3.Error:
                on_change(Change("reset", ""))
                continue
            for seq, key_id, kind in rows:
                last = seq
                if seq in self._seen:  # ours: already applied when it was made
                    self._seen.discard(seq)
                    continue
                on_change(Change(kind, key_id))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)
