"""The audit log's hash chain and its signed checkpoints, as pure functions.

Each record's hash is an HMAC-SHA-256, keyed with a secret kept outside the
database (``DATA/audit-key``), over the previous record's hash and the record's
own fields in a canonical JSON form (sorted keys, no spaces). Without the key,
someone who can write the database cannot recompute a consistent chain after
editing it; with the key alone, nothing can be edited either.
Verifying walks the records in order and recomputes: the first record whose
stored ``prev_hash`` or ``hash`` disagrees is where the log was changed, a
record removed (the next one's ``prev_hash`` no longer matches) or one inserted.
``seq`` is part of the hash too, so renumbering rows is caught as well.

A chain alone cannot show that records were cut off its *end*: what is left is
still a valid chain (an empty log is one too). A ``Checkpoint`` closes that gap:
"record ``seq`` had hash ``hash``", HMAC'd with the same key under its own
context string (so no record hash can pass for a checkpoint's mac). The server
keeps one beside the key (``DATA/audit-anchor``, moved forward on every append)
and ``tether audit export`` writes one after the records; ``verify`` given
checkpoints reports the log *truncated* when it ends before a checkpoint's
record and *tampered* when that record's hash is not the one vouched for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CHECKPOINT_PARAM", "FIELDS", "GENESIS", "Checkpoint", "Verdict", "record_hash",
           "sign_checkpoint", "verify"]

GENESIS = "0" * 64
FIELDS = ("seq", "at", "actor", "action", "target", "source", "outcome", "detail")
CHECKPOINT_CONTEXT = b"tether audit checkpoint v1\n"
HEX64 = re.compile(r"[0-9a-f]{64}")
INTACT, TAMPERED, TRUNCATED = "intact", "tampered", "truncated"
# A checkpoint as one query parameter, SEQ:HASH:AT:MAC (``GET /audit/verify?checkpoint=``).
# Every string this matches parses (``at`` may overflow to infinity: then it is simply
# not signed), so the document's pattern is the whole contract: no 400 for a match.
CHECKPOINT_PARAM = (r"^[0-9]{1,19}:[0-9a-f]{64}:-?[0-9]{1,20}(\.[0-9]{1,20})?"
                    r"([eE][-+]?[0-9]{1,3})?:[0-9a-f]{64}$")


def record_hash(key: bytes, prev_hash: str, record: Mapping[str, Any]) -> str:
    body = json.dumps({f: record[f] for f in FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    message = prev_hash.encode("ascii") + b"\n" + body.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _checkpoint_mac(key: bytes, seq: int, hash_: str, at: float) -> str:
    body = json.dumps({"seq": seq, "hash": hash_, "at": at}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return hmac.new(key, CHECKPOINT_CONTEXT + body.encode("ascii"), hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A signed statement that record ``seq`` had hash ``hash`` (signed at wall time ``at``).

    ``seq`` 0 with the genesis hash is the empty log's checkpoint.
    """

    seq: int
    hash: str
    at: float
    mac: str

    def signed_by(self, key: bytes) -> bool:
        try:
            expected = _checkpoint_mac(key, self.seq, self.hash, self.at)
        except ValueError:  # a NaN or infinite time: nothing we signed
            return False
        return hmac.compare_digest(expected, self.mac)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Checkpoint:
        """Parse one from JSON; ValueError says what is wrong with it."""
        if not isinstance(raw, dict):
            raise ValueError("a checkpoint is a JSON object with seq, hash, at and mac")
        seq, hash_, at, mac = (raw.get(k) for k in ("seq", "hash", "at", "mac"))
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            raise ValueError("a checkpoint's seq is a record number")
        if (not isinstance(at, (int, float)) or isinstance(at, bool)
                or not abs(at) < 2**63):  # neither NaN, infinite nor beyond a float
            raise ValueError("a checkpoint's at is a time in seconds")
        for name, value in (("hash", hash_), ("mac", mac)):
            if not isinstance(value, str) or not HEX64.fullmatch(value):
                raise ValueError(f"a checkpoint's {name} is 64 hex digits")
        assert isinstance(hash_, str) and isinstance(mac, str)
        return cls(seq, hash_, float(at), mac)

    def as_param(self) -> str:
        """This checkpoint as one query parameter (``CHECKPOINT_PARAM``), exactly:
        ``repr`` of a float reads back as the same float, so the mac still fits."""
        return f"{self.seq}:{self.hash}:{self.at!r}:{self.mac}"

    @classmethod
    def from_param(cls, text: str) -> Checkpoint:
        """Parse ``as_param``'s form; ValueError if it does not match CHECKPOINT_PARAM."""
        if not re.fullmatch(CHECKPOINT_PARAM, text):
            raise ValueError("a checkpoint parameter is SEQ:HASH:AT:MAC")
        seq, hash_, at, mac = text.split(":")
        return cls(int(seq), hash_, float(at), mac)


