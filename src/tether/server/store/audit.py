"""The audit log in the database: appended in order, read back, verified.

Appends are serialised (an asyncio lock in this process; on PostgreSQL also a
table lock, so several replicas cannot fork the chain), because each record's
hash needs the one before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.access.audit_chain import GENESIS, Verdict, record_hash, verify
from tether.server.store.schema import audit_log

Row = dict[str, Any]


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()
        self.key = b""  # set at start-up from DATA/audit-key (see app.py)

    async def append(self, *, actor: str, action: str, outcome: str, target: str | None = None,
                     source: str | None = None, detail: dict[str, Any] | None = None) -> Row:
        async with self._lock, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
            last = (await conn.execute(
                sa.select(audit_log.c.seq, audit_log.c.hash)
                .order_by(audit_log.c.seq.desc()).limit(1))).first()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            record: Row = dict(seq=seq, at=time.time(), actor=actor[:200], action=action[:200],
                               target=target[:200] if target else None,
                               source=source[:64] if source else None, outcome=outcome,
                               detail=detail or {})
            record["prev_hash"] = prev
            record["hash"] = record_hash(self.key, prev, record)
            await conn.execute(audit_log.insert().values(**record))
            return record

    async def find(self, *, since: float | None = None, actor: str | None = None,
                   target: str | None = None, action: str | None = None,
                   limit: int = 1000) -> list[Row]:
        q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if since is not None:
            q = q.where(audit_log.c.at >= since)
        if actor:
            q = q.where(audit_log.c.actor == actor)
        if target:
            q = q.where(audit_log.c.target == target)
        if action:
            q = q.where(audit_log.c.action.contains(action, autoescape=True))
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(q)).mappings()]
        return rows[::-1]

    async def all(self, chunk: int = 5000) -> AsyncIterator[Row]:
        """Every record, oldest first, read in chunks."""
        after = 0
        while True:
            async with self.engine.connect() as conn:
                rows = [dict(r) for r in (await conn.execute(
                    sa.select(audit_log).where(audit_log.c.seq > after)
                    .order_by(audit_log.c.seq).limit(chunk))).mappings()]
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            after = rows[-1]["seq"]

    async def verify(self) -> Verdict:
        return verify(self.key, [r async for r in self.all()])
