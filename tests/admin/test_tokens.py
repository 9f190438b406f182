"""The admin token file (gatewayd/admin/tokens.py): real files, real bcrypt."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import bcrypt
import pytest

from gatewayd.admin.tokens import (
    TOKEN_PREFIX,
    TokenFile,
    TokenFileError,
    add_token,
    hash_token,
    new_token,
    read_tokens,
    remove_token,
    token_path,
)


def test_add_read_remove(tmp_path: Path) -> None:
    path = token_path(tmp_path / "state")
    assert read_tokens(path) == []  # no file: no stored tokens
    token = new_token()
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    hashed = hash_token(token, rounds=4)
    assert bcrypt.checkpw(token.encode(), hashed.encode())
    add_token(path, "ops", "operator", hashed)
    add_token(path, "dash", "viewer", hash_token(new_token(), rounds=4))
    assert [(t.id, t.role) for t in read_tokens(path)] == [("ops", "operator"), ("dash", "viewer")]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()  # the hash only
    gone = remove_token(path, "ops")
    assert gone.id == "ops"
    assert [t.id for t in read_tokens(path)] == ["dash"]
    # the atomic writes leave no temporary file behind
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "admin_tokens.json",
        "admin_tokens.json.lock",
    ]


def test_refusals(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    add_token(path, "ops", "operator", hash_token("t", rounds=4))
    with pytest.raises(TokenFileError, match="'ops' exists already"):
        add_token(path, "ops", "viewer", hash_token("u", rounds=4))
    with pytest.raises(TokenFileError, match="no stored admin token with id 'nope'"):
        remove_token(path, "nope")
    with pytest.raises(TokenFileError, match="invalid token id"):
        add_token(path, "bad id!", "viewer", hash_token("u", rounds=4))
    assert [t.id for t in read_tokens(path)] == ["ops"]


def test_a_broken_file_is_refused_without_its_secrets(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.write_text("{not json")
    with pytest.raises(TokenFileError, match="not JSON"):
        read_tokens(path)
    secret_hash = hash_token("t", rounds=4)
    path.write_text(json.dumps({"version": 1, "tokens": [{"id": "x", "hash": secret_hash}]}))
    with pytest.raises(TokenFileError, match=r"tokens\.0\.role") as info:
        read_tokens(path)
    assert secret_hash not in str(info.value)
    twice = {"id": "x", "role": "viewer", "hash": secret_hash, "created": 1.0}
    path.write_text(json.dumps({"version": 1, "tokens": [twice, twice]}))
    with pytest.raises(TokenFileError, match="same token id twice"):
        read_tokens(path)


def test_the_daemon_view_rereads_on_change_and_fails_closed(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    view = TokenFile(path)
    assert view.tokens() == []
    add_token(path, "a", "viewer", hash_token("t", rounds=4))
    assert [t.id for t in view.tokens()] == ["a"]
    add_token(path, "b", "operator", hash_token("u", rounds=4))
    assert [t.id for t in view.tokens()] == ["a", "b"]
    remove_token(path, "a")
    assert [t.id for t in view.tokens()] == ["b"]
    path.write_text("garbage")  # a broken file: no stored token counts
    assert view.tokens() == []
    path.unlink()
    assert view.tokens() == []


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    hashed = hash_token("t", rounds=4)
    threads = [
        threading.Thread(target=add_token, args=(path, f"t{i}", "viewer", hashed))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.id for t in read_tokens(path)) == sorted(f"t{i}" for i in range(16))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".admin_tokens")]
