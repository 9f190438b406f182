"""Provider secrets at rest: AES-GCM (``cryptography``) under a master key read from a file.

A key file holds one key per line, ``<key id> <base64 of 32 bytes>`` (blank lines and ``#``
comments are allowed): the first line seals, every line opens. A key id is 8 hex characters
derived from the key (HKDF-SHA256), so a line whose id does not match its key is refused. The
file is ``llm.secrets_key_file`` (mode 0600 or 0400, checked) or, under systemd,
``$CREDENTIALS_DIRECTORY/gatewayd-llm.key`` (``LoadCredential=gatewayd-llm.key:/etc/...``:
systemd owns that copy's mode, so it is not checked).

A sealed value is ``gdl1:<key id>:<base64url(nonce + ciphertext)>`` with a random 96-bit
nonce; the additional data is the value's context (:func:`context`, e.g.
``provider:openai-2:api_key``), so a value copied onto another record or field does not open.

Messages of :class:`KeyringError` and :class:`SealError` name files and key ids, never a key
or a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CREDENTIAL_NAME",
    "Keyring",
    "KeyringError",
    "SealError",
    "add_key",
    "context",
    "drop_keys",
    "fingerprint",
    "generate_key_file",
    "key_id",
    "token_key_id",
]

CREDENTIAL_NAME = "gatewayd-llm.key"  # the file's name in $CREDENTIALS_DIRECTORY
PREFIX = "gdl1"
KEY_BYTES = 32
NONCE_BYTES = 12
_FINGERPRINT_LABEL = b"gatewayd-llm fingerprint v1"


class KeyringError(ValueError):
    """The key file cannot be used (missing, readable by others, malformed)."""


class SealError(ValueError):
    """A sealed value does not open (unknown key, corrupt, tampered or moved)."""


def context(record: str, field: str) -> str:
    """The additional data a value of ``record`` (e.g. ``provider:openai-2``) in ``field`` is
    sealed with: ``provider:openai-2:api_key``."""
    return f"{record}:{field}"


def key_id(key: bytes) -> str:
    """The 8 hex characters that name ``key`` (HKDF-SHA256 of it: they say nothing of it)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=4, salt=None, info=b"gatewayd-llm key id")
    return hkdf.derive(key).hex()


def fingerprint(secret: str) -> str:
    """What the API shows instead of a secret: ``sha256:`` and 16 hex characters of an
    HMAC-SHA256 of it under a constant label (equal secrets, equal fingerprints; none of the
    secret's characters)."""
    digest = hmac.new(_FINGERPRINT_LABEL, secret.encode(), hashlib.sha256).hexdigest()
    return "sha256:" + digest[:16]


def token_key_id(token: str) -> str | None:
    """The id of the key that sealed ``token``, or None when it is not a sealed value."""
    parts = token.split(":")
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 8:
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    aead: AESGCM


def _parse(text: str, source: str) -> list[_Key]:
    keys: list[_Key] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise KeyringError(f"{where}: expected '<key id> <base64 of 32 bytes>'")
        kid, encoded = fields
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise KeyringError(f"{where}: the key is not base64") from None
        if len(key) != KEY_BYTES:
            raise KeyringError(f"{where}: the key is {len(key)} bytes, expected {KEY_BYTES}")
        if kid != key_id(key):
            raise KeyringError(f"{where}: key id {kid!r} does not match its key")
        if kid in seen:
            raise KeyringError(f"{where}: duplicate key id {kid}")
        seen.add(kid)
        keys.append(_Key(kid, AESGCM(key)))
    if not keys:
        raise KeyringError(f"{source} holds no key")
    return keys


