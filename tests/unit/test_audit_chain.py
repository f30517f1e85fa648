"""The audit hash chain: any change, removal, insertion or re-keyed rewrite is caught."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.audit_chain import FIELDS, GENESIS, record_hash, verify

KEY = b"k" * 32


def chain(n: int, key: bytes = KEY) -> list[dict[str, Any]]:
    records, prev = [], GENESIS
    for seq in range(1, n + 1):
        r: dict[str, Any] = dict(seq=seq, at=1700000000.0 + seq / 7, actor=f"op{seq % 3}",
                                 action="POST /api/v1/commands", target=f"t{seq}",
                                 source="10.0.0.1", outcome="ok",
                                 detail={"script": f"echo {seq}", "nodes": [1, 2]})
        r["prev_hash"], r["hash"] = prev, record_hash(key, prev, r)
        prev = r["hash"]
        records.append(r)
    return records


def test_an_untouched_chain_verifies() -> None:
    verdict = verify(KEY, chain(10))
    assert verdict.ok and verdict.records == 10 and verdict.seq is None
    assert verify(KEY, []).ok


@given(st.integers(0, 9), st.sampled_from(FIELDS[1:]))
def test_a_changed_field_is_caught_at_its_record(index: int, field: str) -> None:
    records = chain(10)
    records[index][field] = {"x": 1} if field == "detail" else "tampered"
    verdict = verify(KEY, records)
    assert not verdict.ok and verdict.seq == index + 1
    assert verdict.problem is not None and "changed" in verdict.problem


@given(st.integers(0, 8))
def test_a_removed_record_is_caught_at_the_next(index: int) -> None:
    records = chain(10)
    del records[index]
    verdict = verify(KEY, records)
    assert not verdict.ok and verdict.seq == index + 2


def test_an_inserted_record_is_caught() -> None:
    records = chain(10)
    forged = dict(records[4], actor="mallory")
    records.insert(5, forged)
    assert not verify(KEY, records).ok


def test_renumbering_is_caught() -> None:
    records = chain(5)
    records[2]["seq"] = 99
    assert verify(KEY, records).seq == 99


def test_a_chain_rewritten_without_the_key_does_not_verify() -> None:
    """Someone with only the database recomputes every hash: still caught."""
    records = chain(6)
    records[3]["actor"] = "mallory"
    prev = GENESIS
    for r in records:
        body = json.dumps({f: r[f] for f in FIELDS}, sort_keys=True, separators=(",", ":"))
        r["prev_hash"] = prev
        r["hash"] = prev = hashlib.sha256(prev.encode() + b"\n" + body.encode()).hexdigest()
    assert not verify(KEY, records).ok
    assert not verify(b"another key", chain(3)).ok
