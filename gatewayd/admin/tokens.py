"""Admin tokens stored in ``<state.dir>/admin_tokens.json`` (``gatewayd admin token create
--store``), beside the ones in ``admin.tokens``.

The file holds bcrypt hashes only, is mode 0600 and is written atomically (a temporary file in the
same directory, fsynced, then renamed over it) under an advisory lock, so two commands at once do
not lose an update and a reader never sees half a file. The daemon re-reads it when its mtime,
size or inode changes (one ``stat`` per admin request): a revoked token is refused on the next
call. A file that cannot be read or parsed counts as no stored tokens (fail closed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("gatewayd.admin")
FILE_NAME = "admin_tokens.json"
TOKEN_PREFIX = "gwadm_"
BCRYPT_ROUNDS = 12
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class StoredToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_RE.pattern)
    role: Literal["viewer", "operator"]
    hash: str = Field(repr=False)
    created: float


class TokenFileData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    tokens: list[StoredToken] = []


class TokenFileError(Exception):
    """The token file cannot be read, parsed or written, or a change to it is refused."""


def token_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def new_token() -> str:
    """A new admin token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(token.encode(), bcrypt.gensalt(rounds)).decode()


def check_id(token_id: str) -> None:
    if not ID_RE.match(token_id):
        raise TokenFileError(
            f"invalid token id {token_id!r}: 1-64 letters, digits, '_', '.', '@', '-'"
        )


def read_tokens(path: Path) -> list[StoredToken]:
    """The stored tokens (none when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = TokenFileData.model_validate(json.loads(text))
    except ValidationError as exc:  # the error's location and message, never the input
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise TokenFileError(
            f"{path} is not a valid admin token file: {where}: {first['msg']}"
        ) from None
    except ValueError:
        raise TokenFileError(f"{path} is not a valid admin token file (not JSON)") from None
    ids = [t.id for t in data.tokens]
    if len(ids) != len(set(ids)):
        raise TokenFileError(f"{path} names the same token id twice")
    return list(data.tokens)


def write_tokens(path: Path, tokens: list[StoredToken]) -> None:
    """Replace the file's tokens atomically; the file is mode 0600."""
    text = TokenFileData(tokens=tokens).model_dump_json(indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the token file's advisory lock (``admin_tokens.json.lock``) for an update."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise TokenFileError(f"cannot open {path}.lock: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_token(
    path: Path, token_id: str, role: Literal["viewer", "operator"], hashed: str
) -> StoredToken:
    """Store a new token's hash; an id already stored is refused."""
    check_id(token_id)
    with locked(path):
        tokens = read_tokens(path)
        if any(t.id == token_id for t in tokens):
            raise TokenFileError(f"a stored admin token with id {token_id!r} exists already")
        record = StoredToken(id=token_id, role=role, hash=hashed, created=time.time())
        write_tokens(path, [*tokens, record])
    return record


def remove_token(path: Path, token_id: str) -> StoredToken:
    """Revoke (delete) a stored token."""
    with locked(path):
        tokens = read_tokens(path)
        gone = next((t for t in tokens if t.id == token_id), None)
        if gone is None:
            raise TokenFileError(f"no stored admin token with id {token_id!r} in {path}")
        write_tokens(path, [t for t in tokens if t.id != token_id])
    return gone


class TokenFile:
    """The daemon's view of the token file: re-read only when it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._tokens: list[StoredToken] = []

    def tokens(self) -> list[StoredToken]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._tokens = None, []
            return []
        except OSError as exc:
            log.warning("admin token file unreadable", extra={"error": exc.strerror})
            self._seen, self._tokens = None, []
            return []
        seen = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            try:
                self._tokens = read_tokens(self.path)
            except TokenFileError as exc:
                log.warning(
                    "admin token file refused; no stored token counts", extra={"error": str(exc)}
                )
                self._tokens = []
            self._seen = seen
        return self._tokens