def _read(path: Path, check_mode: bool) -> tuple[list[_Key], tuple[int, int, int]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyringError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyringError(f"key file {path}: {exc.strerror}") from None
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(st.st_mode)
        raise KeyringError(
            f"key file {path} has mode {mode:04o}: it must be 0600 or 0400 (chmod 600 {path})"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringError(f"key file {path} cannot be read: {exc}") from None
    return _parse(text, str(path)), (st.st_ino, st.st_size, st.st_mtime_ns)


class Keyring:
    """The master keys of one key file: :meth:`seal` with the first, :meth:`open` with any.
    The file is read again when it changed before a seal (a rekey added a key: new values get
    it) and when a value names a key this keyring does not hold (once per such value)."""

    __slots__ = ("_check_mode", "_keys", "_stamp", "path")

    def __init__(self, path: Path, check_mode: bool = True) -> None:
        self.path = path
        self._check_mode = check_mode
        self._keys, self._stamp = _read(path, check_mode)

    @classmethod
    def load(
        cls,
        path: Path | None,
        credentials_dir: str | None = None,
    ) -> Keyring:
        """``path`` (``llm.secrets_key_file``; its mode checked) or else the systemd credential
        ``gatewayd-llm.key`` in ``credentials_dir`` (None: ``$CREDENTIALS_DIRECTORY``; ``""``:
        none). Raises :class:`KeyringError`."""
        if credentials_dir is None:
            credentials_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if path is not None:
            return cls(Path(path))
        if credentials_dir:
            return cls(Path(credentials_dir) / CREDENTIAL_NAME, check_mode=False)
        raise KeyringError(
            "no key file for provider secrets: set llm.secrets_key_file, or run under systemd "
            f"with LoadCredential={CREDENTIAL_NAME}:/etc/gatewayd/llm.key"
        )

    @property
    def sealing_key_id(self) -> str:
        return self._keys[0].id

    @property
    def key_ids(self) -> list[str]:
        return [k.id for k in self._keys]

    def reload(self) -> None:
        """Read the key file again; when it cannot be used now, :class:`KeyringError` and the
        keys held so far are kept."""
        self._keys, self._stamp = _read(self.path, self._check_mode)

    def _refresh_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if (st.st_ino, st.st_size, st.st_mtime_ns) != self._stamp:
            with contextlib.suppress(KeyringError):  # unusable now: seal with the keys we have
                self.reload()

    def seal(self, plaintext: str, context: str) -> str:
        self._refresh_if_changed()
        key = self._keys[0]
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return f"{PREFIX}:{key.id}:{body}"

    def open(self, token: str, context: str) -> str:
        kid = token_key_id(token)
        if kid is None:
            raise SealError("not a sealed value")
        key = self._find(kid)
        if key is None:
            try:
                self.reload()  # a rekey may have added the key since
            except KeyringError as exc:
                raise SealError(f"sealed with key {kid}; {exc}") from None
            key = self._find(kid)
            if key is None:
                raise SealError(f"sealed with key {kid}, which is not in {self.path}")
        body = token.split(":", 2)[2]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise SealError("corrupt or tampered value") from None
        if len(raw) < NONCE_BYTES + 16:
            raise SealError("corrupt or tampered value")
        try:
            plain = key.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SealError("corrupt or tampered value") from None
        return plain.decode()

    def _find(self, kid: str) -> _Key | None:
        for key in self._keys:
            if key.id == kid:
                return key
        return None


# -- the key file --------------------------------------------------------------------------------


def _line(key: bytes) -> str:
    return f"{key_id(key)} {base64.b64encode(key).decode()}\n"


def _write(path: Path, text: str) -> None:
    """``text`` as ``path``, atomically (a 0600 temporary file beside it, then rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _lines(path: Path) -> list[str]:
    """The key lines of ``path`` (validated), without comments."""
    _read(path, check_mode=True)
    return [
        line.strip() + "\n"
        for line in path.read_text(encoding="ascii").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def generate_key_file(path: Path) -> str:
    """A new key file (mode 0600) with one fresh key; its key id. Refuses to replace a file."""
    if path.exists():
        raise KeyringError(f"key file {path} exists already (use gatewayd llm rekey)")
    key = secrets.token_bytes(KEY_BYTES)
    _write(path, _line(key))
    return key_id(key)


def add_key(path: Path) -> str:
    """A fresh key as the first line of ``path`` (it seals from now on; the old lines stay and
    open what they sealed); its key id."""
    old = _lines(path)
    key = secrets.token_bytes(KEY_BYTES)
    _write(path, _line(key) + "".join(old))
    return key_id(key)


def drop_keys(path: Path, keep: str) -> None:
    """Every key of ``path`` but ``keep``."""
    lines = [line for line in _lines(path) if line.split()[0] == keep]
    if not lines:
        raise KeyringError(f"key {keep} is not in {path}")
    _write(path, "".join(lines))
