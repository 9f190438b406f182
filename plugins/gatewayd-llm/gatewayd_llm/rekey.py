"""Seal every stored provider secret with a new master key (``gatewayd llm rekey``).

1. Open every sealed value with the key file as it is (a value that does not open stops the
   rekey before anything changed: :class:`RekeyError` names its record and field).
2. Add a fresh key as the key file's first line (:func:`~gatewayd_llm.sealing.add_key`): from
   now on a daemon seals new values with it (its keyring notices the file changed), and the old
   keys still open what they sealed.
3. Reseal every value not under the new key, compare-and-set (the store refuses a change to a
   value that changed meanwhile: it is listed again and resealed in the next round).
4. When every value is under the new key, drop the other keys from the file, then check that
   every value opens with the file alone.

A daemon that meets the new key id while this runs reads the key file again
(:meth:`Keyring.open`), so no value is unreadable at any point. The store is anything with
:class:`SealedStore`'s two methods (the catalog's :class:`~gatewayd_llm.catalog.CatalogStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gatewayd_llm.catalog import CatalogConflict
from gatewayd_llm.sealing import Keyring, SealError, add_key, context, drop_keys, token_key_id

__all__ = ["RekeyError", "RekeyResult", "SealedStore", "rekey"]

MAX_ROUNDS = 10


class SealedStore(Protocol):
    async def sealed(self) -> list[tuple[str, str, str]]:
        """Every sealed value: (record id, field, token)."""
        ...

    async def reseal(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        """(record id, field, old token, new token) each, compare-and-set, all or nothing."""
        ...


class RekeyError(Exception):
    """The rekey cannot go on (one line for the operator: names records, never values)."""


@dataclass(frozen=True, slots=True)
class RekeyResult:
    key_id: str  # the new key's
    dropped: list[str]  # the ids of the keys removed from the file
    resealed: int  # values resealed (each once, however many rounds)


def _open_all(keyring: Keyring, values: list[tuple[str, str, str]]) -> list[str]:
    plain: list[str] = []
    for record, field, token in values:
        try:
            plain.append(keyring.open(token, context(record, field)))
        except SealError as exc:
            raise RekeyError(f"{record} {field}: {exc}") from None
    return plain


async def rekey(path: Path, store: SealedStore) -> RekeyResult:
    """Rekey the values of ``store`` under the key file ``path`` (see the module's text)."""
    keyring = Keyring(path)  # raises KeyringError: missing, mode, malformed
    old_ids = keyring.key_ids
    _open_all(keyring, await store.sealed())  # nothing changes unless every value opens
    new_id = add_key(path)
    keyring.reload()
    resealed: set[tuple[str, str]] = set()
    for _ in range(MAX_ROUNDS):
        values = [v for v in await store.sealed() if token_key_id(v[2]) != new_id]
        if not values:
            break
        plain = _open_all(keyring, values)
        changes = [
            (record, field, token, keyring.seal(text, context(record, field)))
            for (record, field, token), text in zip(values, plain, strict=True)
        ]
        try:
            await store.reseal(changes)
        except CatalogConflict:  # a value changed meanwhile (compare-and-set): list again
            continue
        resealed.update((record, field) for record, field, _ in values)
    else:
        raise RekeyError(
            f"values kept changing during {MAX_ROUNDS} rounds; the key file keeps the old keys "
            f"and the new one ({new_id}): run the rekey again"
        )
    drop_keys(path, keep=new_id)
    _open_all(Keyring(path), await store.sealed())
    return RekeyResult(new_id, [k for k in old_ids if k != new_id], len(resealed))
