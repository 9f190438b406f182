"""gatewayd_llm.sealing: real AES-GCM, real key files (modes, atomic rewrites, systemd's
credential directory)."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

import pytest
from gatewayd_llm.sealing import (
    CREDENTIAL_NAME,
    Keyring,
    KeyringError,
    SealError,
    add_key,
    context,
    drop_keys,
    fingerprint,
    generate_key_file,
    key_id,
    token_key_id,
)

SECRET = "sk-live-0123456789abcdefSECRET"
CTX = context("provider:openai-2", "api_key")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm.key"
    generate_key_file(path)
    return path


def test_generated_file_is_0600_with_one_key_whose_id_is_derived(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (line,) = key_file.read_text().splitlines()
    kid, encoded = line.split()
    key = base64.b64decode(encoded)
    assert len(key) == 32 and kid == key_id(key) and len(kid) == 8
    int(kid, 16)
    with pytest.raises(KeyringError, match="exists already"):
        generate_key_file(key_file)


def test_seal_open_round_trip_and_token_shape(key_file: Path) -> None:
    ring = Keyring.load(key_file)
    token = ring.seal(SECRET, CTX)
    prefix, kid, body = token.split(":")
    assert prefix == "gdl1" and kid == ring.sealing_key_id == token_key_id(token)
    assert SECRET not in token and "=" not in body
    assert ring.open(token, CTX) == SECRET
    assert ring.seal(SECRET, CTX) != token  # a fresh nonce each time


def test_a_flipped_byte_fails(key_file: Path) -> None:
    ring = Keyring.load(key_file)
    token = ring.seal(SECRET, CTX)
    prefix, kid, body = token.split(":")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for i in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
        bad = bytearray(raw)
        bad[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
        with pytest.raises(SealError, match=r"^corrupt or tampered value$"):
            ring.open(f"{prefix}:{kid}:{forged}", CTX)
    with pytest.raises(SealError, match="corrupt or tampered"):
        ring.open(f"{prefix}:{kid}:{body[:10]}", CTX)
    with pytest.raises(SealError, match="not a sealed value"):
        ring.open(SECRET, CTX)


def test_a_moved_value_fails(key_file: Path) -> None:
    ring = Keyring.load(key_file)
    token = ring.seal(SECRET, CTX)
    for other in (
        context("provider:openai-3", "api_key"),  # another record
        context("provider:openai-2", "headers"),  # another field
    ):
        with pytest.raises(SealError, match="corrupt or tampered"):
            ring.open(token, other)


def test_fingerprint_is_stable_and_shows_nothing_of_the_secret() -> None:
    fp = fingerprint(SECRET)
    assert fp == fingerprint(SECRET) and fp != fingerprint(SECRET + "x")
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    digest = fp.removeprefix("sha256:")
    assert all(c in "0123456789abcdef" for c in digest)
    assert SECRET[:8] not in fp and SECRET[-8:] not in fp


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_other_readable_file_is_refused(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    with pytest.raises(KeyringError) as err:
        Keyring.load(key_file)
    assert f"chmod 600 {key_file}" in str(err.value) and f"{mode:04o}" in str(err.value)


def test_0400_is_accepted(key_file: Path) -> None:
    key_file.chmod(0o400)
    assert Keyring.load(key_file).sealing_key_id


def test_missing_file_and_no_file_configured(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.load(tmp_path / "nope.key")
    with pytest.raises(KeyringError, match=r"secrets_key_file.*LoadCredential=gatewayd-llm\.key"):
        Keyring.load(None, credentials_dir="")


def test_systemd_credential_mode_is_not_checked(tmp_path: Path, key_file: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    cred = creds / CREDENTIAL_NAME
    cred.write_text(key_file.read_text())
    cred.chmod(0o444)  # systemd's copy: its business
    ring = Keyring.load(None, credentials_dir=str(creds))
    assert ring.path == cred
    assert ring.open(Keyring.load(key_file).seal(SECRET, CTX), CTX) == SECRET


def test_credentials_directory_from_the_environment(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / CREDENTIAL_NAME).write_text(key_file.read_text())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Keyring.load(None).path == tmp_path / CREDENTIAL_NAME
    assert Keyring.load(key_file).path == key_file  # the configured file wins


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_malformed_lines_are_refused_with_the_line_number(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    good = f"{key_id(key)} {base64.b64encode(key).decode()}"
    cases = {
        f"# comment\n\n{good} extra\n": "line 3: expected",
        f"{key_id(key)} !!notbase64!!\n": "line 1: the key is not base64",
        f"{key_id(key)} {base64.b64encode(key[:16]).decode()}\n": "16 bytes, expected 32",
        f"deadbeef {base64.b64encode(key).decode()}\n": "does not match its key",
        f"{good}\n{good}\n": "line 2: duplicate key id",
        "# only a comment\n": "holds no key",
    }
    for text, message in cases.items():
        path = _write(tmp_path / "bad.key", text)
        with pytest.raises(KeyringError, match=message) as err:
            Keyring.load(path)
        assert base64.b64encode(key).decode() not in str(err.value)


def test_add_key_seals_with_the_new_one_and_old_ones_still_open(key_file: Path) -> None:
    ring = Keyring.load(key_file)
    old_id = ring.sealing_key_id
    old_token = ring.seal(SECRET, CTX)
    new_id = add_key(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [line.split()[0] for line in key_file.read_text().splitlines()] == [new_id, old_id]
    # The running keyring notices the file changed before it seals.
    token = ring.seal(SECRET, CTX)
    assert token_key_id(token) == new_id
    assert ring.open(old_token, CTX) == SECRET
    drop_keys(key_file, keep=new_id)
    assert [line.split()[0] for line in key_file.read_text().splitlines()] == [new_id]
    with pytest.raises(KeyringError, match="not in"):
        drop_keys(key_file, keep=old_id)
    # No temporary file is left beside it.
    assert sorted(p.name for p in key_file.parent.iterdir()) == [key_file.name]


def test_open_rereads_the_file_for_an_unknown_key(key_file: Path, tmp_path: Path) -> None:
    daemon = Keyring.load(key_file)  # loaded before the rekey's new key exists
    other = tmp_path / "copy.key"
    other.write_bytes(key_file.read_bytes())
    other.chmod(0o600)
    new_id = add_key(other)
    token = Keyring.load(other).seal(SECRET, CTX)
    assert token_key_id(token) == new_id
    with pytest.raises(SealError) as err:
        daemon.open(token, CTX)
    assert str(err.value) == f"sealed with key {new_id}, which is not in {key_file}"
    os.replace(other, key_file)  # the rekey's file lands
    assert daemon.open(token, CTX) == SECRET  # read again once, then it opens


def test_a_store_sealed_with_the_old_key_alone_is_refused_by_the_new_file(
    key_file: Path, tmp_path: Path
) -> None:
    token = Keyring.load(key_file).seal(SECRET, CTX)
    old_id = token_key_id(token)
    new_file = tmp_path / "new.key"
    generate_key_file(new_file)
    with pytest.raises(SealError) as err:
        Keyring.load(new_file).open(token, CTX)
    assert str(err.value) == f"sealed with key {old_id}, which is not in {new_file}"


def test_a_key_file_made_unusable_after_loading(key_file: Path, tmp_path: Path) -> None:
    ring = Keyring.load(key_file)
    token = ring.seal(SECRET, CTX)
    foreign = tmp_path / "foreign.key"
    generate_key_file(foreign)
    stranger = Keyring.load(foreign).seal(SECRET, CTX)
    add_key(key_file)
    key_file.chmod(0o644)  # changed and now refused: sealing goes on with the keys held
    assert token_key_id(ring.seal(SECRET, CTX)) == token_key_id(token)
    assert ring.open(token, CTX) == SECRET
    with pytest.raises(SealError) as err:
        ring.open(stranger, CTX)  # the re-read fails: said, with the file's problem
    assert str(err.value).startswith(f"sealed with key {token_key_id(stranger)}; key file ")
    assert "chmod 600" in str(err.value)
