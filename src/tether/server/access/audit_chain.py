"""The audit log's hash chain, as pure functions.

Each record's hash is an HMAC-SHA-256, keyed with a secret kept outside the
database (``DATA/audit-key``), over the previous record's hash and the record's
own fields in a canonical JSON form (sorted keys, no spaces). Without the key,
someone who can write the database cannot recompute a consistent chain after
editing it; with the key alone, nothing can be edited either.
Verifying walks the records in order and recomputes: the first record whose
stored ``prev_hash`` or ``hash`` disagrees is where the log was changed, a
record removed (the next one's ``prev_hash`` no longer matches) or one inserted.
``seq`` is part of the hash too, so renumbering rows is caught as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

GENESIS = "0" * 64
FIELDS = ("seq", "at", "actor", "action", "target", "source", "outcome", "detail")


def record_hash(key: bytes, prev_hash: str, record: Mapping[str, Any]) -> str:
    body = json.dumps({f: record[f] for f in FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    message = prev_hash.encode("ascii") + b"\n" + body.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    problem: str | None = None
    seq: int | None = None  # the first record found wrong


def verify(key: bytes, records: Iterable[Mapping[str, Any]],
           prev_hash: str = GENESIS) -> Verdict:
    """Check a log, oldest first; ``prev_hash`` is the hash before the first record."""
    count = 0
    for record in records:
        count += 1
        seq = int(record["seq"])
        if record["prev_hash"] != prev_hash:
            return Verdict(False, count, "does not follow the record before it (a record "
                           "was removed or inserted before it)", seq)
        expected = record_hash(key, prev_hash, record)
        if record["hash"] != expected:
            return Verdict(False, count, "its contents changed after it was written", seq)
        prev_hash = expected
    return Verdict(True, count)
