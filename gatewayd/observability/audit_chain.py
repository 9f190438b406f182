"""The audit log's on-disk format, shared by the writer, ``verify`` and ``export``.

A directory holds ``audit-000001.jsonl``, ``audit-000002.jsonl``... (one JSON record a line),
``checkpoints.jsonl`` (signed checkpoints), ``audit.key`` (the Ed25519 signing key, 0600) and
``audit.pub`` (its public key, PEM). A record's ``prev`` is the SHA-256 (hex) of the previous
record's line (its bytes without the newline), across files; the first record's is
:data:`GENESIS`, and so is that of a record that restarts the chain (type ``audit.restart``).
A record's ``cp`` is how many checkpoints had been written when it was, so a checkpoint file
that lost checkpoints the log knew of is noticed. A checkpoint signs ``{n, prev, seq, hash,
file, time}``: its number, the hash of the previous checkpoint's line, the sequence number and
hash of the last record it covers and the file that record is in.

Writers (the daemon's one writer task, and ``gatewayd keys``) append under an exclusive
``flock`` on ``audit.lock`` and re-read the tail when another process has appended.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
FILE_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")
CHECKPOINTS = "checkpoints.jsonl"
PRIVATE_KEY = "audit.key"
PUBLIC_KEY = "audit.pub"
LOCK = "audit.lock"
RESTART = "audit.restart"


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def encode(doc: dict[str, Any]) -> bytes:
    """One line's bytes (no newline): compact JSON in the given key order."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def file_name(index: int) -> str:
    return f"audit-{index:06d}.jsonl"


def log_files(directory: Path) -> list[tuple[int, Path]]:
    """The directory's log files by index."""
    out = []
    for path in directory.iterdir() if directory.is_dir() else []:
        m = FILE_RE.match(path.name)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def signed_part(cp: dict[str, Any]) -> bytes:
    keys = ("n", "prev", "seq", "hash", "file", "time")
    return encode({k: cp.get(k) for k in keys})


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(key: Ed25519PrivateKey, cp: dict[str, Any]) -> dict[str, Any]:
    sig = base64.b64encode(key.sign(signed_part(cp))).decode()
    return {**cp, "key": fingerprint(key.public_key()), "sig": sig}


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; ValueError when it is not one."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def load_or_create_key(directory: Path) -> Ed25519PrivateKey:
    """The directory's signing key, made (0600, with ``audit.pub`` beside it) the first time."""
    path = directory / PRIVATE_KEY
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / PUBLIC_KEY).write_bytes(public)
    return key


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the directory's writer lock (blocking)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def last_line(path: Path) -> bytes | None:
    """The last complete line of a file (without its newline), or None when it has none."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = 64 * 1024
        pos = end
        data = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            body = data[:-1] if data.endswith(b"\n") else data
            nl = body.rfind(b"\n")
            if nl >= 0 or pos == 0:
                return body[nl + 1 :] if body else None
    return None


@dataclass(slots=True)
class ChainState:
    """Where the next record goes and what it chains to; what the last checkpoint covered."""

    index: int = 1  # the current file's number
    size: int = 0  # the current file's size
    seq: int = 0  # the last record's sequence number
    prev: str = GENESIS  # the last record's hash
    checkpoints: int = 0  # how many checkpoints the file holds
    cp_prev: str = GENESIS  # the last checkpoint line's hash
    cp_seq: int = 0  # the last checkpoint's record
    cp_size: int = 0  # the checkpoint file's size
    broken: str | None = None  # why the tail could not be read (the next record restarts)

    @property
    def unsigned(self) -> int:
        return self.seq - self.cp_seq


def read_state(directory: Path) -> ChainState:
    """The chain's tail as the files are now (call with the lock held)."""
    state = ChainState()
    cps = directory / CHECKPOINTS
    if cps.exists():
        state.cp_size = cps.stat().st_size
        line = last_line(cps)
        if line:
            try:
                cp = json.loads(line)
                state.checkpoints = int(cp["n"])
                state.cp_seq = int(cp["seq"])
                state.cp_prev = line_hash(line)
            except (ValueError, KeyError, TypeError):
                state.broken = "the last checkpoint cannot be read"
    files = log_files(directory)
    if not files:
        if state.cp_seq:
            state.broken = f"no log file, but checkpoints up to seq {state.cp_seq}"
            state.seq = state.cp_seq
        return state
    index, path = files[-1]
    state.index = index
    state.size = path.stat().st_size
    line = last_line(path)
    raw = path.read_bytes()[-1:] if state.size else b""
    if line is None and len(files) > 1:  # an empty new file: chain to the previous one
        line = last_line(files[-2][1])
    if line is not None:
        try:
            rec = json.loads(line)
            state.seq = int(rec["seq"])
            state.prev = line_hash(line)
        except (ValueError, KeyError, TypeError):
            state.broken = f"the last line of {path.name} is not a record"
    if raw and raw != b"\n":
        state.broken = f"{path.name} ends in a partial line"
    if state.broken is None and state.seq < state.cp_seq:
        state.broken = f"the log ends at seq {state.seq}, before checkpoint seq {state.cp_seq}"
    if state.broken is not None:
        state.seq = max(state.seq, state.cp_seq)
    return state
