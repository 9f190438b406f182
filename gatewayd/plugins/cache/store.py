"""Where cached responses live: this process (LRU bounded by bytes) or Redis (shared).

Keys: the *primary* key is the request target (``/path?query``), what ``purge`` takes; each
primary key has the Vary header names of its last stored response and one entry per variant
(host + the values of those headers)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from gatewayd.plugins.cache.policy import Entry


def full_key(primary: str, secondary: str) -> str:
    return primary + "\x00" + secondary


class MemoryCacheStore:
    """An LRU of entries whose total size stays under ``max_bytes``."""

    is_async = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._vary: dict[str, tuple[str, ...]] = {}
        self._keys: dict[str, set[str]] = {}  # primary -> full keys

    def __len__(self) -> int:
        return len(self._entries)

    def vary(self, primary: str) -> tuple[str, ...] | None:
        return self._vary.get(primary)

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def set(self, primary: str, key: str, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        self._vary[primary] = entry.vary
        self._keys.setdefault(primary, set()).add(key)
        while self.bytes > self.max_bytes and self._entries:
            old, _ = next(iter(self._entries.items()))
            self._drop(old)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry.size
        primary = key.partition("\x00")[0]
        keys = self._keys.get(primary)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[primary]
                self._vary.pop(primary, None)

    def purge(self, key: str | None = None, prefix: str | None = None) -> int:
        if key is not None:
            primaries = [key] if key in self._keys else []
        else:
            primaries = [p for p in self._keys if p.startswith(prefix or "")]
        n = 0
        for p in primaries:
            for k in list(self._keys.get(p, ())):
                self._drop(k)
                n += 1
        return n

    def clear(self) -> None:
        self._entries.clear()
        self._vary.clear()
        self._keys.clear()
        self.bytes = 0


def _encode(entry: Entry) -> bytes:
    meta = {
        "status": entry.status,
        "headers": entry.headers,
        "stored_at": entry.stored_at,
        "initial_age": entry.initial_age,
        "ttl": entry.ttl,
        "swr": entry.stale_while_revalidate,
        "sie": entry.stale_if_error,
        "must_revalidate": entry.must_revalidate,
        "no_cache": entry.no_cache,
        "s_maxage": entry.s_maxage,
        "etag": entry.etag,
        "last_modified": entry.last_modified,
        "modified_at": entry.modified_at,
        "date_at": entry.date_at,
        "vary": list(entry.vary),
        "retain": entry.retain,
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "big") + head + entry.body


def _decode(data: bytes) -> Entry:
    n = int.from_bytes(data[:4], "big")
    m = json.loads(data[4 : 4 + n])
    body = data[4 + n :]
    return Entry(
        status=m["status"],
        headers=[(k, v) for k, v in m["headers"]],
        body=body,
        stored_at=m["stored_at"],
        initial_age=m["initial_age"],
        ttl=m["ttl"],
        stale_while_revalidate=m["swr"],
        stale_if_error=m["sie"],
        must_revalidate=m["must_revalidate"],
        no_cache=m["no_cache"],
        s_maxage=m.get("s_maxage", False),
        etag=m["etag"],
        last_modified=m["last_modified"],
        modified_at=m.get("modified_at"),
        date_at=m.get("date_at"),
        vary=tuple(m["vary"]),
        size=len(data),
        retain=m.get("retain", 0.0),
    )


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


class RedisCacheStore:
    """Entries as Redis strings that expire when they can no longer be served (freshness plus
    the longest stale allowance). Shared by every gatewayd on the same Redis; LRU and the byte
    bound are Redis's own (``maxmemory`` with an ``allkeys-lru`` policy)."""

    is_async = True

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def vary(self, primary: str) -> tuple[str, ...] | None:
        raw = await self.client.get(self.prefix + "v:" + primary)
        if raw is None:
            return None
        text = raw.decode()
        return tuple(text.split(",")) if text else ()

    async def get(self, key: str) -> Entry | None:
        raw = await self.client.get(self.prefix + "e:" + key)
        return None if raw is None else _decode(raw)

    async def set(self, primary: str, key: str, entry: Entry) -> None:
        stale = max(entry.stale_while_revalidate, entry.stale_if_error or 0.0, entry.retain)
        keep = entry.ttl + stale + 60
        ms = max(1000, int(keep * 1000))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.prefix + "e:" + key, _encode(entry), px=ms)
            pipe.set(self.prefix + "v:" + primary, ",".join(entry.vary), px=ms)
            await pipe.execute()

    async def purge(self, key: str | None = None, prefix: str | None = None) -> int:
        if key is not None:
            patterns = [self.prefix + "e:" + _glob_escape(key) + "\x00*"]
            vary = [self.prefix + "v:" + key]
        else:
            patterns = [self.prefix + "e:" + _glob_escape(prefix or "") + "*"]
            vary = []
            async for k in self.client.scan_iter(
                match=self.prefix + "v:" + _glob_escape(prefix or "") + "*", count=500
            ):
                vary.append(k)
        n = 0
        for pattern in patterns:
            async for k in self.client.scan_iter(match=pattern, count=500):
                n += await self.client.delete(k)
        if vary:
            await self.client.delete(*vary)
        return n
