"""The audit tamper matrix: real log files, edited byte-wise; each kind of damage has its own
exit code (gatewayd.observability.audit_verify.CODES, docs/audit.md)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.observability import audit_chain as fmt
from gatewayd.observability import audit_verify as v
from gatewayd.observability.audit import ChainWriter, Entry


def build(directory: Path, records: int = 60, every: int = 10, size: int = 4000) -> ChainWriter:
    """A log of ``records`` records over several files, a checkpoint every ``every``."""
    w = ChainWriter(directory, size)
    for i in range(records):
        w.append([Entry("admin.mutation", "ops", "127.0.0.1", {"path": f"/_admin/x/{i}"})])
        if (i + 1) % every == 0:
            w.checkpoint()
    return w


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, Path]:
    """(the audit directory, a trusted copy of its public key kept elsewhere)."""
    directory = tmp_path / "audit"
    build(directory)
    trusted = tmp_path / "trusted.pub"
    shutil.copy(directory / fmt.PUBLIC_KEY, trusted)
    return directory, trusted


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def files(directory: Path) -> list[Path]:
    return [p for _, p in fmt.log_files(directory)]


def check(log: tuple[Path, Path], code: int, allow_unsigned: bool = False) -> v.Result:
    result = v.verify(log[0], log[1], allow_unsigned)
    assert result.code == code, result.message
    return result


def test_an_untouched_log_verifies(log: tuple[Path, Path]) -> None:
    assert len(files(log[0])) >= 3  # rotated
    result = check(log, v.OK)
    assert (result.records, result.checkpoints) == (60, 6)
    assert result.warnings == []


def test_each_new_file_chains_to_the_last_record_of_the_previous(log: tuple[Path, Path]) -> None:
    first, second = files(log[0])[:2]
    last = lines(first)[-1].rstrip(b"\n")
    assert json.loads(lines(second)[0])["prev"] == fmt.line_hash(last)


def test_a_changed_byte(log: tuple[Path, Path]) -> None:
    path = files(log[0])[1]
    data = bytearray(path.read_bytes())
    at = data.index(b"/_admin/x/") + 3
    data[at] ^= 0x01  # one bit of one byte, the JSON stays valid
    path.write_bytes(bytes(data))
    assert "was changed" in check(log, v.CHANGED).message


def test_a_changed_byte_in_the_last_signed_record(log: tuple[Path, Path]) -> None:
    path = files(log[0])[-1]
    data = path.read_bytes()
    assert data.count(b"/_admin/x/59") == 1
    path.write_bytes(data.replace(b"/_admin/x/59", b"/_admin/x/5X"))
    assert "changed after it was signed" in check(log, v.CHANGED).message


def test_a_record_deleted(log: tuple[Path, Path]) -> None:
    path = files(log[0])[1]
    ls = lines(path)
    path.write_bytes(b"".join(ls[:2] + ls[3:]))
    assert "deleted" in check(log, v.DELETED).message


def test_a_record_inserted(log: tuple[Path, Path]) -> None:
    path = files(log[0])[1]
    ls = lines(path)
    before = json.loads(ls[1])
    forged = {**before, "prev": fmt.line_hash(ls[1].rstrip(b"\n")), "seq": before["seq"] + 1}
    forged["what"] = {"path": "/_admin/forged"}
    path.write_bytes(b"".join([*ls[:2], fmt.encode(forged) + b"\n", *ls[2:]]))
    assert "inserted" in check(log, v.INSERTED).message


def test_a_record_moved(log: tuple[Path, Path]) -> None:
    path = files(log[0])[1]
    ls = lines(path)
    ls[1], ls[3] = ls[3], ls[1]
    path.write_bytes(b"".join(ls))
    assert "out of order" in check(log, v.MOVED).message


def test_a_rotated_file_missing(log: tuple[Path, Path]) -> None:
    files(log[0])[1].unlink()
    assert "audit-000002.jsonl" in check(log, v.FILE_MISSING).message


def test_the_tail_cut_before_the_last_checkpoint(log: tuple[Path, Path]) -> None:
    path = files(log[0])[-1]
    path.write_bytes(b"".join(lines(path)[:-3]))
    assert "ends at seq 57" in check(log, v.CUT_BEFORE_CHECKPOINT).message


def test_the_tail_after_the_last_checkpoint(log: tuple[Path, Path]) -> None:
    """Records after the last checkpoint: present but unsigned is its own code (a warning with
    --allow-unsigned-tail); cut entirely, nothing can tell (docs/audit.md says so)."""
    w = ChainWriter(log[0], 4000)
    w.append([Entry("admin.mutation", "ops", None, {"n": i}) for i in range(3)])
    assert "3 records after the last checkpoint" in check(log, v.UNSIGNED_TAIL).message
    assert check(log, v.OK, allow_unsigned=True).warnings
    path = files(log[0])[-1]
    path.write_bytes(b"".join(lines(path)[:-1]))  # cut after the checkpoint: 2 remain
    check(log, v.UNSIGNED_TAIL)
    path.write_bytes(b"".join(lines(path)[:-2]))  # all of them cut
    check(log, v.OK)


def test_a_log_cut_and_continued(log: tuple[Path, Path]) -> None:
    path = files(log[0])[-1]
    path.write_bytes(b"".join(lines(path)[:-4]))
    w = ChainWriter(log[0], 4000)  # the writer finds the log shorter than its checkpoints
    w.append([Entry("admin.mutation", "ops", None, {"after": "cut"})])
    w.checkpoint()
    restart = json.loads(lines(files(log[0])[-1])[0])
    assert (restart["type"], restart["prev"]) == (fmt.RESTART, fmt.GENESIS)
    assert "cut after seq 56 and continued at seq 61" in check(log, v.CUT_CONTINUED).message


def test_checkpoints_re_signed_with_another_key(log: tuple[Path, Path]) -> None:
    directory = log[0]
    other = Ed25519PrivateKey.generate()
    cps = [json.loads(line) for line in lines(directory / fmt.CHECKPOINTS)]
    out, prev = [], fmt.GENESIS
    for cp in cps:
        cp = fmt.sign_checkpoint(other, {**cp, "prev": prev})
        line = fmt.encode(cp)
        prev = fmt.line_hash(line)
        out.append(line + b"\n")
    (directory / fmt.CHECKPOINTS).write_bytes(b"".join(out))
    pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / fmt.PUBLIC_KEY).write_bytes(pem)
    assert "not signed by the trusted key" in check(log, v.BAD_SIGNATURE).message
    # Against the key beside the log the forgery passes: why --public-key matters.
    beside = v.verify(directory, None)
    assert beside.code == v.OK and "beside the log" in beside.warnings[0]


def test_the_checkpoint_file_replaced_by_another_logs(
    log: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = log[0]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(directory / fmt.PRIVATE_KEY, other / fmt.PRIVATE_KEY)  # even with the same key
    build(other, records=60, every=10)
    shutil.copy(other / fmt.CHECKPOINTS, directory / fmt.CHECKPOINTS)
    assert "signs another record" in check(log, v.CHECKPOINTS_REPLACED).message


def test_the_checkpoint_file_replaced_by_an_older_copy(log: tuple[Path, Path]) -> None:
    path = log[0] / fmt.CHECKPOINTS
    path.write_bytes(b"".join(lines(path)[:3]))
    assert "refers to 5 checkpoints" in check(log, v.CHECKPOINTS_REPLACED).message


def test_a_checkpoint_edited(log: tuple[Path, Path]) -> None:
    path = log[0] / fmt.CHECKPOINTS
    ls = lines(path)
    ls[2], ls[3] = ls[3], ls[2]
    path.write_bytes(b"".join(ls))
    check(log, v.CHECKPOINTS_REPLACED)


def test_no_log_or_no_key(tmp_path: Path, log: tuple[Path, Path]) -> None:
    assert v.verify(tmp_path / "none", log[1]).code == v.UNREADABLE
    assert v.verify(log[0], tmp_path / "missing.pub").code == v.UNREADABLE


def test_the_codes_are_distinct() -> None:
    assert len(set(v.CODES)) == len(v.CODES) == 12


def test_100k_records_verify_quickly(tmp_path: Path) -> None:
    """docs/audit.md's figure comes from this test's output (the bound here is generous)."""
    directory = tmp_path / "big"
    w = ChainWriter(directory, 8 * 1024 * 1024)
    what = {"method": "POST", "path": "/_admin/keys", "status": 201, "after": {"key": "***"}}
    for _ in range(100):
        w.append([Entry("key.create", "ops", "127.0.0.1", what) for _ in range(1000)])
        w.checkpoint()
    started = time.monotonic()
    result = v.verify(directory, directory / fmt.PUBLIC_KEY)
    took = time.monotonic() - started
    print(f"100,000 records verified in {took:.2f} s")
    assert result.code == v.OK and result.records == 100_000
    assert took < 10.0


def rewrite_with_the_same_key(directory: Path) -> None:
    """What someone who can read audit.key can do: change a record, re-chain everything after
    it and re-sign every checkpoint with the log's own key."""
    key = fmt.load_or_create_key(directory)
    docs = []
    for path in files(directory):
        docs += [(path, json.loads(line)) for line in lines(path)]
    docs[5][1]["what"] = {"path": "/_admin/rewritten"}
    prev, out, hashes = fmt.GENESIS, {}, {}
    for path, doc in docs:
        doc["prev"] = prev
        line = fmt.encode(doc)
        prev = hashes[doc["seq"]] = fmt.line_hash(line)
        out.setdefault(path, []).append(line + b"\n")
    for path, ls in out.items():
        path.write_bytes(b"".join(ls))
    cps, prev = [], fmt.GENESIS
    for line in lines(directory / fmt.CHECKPOINTS):
        cp = json.loads(line)
        cp = fmt.sign_checkpoint(key, {**cp, "prev": prev, "hash": hashes[cp["seq"]]})
        encoded = fmt.encode(cp)
        prev = fmt.line_hash(encoded)
        cps.append(encoded + b"\n")
    (directory / fmt.CHECKPOINTS).write_bytes(b"".join(cps))


def test_a_saved_copy_of_the_checkpoints_catches_a_rewrite_with_the_log_s_own_key(
    log: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, trusted = log
    saved = tmp_path / "saved-checkpoints.jsonl"
    shutil.copy(directory / fmt.CHECKPOINTS, saved)
    ChainWriter(directory, 4000).append([Entry("admin.mutation", "ops")])  # the log goes on
    ChainWriter(directory, 4000).checkpoint()
    assert v.verify(directory, trusted, saved_checkpoints=saved).code == v.OK
    rewrite_with_the_same_key(directory)
    check(log, v.OK)  # the signing key was stolen: the chain and signatures prove nothing
    result = v.verify(directory, trusted, saved_checkpoints=saved)
    assert result.code == v.CHECKPOINTS_REPLACED and "saved copy" in result.message
