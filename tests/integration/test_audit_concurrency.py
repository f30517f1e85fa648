"""Several processes appending to one audit log at once: none loses a record.

Each record's seq and hash follow the one before it, so an append reads the head
and writes after it. Two processes on one database (the server and ``tether admin
recover``, two replicas on PostgreSQL, two engines on one SQLite file) must not
both read the same head: before the write lock was taken ahead of that read on
SQLite, 150 to 166 of 400 such appends failed on the seq's UNIQUE constraint.
Here two real processes, released at the same moment, append to a real SQLite
file and a real PostgreSQL database; every record lands once and the chain, with
each process's own anchor, verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import clean_env
from tether.server.access.audit_chain import Checkpoint, Verdict
from tether.server.store import open_store
from tether.server.store.audit_anchor import read_anchor

APPENDS = 150  # per process: a few seconds on PostgreSQL, one on SQLite

# One writer: opens the store and its own anchor (as a server does), says "ready",
# waits for "go" on stdin, then appends as fast as it can. Any failed append fails it.
WRITER = """
import asyncio, sys
from pathlib import Path
from tether.server.store import open_store

async def main(url, key, anchor, name, count):
    store = await open_store(url)
    await store.audit.open(bytes.fromhex(key), Path(anchor))
    print("ready", flush=True)
    sys.stdin.readline()
    for k in range(int(count)):
        await store.audit.append(actor=name, action=f"append {k}", outcome="ok")
    await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


def test_two_processes_appending_at_once_lose_nothing(database_url: str,
                                                      tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    asyncio.run(_create(database_url))  # migrated once, so the writers only append
    with contextlib.ExitStack() as stack:
        writers = []
        for name in ("one", "two"):
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, database_url, key.hex(),
                 str(tmp_path / f"anchor-{name}"), name, str(APPENDS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=clean_env())
            stack.callback(proc.kill)
            writers.append(proc)
        for proc in writers:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", \
                proc.stderr.read() if proc.stderr else ""
        for proc in writers:  # released together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in writers:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]

    records, verdict = asyncio.run(_read(database_url, key))
    assert verdict.ok and verdict.state == "intact", verdict
    assert verdict.records == len(records) == 2 * APPENDS
    assert [r["seq"] for r in records] == list(range(1, 2 * APPENDS + 1))
    for name in ("one", "two"):
        mine = [r["action"] for r in records if r["actor"] == name]
        assert mine == [f"append {k}" for k in range(APPENDS)], name  # each once, in order
    # They really interleaved (else this test would prove nothing about the race).
    switches = sum(a["actor"] != b["actor"] for a, b in zip(records, records[1:]))
    assert switches >= 2, switches
    # Each process's anchor vouches for its own last record, and the log holds it.
    for name in ("one", "two"):
        anchor = read_anchor(tmp_path / f"anchor-{name}", key)
        assert anchor is not None
        last = max(r["seq"] for r in records if r["actor"] == name)
        assert anchor.seq == last
        assert asyncio.run(_read(database_url, key, anchor))[1].anchored == last


async def _create(url: str) -> None:
    store = await open_store(url)
    await store.close()


async def _read(url: str, key: bytes, checkpoint: Checkpoint | None = None,
                ) -> tuple[list[dict[str, Any]], Verdict]:
    store = await open_store(url)
    try:
        await store.audit.open(key, None)
        records = [r async for r in store.audit.all()]
        return records, await store.audit.verify(checkpoint)
    finally:
        await store.close()
