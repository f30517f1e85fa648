"""The audit hash chain: any change, removal, insertion or re-keyed rewrite is caught;
with a checkpoint, records cut off the end (all of them included) are caught too."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.audit_chain import (
    CHECKPOINT_PARAM,
    FIELDS,
    GENESIS,
    Checkpoint,
    record_hash,
    sign_checkpoint,
    verify,
)

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


# -- checkpoints: what the chain alone cannot see ------------------------------


def head_of(records: list[dict[str, Any]], seq: int) -> Checkpoint:
    """A checkpoint of record ``seq`` (0: the empty log), as the server signs one."""
    hash_ = GENESIS if seq == 0 else records[seq - 1]["hash"]
    return sign_checkpoint(KEY, seq, hash_, 1700000000.5)


@given(st.integers(1, 10), st.integers(0, 10))
def test_a_log_cut_short_of_its_checkpoint_is_truncated(anchored: int, kept: int) -> None:
    """Records cut off the end, all of them included: the chain still verifies alone,
    the checkpoint says how many are gone."""
    records = chain(10)
    checkpoint = head_of(records, anchored)
    assert verify(KEY, records[:kept]).ok  # what the chain alone said before
    verdict = verify(KEY, records[:kept], checkpoints=[("anchor", checkpoint)])
    if kept >= anchored:
        assert verdict.ok and verdict.state == "intact" and verdict.anchored == anchored
        return
    assert not verdict.ok and verdict.state == "truncated"
    assert verdict.seq == kept + 1  # the first record missing
    assert verdict.anchored == anchored  # so seq..anchored are missing (the console counts them)
    assert verdict.problem is not None and f"record {anchored} was written" in verdict.problem
    if kept == 0:
        assert "holds no records" in verdict.problem and "every record" in verdict.problem
    else:
        assert f"ends at record {kept}" in verdict.problem
        assert f"{anchored - kept} record" in verdict.problem


def test_records_after_the_checkpoint_are_fine() -> None:
    """The anchor lags (a crash before it was moved, another replica appending)."""
    records = chain(10)
    verdict = verify(KEY, records, checkpoints=[("anchor", head_of(records, 4))])
    assert verdict.ok and verdict.anchored == 4 and verdict.head == (10, records[9]["hash"])


def test_a_log_rewritten_under_its_checkpoint_is_tampered() -> None:
    """Whoever holds the key re-chains from record 3 on: the checkpoint of 6 disagrees."""
    records = chain(10)
    checkpoint = head_of(records, 6)
    rewritten = chain(10)
    prev = rewritten[1]["hash"]
    for r in rewritten[2:]:
        r["detail"] = {"script": "something else"}
        r["prev_hash"], r["hash"] = prev, record_hash(KEY, prev, r)
        prev = r["hash"]
    assert verify(KEY, rewritten).ok
    verdict = verify(KEY, rewritten, checkpoints=[("checkpoint", checkpoint)])
    assert (verdict.ok, verdict.state, verdict.seq) == (False, "tampered", 6)
    assert verdict.problem is not None and "checkpoint vouched for" in verdict.problem


def test_an_edited_or_foreign_checkpoint_is_refused() -> None:
    records = chain(5)
    good = head_of(records, 5)
    for bad in (dataclasses.replace(good, seq=3), dataclasses.replace(good, at=good.at + 1),
                dataclasses.replace(good, hash=records[2]["hash"]),
                sign_checkpoint(b"another key", 5, records[4]["hash"], 0.0)):
        verdict = verify(KEY, records, checkpoints=[("anchor", bad)])
        assert (verdict.ok, verdict.state, verdict.seq) == (False, "tampered", None)
        assert verdict.problem is not None and "not signed" in verdict.problem
    # A record's own hash is never a checkpoint's mac (its own context string).
    forged = Checkpoint(5, records[4]["hash"], 0.0, records[4]["hash"])
    assert not forged.signed_by(KEY)
    assert not Checkpoint(5, records[4]["hash"], float("nan"), good.mac).signed_by(KEY)


def test_a_checkpoint_round_trips_through_json_and_refuses_junk() -> None:
    cp = head_of(chain(3), 3)
    assert Checkpoint.from_dict(json.loads(json.dumps(cp.as_dict()))) == cp
    for junk in (None, [], {}, {**cp.as_dict(), "seq": "3"}, {**cp.as_dict(), "seq": True},
                 {**cp.as_dict(), "seq": -1}, {**cp.as_dict(), "hash": "x" * 64},
                 {**cp.as_dict(), "mac": cp.mac.upper()}, {**cp.as_dict(), "at": "now"},
                 {**cp.as_dict(), "at": float("inf")}, {**cp.as_dict(), "at": float("nan")},
                 {**cp.as_dict(), "at": 10**400}, {**cp.as_dict(), "at": None}):
        with pytest.raises(ValueError):
            Checkpoint.from_dict(junk)


def test_the_empty_log_has_a_checkpoint_too() -> None:
    empty = head_of([], 0)
    assert verify(KEY, [], checkpoints=[("anchor", empty)]).ok
    assert verify(KEY, chain(2), checkpoints=[("anchor", empty)]).ok


HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(seq=st.integers(0, 2**63 - 1), hash_=HEX, mac=HEX,
       at=st.floats(allow_nan=False, allow_infinity=False))
def test_every_checkpoint_is_one_query_parameter_that_reads_back_exactly(
        seq: int, hash_: str, mac: str, at: float) -> None:
    """``GET /audit/verify?checkpoint=`` takes what ``tether audit export`` wrote, whole:
    the parameter matches the pattern the API document gives, and reads back equal
    (the float included, so a checkpoint's mac still fits)."""
    cp = Checkpoint(seq, hash_, at, mac)
    assert re.fullmatch(CHECKPOINT_PARAM, cp.as_param())
    assert Checkpoint.from_param(cp.as_param()) == cp
    signed = sign_checkpoint(KEY, seq, hash_, at)
    assert Checkpoint.from_param(signed.as_param()).signed_by(KEY)


@given(st.from_regex(CHECKPOINT_PARAM, fullmatch=True))
def test_whatever_the_documented_pattern_admits_parses(text: str) -> None:
    """The contract is the pattern alone: a string it admits is never a 400. An
    overflowing ``at`` parses to infinity, which nothing signed (so: tampered)."""
    cp = Checkpoint.from_param(text)
    assert not cp.signed_by(KEY)


@pytest.mark.parametrize("junk", ["", "3", "3:" + "a" * 64 + ":1.5", "3:" + "a" * 64 + ":nan:"
                                  + "b" * 64, "3:" + "A" * 64 + ":1.5:" + "b" * 64,
                                  "3:" + "a" * 64 + ":1.5:" + "b" * 64 + "\n"])
def test_a_checkpoint_parameter_that_is_not_one_is_refused(junk: str) -> None:
    with pytest.raises(ValueError):
        Checkpoint.from_param(junk)
