"""The agent's spool on a real directory: ledger survival, compaction, eviction."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.agent import spool as spool_module
from tether.agent.spool import Spool
from tether.protocol.messages import Command, Result


def command(n: int) -> Command:
    return Command(f"inv-{n:05d}", "cmd", "true", 10.0, 100)


def finish(spool: Spool, n: int, size: int) -> None:
    inv = command(n).invocation_id
    spool.record(command(n))
    spool.stream_path(inv, "stdout").write_bytes(b"x" * size)
    spool.save_result(Result(inv, "Success", size, 0, exit_code=0))


def test_ledger_survives_a_restart_and_compaction_keeps_what_matters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    for n in range(30):
        finish(spool, n, 1)
    for n in range(25):
        spool.forget(command(n).invocation_id)
    assert Spool(tmp_path).seen("inv-00000")  # acked ids are still remembered

    # Compaction: keep every id still spooled and only the newest acknowledged ones.
    monkeypatch.setattr(spool_module, "LEDGER_COMPACT_AT", 10)
    monkeypatch.setattr(spool_module, "LEDGER_KEEP_ACKED", 3)
    spool.forget(command(25).invocation_id)
    reloaded = Spool(tmp_path)
    assert reloaded.ledger_size() == 4 + 3
    assert all(reloaded.seen(command(n).invocation_id) for n in range(23, 30))
    assert not reloaded.seen("inv-00000")


def test_eviction_drops_the_oldest_finished_output_first_and_marks_the_result(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path, cap=250)
    for n in range(3):
        finish(spool, n, 100)
    spool.record(command(3))  # running: never evicted
    spool.stream_path("inv-00003", "stdout").write_bytes(b"y" * 100)
    evicted = spool.evict_over_cap(protect={"inv-00003"})
    assert [r.invocation_id for r in evicted] == ["inv-00000", "inv-00001"]
    for r in evicted:
        assert r.output_evicted and "evicted" in (r.reason or "")
        assert spool.stream_size(r.invocation_id, "stdout") == 0
        assert spool.load_result(r.invocation_id) == r
    assert spool.stream_size("inv-00002", "stdout") == 100
    assert spool.stream_size("inv-00003", "stdout") == 100
    assert spool.evict_over_cap(protect={"inv-00003"}) == []