def sign_checkpoint(key: bytes, seq: int, hash_: str, at: float) -> Checkpoint:
    return Checkpoint(seq, hash_, at, _checkpoint_mac(key, seq, hash_, at))


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    problem: str | None = None
    # The first record found wrong, or the first one missing; None when the problem is
    # not a record's (a checkpoint signed with another key).
    seq: int | None = None
    state: str = INTACT  # intact, tampered or truncated
    anchored: int = 0  # the highest record a checkpoint vouched for (0: none did)
    head: tuple[int, str] = (0, GENESIS)  # the last record walked: seq and hash


def _compare(name: str, checkpoint: Checkpoint, key: bytes, head: tuple[int, str],
             seen: Mapping[int, str], count: int) -> Verdict | None:
    """What is wrong with the log against one checkpoint; None if it holds."""
    if not checkpoint.signed_by(key):
        return Verdict(False, count, f"the {name} is not signed with this server's audit key "
                       "(it was edited, or comes from another server)", None, TAMPERED,
                       head=head)
    last = head[0]
    if last < checkpoint.seq:
        missing = checkpoint.seq - last
        held = "holds no records" if last == 0 else f"ends at record {last}"
        cut = ("every record was removed" if last == 0 else
               f"{missing} record{'s were' if missing != 1 else ' was'} cut off the end")
        return Verdict(False, count, f"the log {held}, but the {name} says record "
                       f"{checkpoint.seq} was written: {cut}", last + 1, TRUNCATED,
                       anchored=checkpoint.seq, head=head)
    found = GENESIS if checkpoint.seq == 0 else seen.get(checkpoint.seq)
    if found != checkpoint.hash:
        return Verdict(False, count, f"is not the one the {name} vouched for (its hash "
                       "differs: the log was rewritten from there)", checkpoint.seq, TAMPERED,
                       head=head)
    return None


def verify(key: bytes, records: Iterable[Mapping[str, Any]], prev_hash: str = GENESIS,
           checkpoints: Sequence[tuple[str, Checkpoint]] = ()) -> Verdict:
    """Check a log, oldest first; ``prev_hash`` is the hash before the first record.

    ``checkpoints``: (name for messages, checkpoint) pairs the log must still hold:
    at least that many records, and that hash at the checkpoint's record. Records
    after a checkpoint are checked by the chain alone.
    """
    wanted = {cp.seq for _, cp in checkpoints}
    seen: dict[int, str] = {}
    count, head = 0, (0, prev_hash)
    for record in records:
        count += 1
        seq = int(record["seq"])
        if record["prev_hash"] != prev_hash:
            return Verdict(False, count, "does not follow the record before it (a record "
                           "was removed or inserted before it)", seq, TAMPERED, head=head)
        expected = record_hash(key, prev_hash, record)
        if record["hash"] != expected:
            return Verdict(False, count, "its contents changed after it was written", seq,
                           TAMPERED, head=head)
        prev_hash = expected
        head = (seq, expected)
        if seq in wanted:
            seen[seq] = expected
    for name, checkpoint in checkpoints:
        wrong = _compare(name, checkpoint, key, head, seen, count)
        if wrong is not None:
            return wrong
    anchored = max((cp.seq for _, cp in checkpoints), default=0)
    return Verdict(True, count, anchored=anchored, head=head)
