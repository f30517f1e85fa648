"""The group writer on real SQLite and PostgreSQL, with batches of many rows of each kind.

Agents rarely line up in a small test, so batches there hold one row; an
executemany of several rows is a different statement path, forced here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness import postgres_database
from tether.protocol.statuses import InvocationStatus
from tether.server.store import Store, open_store
from tether.server.store.writer import GroupWriter, Written


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path / 't.db'}")
        yield s
        await s.close()
    else:
        with postgres_database() as url:
            s = await open_store(url)
            yield s
            await s.close()


async def _command_on_new_nodes(store: Store, command_id: str, nodes: int,
                                now: float) -> list[dict[str, Any]]:
    """``nodes`` newly registered nodes and a command on them: its invocation rows."""
    act, code = await store.create_activation(limit=10, expires_at=now + 60, tags={},
                                              name_prefix=None)
    node_ids = [(await store.register_node(activation_id=act["activation_id"], code=code,
                                           computer_name=f"{command_id}-{i}",
                                           replaces=None))[0]["node_id"]
                for i in range(nodes)]
    command = dict(command_id=command_id, script="true", comment=None, targets=["all"],
                   timeout=60.0, delivery_timeout=60.0, workdir=None, output_cap=100,
                   created_at=now, created_by="admin", cancel_requested=False)
    return await store.create_command(command, node_ids)


async def test_many_rows_of_every_kind_in_one_turn(store: Store) -> None:
    act, code = await store.create_activation(limit=10, expires_at=time.time() + 60, tags={},
                                              name_prefix=None)
    node_ids = []
    for i in range(5):
        node, _ = await store.register_node(activation_id=act["activation_id"], code=code,
                                            computer_name=f"n{i}", replaces=None)
        node_ids.append(node["node_id"])
    now = time.time()
    command = dict(command_id="c-1", script="true", comment=None, targets=["all"],
                   timeout=60.0, delivery_timeout=60.0, workdir=None, output_cap=100,
                   created_at=now, created_by="admin", cancel_requested=False)
    invs = await store.create_command(command, node_ids)
    writer = GroupWriter(store)
    writer.start()
    try:
        inventory = {"computer_name": "x", "interfaces": [
            {"name": "ppp0", "flags": ["up"], "addresses": [
                {"address": "10.64.0.2", "prefixlen": 32, "family": "inet",
                 "peer": "10.64.0.1"}]}], "primary_address": "10.64.0.2",
            "agent_version": "t"}
        await asyncio.gather(*(
            [writer.write("presence", dict(b_node=n, b_status="Online", b_seen=now,
                                           b_peer="10.64.0.2")) for n in node_ids]
            + [writer.write("inventories", dict(b_node=n, b_inventory=inventory,
                                                b_primary="10.64.0.2", b_agent_version="t",
                                                b_name="x", b_digest="a" * 64))
                  for n in node_ids]
            + [writer.write("accepted", dict(b_inv=i["invocation_id"], b_at=now))
               for i in invs]))
        await asyncio.gather(*(writer.write("results", dict(
            b_inv=i["invocation_id"], b_status="Success", b_ended_at=now, b_exit_code=0,
            b_stdout_size=len(i["node_id"]), b_stderr_size=0, b_stdout_truncated=False,
            b_stderr_truncated=False, b_reason=None, b_stdout_inline=i["node_id"].encode(),
            b_stderr_inline=None)) for i in invs))
        # A late duplicate result cannot move a terminal invocation again.
        await writer.write("results", dict(
            b_inv=invs[0]["invocation_id"], b_status="Failed", b_ended_at=now, b_exit_code=1,
            b_stdout_size=4, b_stderr_size=0, b_stdout_truncated=False,
            b_stderr_truncated=False, b_reason="late", b_stdout_inline=b"late",
            b_stderr_inline=None))
    finally:
        await writer.stop()
    assert writer.rows == 5 * 4 + 1
    assert writer.batches < writer.rows  # rows really were grouped
    rows = await store.list_invocations("c-1")
    assert {r["status"] for r in rows} == {InvocationStatus.SUCCESS.value}
    assert all(r["started_at"] == pytest.approx(now) for r in rows)
    for i in invs:  # small outputs travel in the row, and the late duplicate changed nothing
        stored = await store.find_invocation("c-1", i["node_id"])
        assert stored is not None
        assert (stored["stdout_inline"], stored["stderr_inline"], stored["reason"]) == (
            i["node_id"].encode(), None, None)
    online = await store.list_nodes()
    assert {n["ping_status"] for n in online} == {"Online"}
    assert {n["primary_address"] for n in online} == {"10.64.0.2"}


async def test_a_row_the_database_refuses_fails_only_its_invocation(store: Store) -> None:
    """Issue 12 #11: rows no column can hold, in one batch with good ones.

    An exit code of 2**70 (no INTEGER holds it; SQLite raises OverflowError), a
    1.5 MB reason and a 100-character address (PostgreSQL refuses both for their
    VARCHAR; SQLite stores them). Each write returns; the good rows land; a refused
    result ends its invocation Failed saying why; nothing stays InProgress.
    """
    now = time.time()
    invs = await _command_on_new_nodes(store, "c-bad", 4, now)
    node_ids = [i["node_id"] for i in invs]
    exit_codes = [0, 2**70, 0, 3]
    reasons = [None, None, "r" * 1_500_000, None]
    writer = GroupWriter(store)
    writer.start()
    try:
        for i in invs:
            await writer.write("accepted", dict(b_inv=i["invocation_id"], b_at=now))
        outcomes = await asyncio.gather(*[writer.write("results", dict(
            b_inv=i["invocation_id"], b_status="Success", b_ended_at=now, b_exit_code=ec,
            b_stdout_size=2, b_stderr_size=0, b_stdout_truncated=False,
            b_stderr_truncated=False, b_reason=reason, b_stdout_inline=b"ok",
            b_stderr_inline=None)) for i, ec, reason in zip(invs, exit_codes, reasons)],
            writer.write("inventories", dict(
                b_node=node_ids[0], b_inventory={"interfaces": []}, b_primary="1" * 100,
                b_agent_version="t", b_name="x", b_digest="b" * 64)),
            writer.write("presence", dict(b_node=node_ids[3], b_status="Online",
                                          b_seen=now, b_peer=None)))
    finally:
        await writer.stop()
    postgres = store.engine.dialect.name == "postgresql"
    assert outcomes[0] == outcomes[3] == outcomes[5] == Written.STORED
    assert outcomes[1] == Written.REPLACED
    assert outcomes[2] == (Written.REPLACED if postgres else Written.STORED)
    assert outcomes[4] == (Written.DROPPED if postgres else Written.STORED)
    rows = {r["node_id"]: r for r in await store.list_invocations("c-bad")}
    assert all(r["status"] != InvocationStatus.IN_PROGRESS.value for r in rows.values())
    good = [rows[node_ids[0]], rows[node_ids[3]]] + ([] if postgres else [rows[node_ids[2]]])
    assert [(r["status"], r["exit_code"]) for r in good[:2]] == [("Success", 0), ("Success", 3)]
    refused = [rows[node_ids[1]]] + ([rows[node_ids[2]]] if postgres else [])
    for r in refused:
        assert r["status"] == "Failed" and r["exit_code"] is None, r
        assert r["reason"].startswith("the server could not store the node's result ("), r
        assert r["reason"].endswith("the node reported Success") and len(r["reason"]) <= 500
        kept = await store.find_invocation("c-bad", r["node_id"])
        assert kept is not None and kept["stdout_inline"] == b"ok"  # its output stayed
    assert (await store.get_node(node_ids[3]) or {})["ping_status"] == "Online"


async def test_an_accepted_not_waited_for_still_lands_before_its_result(store: Store) -> None:
    """The dispatcher queues an ``accepted`` without waiting for its commit (the link's
    next message, its result, is read at once): whether the two share a batch or not,
    the invocation ends Success with its start time, never back to InProgress."""
    now = time.time()
    invs = await _command_on_new_nodes(store, "c-q", 6, now)
    writer = GroupWriter(store)
    writer.start()
    try:
        accepted = []
        results = []
        for k, inv in enumerate(invs):
            accepted.append(writer.queue("accepted", dict(b_inv=inv["invocation_id"],
                                                          b_at=now + k)))
            results.append(writer.write("results", dict(
                b_inv=inv["invocation_id"], b_status="Success", b_ended_at=now + k + 1,
                b_exit_code=0, b_stdout_size=0, b_stderr_size=0, b_stdout_truncated=False,
                b_stderr_truncated=False, b_reason=None, b_stdout_inline=None,
                b_stderr_inline=None)))
            if k % 2:  # half of them one turn apart, half in the same batch
                await asyncio.sleep(0)
        assert await asyncio.gather(*results) == [Written.STORED] * len(invs)
        assert await asyncio.gather(*accepted) == [Written.STORED] * len(invs)
    finally:
        await writer.stop()
    rows = {r["invocation_id"]: r for r in await store.list_invocations("c-q")}
    for k, inv in enumerate(invs):
        row = rows[inv["invocation_id"]]
        assert row["status"] == InvocationStatus.SUCCESS.value, row
        assert (row["started_at"], row["ended_at"]) == (pytest.approx(now + k),
                                                        pytest.approx(now + k + 1))
