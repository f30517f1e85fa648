"""A command and the audit record of the call that sent it commit together.

Why: ``POST /commands`` wrote its record after the route, behind the results already
arriving from 10,000 nodes (3-4 s of a 4.5 s call, issue 14); now the record goes in
the transaction that stores the command (``AuditLog.append(also=...)``). That must
not weaken the trail: a command stored without its record, or a record of a command
never stored, would be a hole. On real SQLite and PostgreSQL: the record lands with
the command, chained and anchored; a command the database refuses leaves no record
and does not move the anchor.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tether.server.store import open_store
from tether.server.store.audit import AuditEntry
from tether.server.store.audit_anchor import read_anchor
from tether.server.store.schema import commands


def _command(command_id: str) -> dict[str, Any]:
    return dict(command_id=command_id, script="true", comment=None, targets=["all"],
                timeout=60.0, delivery_timeout=60.0, workdir=None, output_cap=1024,
                created_at=time.time(), created_by="admin", cancel_requested=False)


def _entry(command_id: str) -> AuditEntry:
    return AuditEntry(actor="admin", action="POST /api/v1/commands", outcome="ok",
                      target=command_id, source="127.0.0.1",
                      detail={"status": 201, "script": "true"}, authenticated=True)


async def _scenario(url: str, anchor_path: Path, key: bytes) -> dict[str, Any]:
    store = await open_store(url)
    try:
        await store.audit.open(key, anchor_path)
        await store.create_command(_command("c-1"), [], _entry("c-1"))
        refused = None
        try:  # the same id again: the database refuses the command
            await store.create_command(_command("c-1"), [], _entry("c-1-again"))
        except Exception as exc:  # which driver error it is does not matter
            refused = type(exc).__name__
        records = [r async for r in store.audit.all()]
        async with store.engine.connect() as conn:
            stored = (await conn.execute(sa.select(sa.func.count()).select_from(
                commands))).scalar_one()
        return {"records": records, "commands": stored, "refused": refused,
                "verdict": await store.audit.verify()}
    finally:
        await store.close()


def test_a_command_and_its_record_commit_together_or_not_at_all(database_url: str,
                                                                 tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    seen = asyncio.run(_scenario(database_url, tmp_path / "anchor", key))
    assert seen["refused"] is not None, "the duplicate command was stored"
    assert seen["commands"] == 1
    targets = [r["target"] for r in seen["records"]]
    assert targets == ["c-1"], targets  # no record of the command that was not stored
    record = seen["records"][0]
    assert (record["seq"], record["action"], record["outcome"]) == (
        1, "POST /api/v1/commands", "ok")
    assert record["detail"]["status"] == 201
    assert seen["verdict"].ok and seen["verdict"].state == "intact", seen["verdict"]
    anchor = read_anchor(tmp_path / "anchor", key)
    assert anchor is not None and anchor.seq == 1  # not moved by the refused one
