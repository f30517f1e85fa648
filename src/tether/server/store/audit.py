"""The audit log in the database: appended in order, anchored, read back, verified.

Appends are serialised (an asyncio lock in this process, and the database's write
lock taken before the head is read: a table lock on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), so several replicas, or the server and ``tether admin recover``, cannot
fork the chain or take one seq twice: each record's hash needs the one before it.

After each append commits, the new head (its seq and hash, signed with the audit
key) is written to ``DATA/audit-anchor`` (store/audit_anchor.py): a file the
database cannot rewrite, so a log cut short in the database no longer verifies
(``access/audit_chain.py``). The anchor is written after the commit, never before:
a crash in between leaves it one record behind (the chain still covers that
record), never ahead of the database. If the database ends before the anchor when
the server appends (records were cut while it ran or while it was down), the new
record is chained on from the anchor, not from what is left, so the gap stays
visible to every later verify. "The anchor" is the newer of this process's own and
the file's, read again for every append and verify: ``tether admin recover``
appends from another process and moves only the file.

Refused and failed calls go through ``append_or_count``: identical repeats within
a window become one record with a count (``access/audit_digest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server.access.audit_chain import (
    GENESIS,
    Checkpoint,
    Verdict,
    record_hash,
    sign_checkpoint,
    verify,
)
from tether.server.access.audit_digest import Digest, Summary, kind_of
from tether.server.store.audit_anchor import AnchorError, AnchorFile, read_anchor
from tether.server.store.rows import as_dicts
from tether.server.store.schema import audit_log

log = logging.getLogger(__name__)
Row = dict[str, Any]
# Identical refusals within this long are one record and a count (--audit-repeat-window).
DEFAULT_REPEAT_WINDOW = 60.0
ANCHOR_NAME = "anchor (DATA/audit-anchor)"


# Writes that commit in the audit record's own transaction (``AuditLog.append``).
Also = Callable[[AsyncConnection], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One record to append, as the API decided it (api/audit.py ``entry``)."""

    actor: str
    action: str
    outcome: str
    target: str | None
    source: str | None
    detail: dict[str, Any]
    authenticated: bool


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()
        self.key = b""  # set at start-up from DATA/audit-key (``open``)
        self.anchor: Checkpoint | None = None  # the newest head this server wrote
        self.anchor_file: AnchorFile | None = None
        self.digest = Digest(DEFAULT_REPEAT_WINDOW)
        self._flusher: asyncio.Task[None] | None = None

    async def open(self, key: bytes, anchor_path: Path | None,
                   repeat_window: float = DEFAULT_REPEAT_WINDOW) -> None:
        """Take the key and the anchor file; anchor an unanchored log at its head.

        An anchor that is not signed with this key (the key was replaced, the file
        copied from another server) is moved aside as ``audit-anchor.rejected-TIME``
        and the log re-anchored; both are written in the log itself.
        """
        self.key = key
        self.digest = Digest(repeat_window)
        if anchor_path is None:
            return
        try:
            anchor = read_anchor(anchor_path, key)
        except AnchorError as exc:
            kept = anchor_path.with_name(f"{anchor_path.name}.rejected-{int(time.time())}")
            os.replace(anchor_path, kept)
            log.error("%s: %s; moved aside to %s, and the audit log anchored afresh at its "
                      "current head", anchor_path, exc, kept.name)
            self.anchor_file = AnchorFile(anchor_path, key)
            await self.append(actor="server", action="audit anchor rejected",
                              outcome="failed", detail={"reason": str(exc), "kept_as": kept.name})
            return
        self.anchor_file, self.anchor = AnchorFile(anchor_path, key), anchor
        if anchor is None:
            async with self.engine.connect() as conn:
                head = await self._head(conn)
            if head[0]:
                log.warning("no %s: the audit log is anchored from its current head, record %d",
                            anchor_path, head[0])
                await self.append(actor="server", action="audit anchor created", outcome="ok",
                                  detail={"reason": "there was no anchor file: the records "
                                          "before this one are vouched for from here on",
                                          "head": head[0]})

    @staticmethod
    async def _head(conn: AsyncConnection) -> tuple[int, str]:
        last = (await conn.execute(
            sa.select(audit_log.c.seq, audit_log.c.hash)
            .order_by(audit_log.c.seq.desc()).limit(1))).first()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS)

    @classmethod
    async def _locked_head(cls, conn: AsyncConnection) -> tuple[int, str]:
        """The head a new record follows, read under the database's write lock.

        The lock comes before the read, so no other writer (another replica, a
        ``tether admin recover``, a second engine on one SQLite file) can append
        between the two and take the same seq. PostgreSQL: a table lock that
        readers do not wait for. SQLite: ``BEGIN IMMEDIATE``, since the driver
        would only begin the transaction at the INSERT, after the read (and a
        deferred reader turned writer is refused SQLITE_BUSY without waiting);
        it waits out another writer for the connection's busy_timeout.
        """
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
        elif conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        return await cls._head(conn)

    def newest_anchor(self) -> Checkpoint | None:
        """The later of this server's own anchor and the one now in DATA/audit-anchor.

        Another process appending to this log with this data folder (``tether admin
        recover``) moves the file, not this server's memory: its record is vouched
        for only if the file is read again. A file that cannot be read, or holds
        nothing signed with the key, leaves the anchor in memory (logged).
        """
        anchor = self.anchor
        if self.anchor_file is not None:
            try:
                on_disk = self.anchor_file.read()
            except OSError:
                log.exception("could not read %s (the anchor in memory stands)",
                              self.anchor_file.path)
                on_disk = None
            if on_disk is not None and (anchor is None or on_disk.seq > anchor.seq):
                anchor = on_disk
        return anchor

    def _chain_from(self, head: tuple[int, str]) -> tuple[int, str]:
        """The (seq, hash) a new record follows: the database's head, unless it was cut."""
        anchor = self.newest_anchor()
        if anchor is None or head[0] > anchor.seq or head == (anchor.seq, anchor.hash):
            return head
        log.error("the audit log in the database ends at record %d, but record %d was "
                  "written (DATA/audit-anchor): records were removed behind its back; "
                  "chaining on from record %d, so `tether audit verify` keeps showing the "
                  "gap", head[0], anchor.seq, anchor.seq)
        return anchor.seq, anchor.hash

    async def append(self, *, actor: str, action: str, outcome: str, target: str | None = None,
                     source: str | None = None, detail: dict[str, Any] | None = None,
                     also: Also | None = None) -> Row:
        """Append one record; ``also``, when given, writes in the same transaction, so
        what it writes (a command and its invocations) and the record saying who did
        it commit together or not at all, and no later than each other."""
        async with self._lock:
            async with self.engine.begin() as conn:
                last, prev = self._chain_from(await self._locked_head(conn))
                if also is not None:
                    await also(conn)
                record: Row = dict(seq=last + 1, at=time.time(), actor=actor[:200],
                                   action=action[:200], target=target[:200] if target else None,
                                   source=source[:64] if source else None, outcome=outcome,
                                   detail=detail or {})
                record["prev_hash"] = prev
                record["hash"] = record_hash(self.key, prev, record)
                await conn.execute(audit_log.insert().values(**record))
            self._move_anchor(record["seq"], record["hash"])
            return record

    def _move_anchor(self, seq: int, hash_: str) -> None:
        self.anchor = sign_checkpoint(self.key, seq, hash_, time.time())
        if self.anchor_file is not None:
            try:
                self.anchor_file.write(self.anchor)
            except OSError:
                log.exception("could not write %s (the anchor stays in memory)",
                              self.anchor_file.path)

    # -- refused and failed calls: one record, then a count -------------------------

    async def append_entry(self, entry: AuditEntry, also: Also | None = None) -> Row | None:
        """``append_or_count`` of an entry made elsewhere (api/audit.py ``entry``)."""
        return await self.append_or_count(**dataclasses.asdict(entry), also=also)

    async def append_or_count(self, *, actor: str, action: str, outcome: str,
                              target: str | None = None, source: str | None = None,
                              detail: dict[str, Any] | None = None,
                              authenticated: bool = False, also: Also | None = None
                              ) -> Row | None:
        """Append; a refused or failed call only if no identical one was written within
        the repeat window.

        A repeat is counted, and the count written as one record when its window
        ends (or at shutdown). ``authenticated``: the actor is an operator whose
        token was valid (see Digest for what that changes past the memory bound).
        An ``ok`` outcome is always written.
        """
        detail = detail or {}
        if outcome == "ok" or also is not None:
            return await self.append(actor=actor, action=action, outcome=outcome,
                                     target=target, source=source, detail=detail, also=also)
        kind = kind_of(actor, action, target, source, outcome, detail)
        if self.digest.repeat(kind, time.time(), authenticated):
            self._schedule_flush()
            return None
        row = await self.append(actor=actor, action=action, outcome=outcome, target=target,
                                source=source, detail=detail)
        self.digest.wrote(kind, row["seq"])
        self._schedule_flush()
        return row

    async def refused(self, *, actor: str, action: str, reason: str, target: str | None = None,
                      source: str | None = None, detail: dict[str, Any] | None = None,
                      authenticated: bool = False) -> None:
        """Record a refusal made outside an HTTP route (a WebSocket, an agent link).

        HTTP refusals are recorded by the audit middleware (api/audit.py) from the
        answer's status. Never raises: the refusal stands even if its record fails.
        """
        try:
            await self.append_or_count(actor=actor, action=action, outcome="denied",
                                       target=target, source=source,
                                       detail={**(detail or {}), "reason": reason[:500]},
                                       authenticated=authenticated)
        except Exception:
            log.exception("audit record of a refusal (%s by %s) could not be written",
                          action, actor)

    def _schedule_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_when_due())

    async def _flush_when_due(self) -> None:
        while (due_at := self.digest.next_due()) is not None:
            await asyncio.sleep(max(0.0, due_at - time.time()))
            await self._write_summaries(self.digest.due(time.time()))

    async def _write_summaries(self, summaries: list[Summary]) -> None:
        for s in summaries:
            span = {"repeats": s.repeats, "since": s.since, "until": s.until}
            try:
                if s.kind is None:
                    await self.append(
                        actor="server", action="refusals not itemised", outcome="denied",
                        detail={**span, "reason": f"more than {self.digest.max_kinds} kinds "
                                f"of refused call by unauthenticated clients within "
                                f"{self.digest.window:g} s"})
                    continue
                actor, action, target, source, outcome, detail = s.kind
                await self.append(actor=actor, action=action, outcome=outcome, target=target,
                                  source=source, detail={**json.loads(detail), **span,
                                                         "repeat_of": s.repeat_of})
            except Exception:
                log.exception("audit summary of %d repeated calls could not be written",
                              s.repeats)

    async def close(self) -> None:
        """Write every count still open (at shutdown), so no refusal goes unrecorded."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._write_summaries(self.digest.drain())
        if self.anchor_file is not None:
            self.anchor_file.close()

    # -- reading -----------------------------------------------------------------

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
            rows = as_dicts(await conn.execute(q))
        return rows[::-1]

    async def all(self, chunk: int = 5000) -> AsyncIterator[Row]:
        """Every record, oldest first, read in chunks."""
        after = 0
        while True:
            async with self.engine.connect() as conn:
                rows = as_dicts(await conn.execute(
                    sa.select(audit_log).where(audit_log.c.seq > after)
                    .order_by(audit_log.c.seq).limit(chunk)))
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            after = rows[-1]["seq"]

    async def verify(self, checkpoint: Checkpoint | None = None) -> Verdict:
        """The chain, against the newest anchor and ``checkpoint`` (an export's)."""
        anchor = self.newest_anchor()
        against = [(ANCHOR_NAME, anchor)] if anchor is not None else []
        if checkpoint is not None:
            against.append(("checkpoint", checkpoint))
        return verify(self.key, [r async for r in self.all()], checkpoints=against)

    def checkpoint(self, verdict: Verdict) -> Checkpoint | None:
        """A signed checkpoint of what ``verdict`` found intact (None if it did not)."""
        return sign_checkpoint(self.key, *verdict.head, time.time()) if verdict.ok else None
