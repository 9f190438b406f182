"""``gatewayd audit verify``: check an audit directory's chain and checkpoints.

Each kind of damage has its own exit code (the table is :data:`CODES`, documented in
docs/audit.md). The first problem found is reported: the checkpoints' signatures and their own
chain first (they are the trust anchor), then the records in file order, then the checkpoints
against the records, then the tail.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.observability import audit_chain as fmt

OK = 0
UNREADABLE = 1
CHANGED = 10
DELETED = 11
INSERTED = 12
MOVED = 13
FILE_MISSING = 14
CUT_CONTINUED = 15
CUT_BEFORE_CHECKPOINT = 16
UNSIGNED_TAIL = 17
BAD_SIGNATURE = 18
CHECKPOINTS_REPLACED = 19

CODES = {
    OK: "intact",
    UNREADABLE: "cannot verify (no log, unreadable files, bad public key)",
    CHANGED: "a record was changed",
    DELETED: "records were deleted",
    INSERTED: "a record was inserted",
    MOVED: "records were moved (reordered)",
    FILE_MISSING: "a rotated file is missing",
    CUT_CONTINUED: "the log was cut and continued (a chain restart after a gap)",
    CUT_BEFORE_CHECKPOINT: "the tail was cut before the last checkpoint",
    UNSIGNED_TAIL: "records after the last checkpoint are not signed",
    BAD_SIGNATURE: "checkpoints are not signed by the trusted key",
    CHECKPOINTS_REPLACED: "the checkpoint file was edited or replaced",
}


class Rec(NamedTuple):
    seq: int
    prev: str
    hash: str
    type: str
    cp: int
    file: int
    line: int


@dataclass(slots=True)
class Result:
    code: int
    message: str
    records: int = 0
    checkpoints: int = 0
    warnings: list[str] = field(default_factory=list)


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _where(r: Rec) -> str:
    return f"{fmt.file_name(r.file)}:{r.line}"


def read_records(directory: Path) -> list[Rec]:
    out: list[Rec] = []
    for index, path in fmt.log_files(directory):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            n = data.count(b"\n") + 1
            raise Failure(CHANGED, f"{path.name}:{n}: the last line is incomplete")
        for n, line in enumerate(data.split(b"\n")[:-1], 1):
            try:
                doc = json.loads(line)
                rec = Rec(
                    int(doc["seq"]),
                    str(doc["prev"]),
                    fmt.line_hash(line),
                    str(doc["type"]),
                    int(doc.get("cp", 0)),
                    index,
                    n,
                )
            except (ValueError, KeyError, TypeError):
                raise Failure(CHANGED, f"{path.name}:{n}: not a valid record") from None
            out.append(rec)
    return out


def check_checkpoints(directory: Path, key: Ed25519PublicKey) -> list[dict[str, object]]:
    path = directory / fmt.CHECKPOINTS
    if not path.exists():
        return []
    trusted = fmt.fingerprint(key)
    cps: list[dict[str, object]] = []
    prev = fmt.GENESIS
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            cp = json.loads(line)
            sig = base64.b64decode(cp["sig"], validate=True)
        except (ValueError, KeyError, TypeError):
            raise Failure(CHECKPOINTS_REPLACED, f"{path.name}:{n}: not a checkpoint") from None
        try:
            key.verify(sig, fmt.signed_part(cp))
        except InvalidSignature:
            who = f"key {cp.get('key')}" if cp.get("key") != trusted else "no valid signature"
            raise Failure(
                BAD_SIGNATURE,
                f"{path.name}:{n}: checkpoint {cp.get('n')} is not signed by the trusted key"
                f" {trusted} ({who})",
            ) from None
        if cp.get("n") != n or cp.get("prev") != prev:
            raise Failure(
                CHECKPOINTS_REPLACED,
                f"{path.name}:{n}: checkpoint {cp.get('n')} does not follow checkpoint {n - 1}",
            )
        prev = fmt.line_hash(line)
        cps.append(cp)
    return cps


def _classify(recs: list[Rec], i: int, prev_seq: int, prev_hash: str) -> Failure:
    b = recs[i]
    a = recs[i - 1] if i > 0 else None
    seqs = [r.seq for r in recs]
    first = min(seqs)
    if sorted(seqs) == list(range(first, first + len(recs))):
        by_seq = {r.seq: r for r in recs}
        if all(r.seq == first or r.prev == by_seq[r.seq - 1].hash for r in recs):
            return Failure(
                MOVED, f"{_where(b)}: seq {b.seq} is out of order (expected {prev_seq + 1})"
            )
    nxt = recs[i + 1] if i + 1 < len(recs) else None
    if nxt is not None and nxt.prev == prev_hash and nxt.seq == prev_seq + 1:
        return Failure(INSERTED, f"{_where(b)}: seq {b.seq} was inserted (it is not in the chain)")
    before_a = recs[i - 2] if i > 1 else None
    healed = before_a is not None and b.prev == before_a.hash and b.seq == before_a.seq + 1
    if a is not None and healed:
        return Failure(INSERTED, f"{_where(a)}: seq {a.seq} was inserted (it is not in the chain)")
    if b.seq <= prev_seq:
        if seqs.count(b.seq) > 1:
            return Failure(INSERTED, f"{_where(b)}: a second record with seq {b.seq}")
        return Failure(MOVED, f"{_where(b)}: seq {b.seq} is out of order (expected {prev_seq + 1})")
    if b.seq == prev_seq + 1 or b.prev == prev_hash:
        what = f"seq {a.seq} ({_where(a)})" if a is not None else "the first record"
        return Failure(
            CHANGED, f"{what} was changed: seq {b.seq} ({_where(b)}) does not chain to it"
        )
    missing = range(prev_seq + 1, b.seq)
    if a is not None and b.file > a.file + 1:
        names = ", ".join(fmt.file_name(k) for k in range(a.file + 1, b.file))
        return Failure(
            FILE_MISSING, f"rotated file missing: {names} (seq {missing.start}-{missing.stop - 1})"
        )
    if any(s in missing for s in seqs):
        return Failure(MOVED, f"{_where(b)}: seq {b.seq} is out of order (expected {prev_seq + 1})")
    gone = (
        f"record seq {missing.start} was"
        if len(missing) == 1
        else f"records seq {missing.start}-{missing.stop - 1} were"
    )
    return Failure(DELETED, f"{_where(b)}: {gone} deleted before seq {b.seq}")


def check_records(recs: list[Rec], files: list[int]) -> None:
    expected_files = list(range(1, files[-1] + 1)) if files else []
    if files != expected_files:
        gone = sorted(set(expected_files) - set(files))
        raise Failure(
            FILE_MISSING, "rotated file missing: " + ", ".join(fmt.file_name(k) for k in gone)
        )
    prev_seq, prev_hash = 0, fmt.GENESIS
    for i, r in enumerate(recs):
        if i > 0 and r.type == fmt.RESTART and r.prev == fmt.GENESIS and r.seq > prev_seq:
            raise Failure(
                CUT_CONTINUED,
                f"{_where(r)}: the log was cut after seq {prev_seq} and continued at seq {r.seq}"
                " (a chain restart)",
            )
        if r.seq != prev_seq + 1 or r.prev != prev_hash:
            raise _classify(recs, i, prev_seq, prev_hash)
        prev_seq, prev_hash = r.seq, r.hash


def check_against(recs: list[Rec], cps: list[dict[str, object]]) -> None:
    known = max((r.cp for r in recs), default=0)
    if known > len(cps):
        raise Failure(
            CHECKPOINTS_REPLACED,
            f"the log refers to {known} checkpoints; the checkpoint file has {len(cps)}",
        )
    by_seq = {r.seq: r for r in recs}
    last = recs[-1].seq if recs else 0
    for cp in cps:
        seq = cp.get("seq")
        r = by_seq.get(seq) if isinstance(seq, int) else None
        if r is None:
            continue
        if cp.get("hash") != r.hash:
            if r.seq == last and cp is cps[-1]:
                raise Failure(CHANGED, f"seq {r.seq} ({_where(r)}) was changed after it was signed")
            raise Failure(
                CHECKPOINTS_REPLACED,
                f"checkpoint {cp.get('n')} signs another record than seq {r.seq} of this log",
            )
        if cp.get("file") != fmt.file_name(r.file):
            raise Failure(
                CHECKPOINTS_REPLACED,
                f"checkpoint {cp.get('n')} places seq {r.seq} in {cp.get('file')}, not in"
                f" {fmt.file_name(r.file)}",
            )
    if cps:
        cp_seq = cps[-1].get("seq")
        if isinstance(cp_seq, int) and cp_seq > last:
            raise Failure(
                CUT_BEFORE_CHECKPOINT,
                f"the log ends at seq {last}, but checkpoint {cps[-1].get('n')} signed"
                f" seq {cp_seq}",
            )


def check_saved(directory: Path, saved: Path) -> None:
    """A copy of the checkpoint file kept elsewhere must be where the current one starts."""
    copy = saved.read_bytes().splitlines()
    path = directory / fmt.CHECKPOINTS
    current = path.read_bytes().splitlines() if path.exists() else []
    for n, line in enumerate(copy, 1):
        if n > len(current) or current[n - 1] != line:
            raise Failure(
                CHECKPOINTS_REPLACED,
                f"checkpoint {n} of the saved copy {saved} is not in {fmt.CHECKPOINTS}",
            )


def verify(
    directory: Path,
    public_key: Path | None = None,
    allow_unsigned: bool = False,
    saved_checkpoints: Path | None = None,
) -> Result:
    warnings: list[str] = []
    if public_key is None:
        public_key = directory / fmt.PUBLIC_KEY
        warnings.append(
            f"checked against {public_key}, the key beside the log: whoever could change the"
            " log could change it too; pass --public-key with a copy kept elsewhere"
        )
    try:
        key = fmt.load_public_key(public_key)
    except (OSError, ValueError) as exc:
        return Result(UNREADABLE, f"cannot read the public key {public_key}: {exc}")
    if not directory.is_dir():
        return Result(UNREADABLE, f"{directory}: no such directory")
    try:
        files = [i for i, _ in fmt.log_files(directory)]
        cps = check_checkpoints(directory, key)
        if saved_checkpoints is not None:
            check_saved(directory, saved_checkpoints)
        recs = read_records(directory)
        if not recs and not cps:
            return Result(UNREADABLE, f"{directory}: no audit records", warnings=warnings)
        check_records(recs, files)
        check_against(recs, cps)
        signed = cps[-1].get("seq") if cps else 0
        last = recs[-1].seq if recs else 0
        assert isinstance(signed, int)
        if last > signed:
            message = (
                f"{last - signed} records after the last checkpoint (seq {signed}) are not"
                f" signed (seq {signed + 1}-{last})"
            )
            if not allow_unsigned:
                raise Failure(UNSIGNED_TAIL, message)
            warnings.append(message)
    except Failure as f:
        return Result(f.code, f.message, warnings=warnings)
    except OSError as exc:
        return Result(UNREADABLE, f"cannot read the audit log: {exc}", warnings=warnings)
    return Result(
        OK,
        f"ok: {len(recs)} records in {len(files)} files, {len(cps)} checkpoints",
        len(recs),
        len(cps),
        warnings,
    )
