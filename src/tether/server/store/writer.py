"""Group commit: the many small writes agents cause, in one transaction per turn.

Every connected agent causes writes: presence on connect and disconnect, its
inventory, and for each invocation an ``accepted`` and a ``result``. One
transaction each is what limits a fan-out to thousands of nodes (SQLite
serialises writers; PostgreSQL pays a round trip and a commit each). Here a
single task takes everything queued, writes it in one transaction, then wakes
each caller: a caller still returns only once its write is committed (results
are acknowledged to agents after that, never before), and while one batch is
being written the next one gathers. There is no timer: a lone write goes out at
once, and batches grow exactly as fast as load does.

One row the database refuses (a value it cannot hold) must not fail its
neighbours, nor leave an invocation open: the batch is then written row by
row, and a row that still fails is replaced by what ``_INSTEAD`` says for its
kind. A result becomes ``Failed`` with a reason naming the database's
complaint (first keeping its output, then without it), so its invocation ends
and the agent's result is acknowledged; a row of another kind is dropped and
logged (a presence, an inventory, an ``accepted``: the next one corrects it).
Only when the replacement fails too (the database itself is down) does the
caller see the exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from tether.protocol.limits import REASON, truncate_text
from tether.server.store.store import Store

log = logging.getLogger(__name__)
MAX_BATCH = 2000
SLOW_BATCH = 0.5
_WHY_CHARS = 200  # of the database's complaint, in a replacement result's reason


class Written(enum.Enum):
    STORED = "stored"
    REPLACED = "replaced"  # the row was refused; its replacement (see _INSTEAD) was stored
    DROPPED = "dropped"    # the row was refused and its kind has no replacement


def refusal(exc: BaseException) -> str:
    """The database's complaint, short and without the statement or its values.

    SQLAlchemy's message carries the SQL and every parameter (a 1.5 MB reason, say);
    the driver's own first line says what was wrong (``value too long for type
    character varying(500)``, ``Python int too large to convert to SQLite INTEGER``).
    """
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return first[:_WHY_CHARS]


def _failed_result(row: dict[str, Any], why: str, *, keep_output: bool) -> dict[str, Any]:
    reason = (f"the server could not store the node's result ({why}); "
              f"the node reported {str(row.get('b_status'))[:16]}")
    out = dict(row, b_status="Failed", b_exit_code=None,
               b_reason=truncate_text(reason, REASON))
    if not keep_output:
        out.update(b_stdout_size=None, b_stderr_size=None, b_stdout_inline=None,
                   b_stderr_inline=None, b_stdout_truncated=True, b_stderr_truncated=True)
    return out


# What to store instead of a refused row, per kind, tried in order.
_INSTEAD: dict[str, tuple[Callable[[dict[str, Any], str], dict[str, Any]], ...]] = {
    "results": (lambda row, why: _failed_result(row, why, keep_output=True),
                lambda row, why: _failed_result(row, why, keep_output=False)),
}


@dataclasses.dataclass
class WriteBatch:
    """Rows for each kind of write; each list is one executemany in the transaction."""

    presence: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    inventories: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    accepted: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.presence) + len(self.inventories) + len(self.accepted)
                + len(self.results))


class GroupWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[str, dict[str, Any], asyncio.Future[Written]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def write(self, kind: str, row: dict[str, Any]) -> Written:
        """Queue one row of ``kind`` (a WriteBatch field); return once it is committed.

        Raises only when the database takes neither the row nor its replacement.
        """
        return await self.queue(kind, row)

    def queue(self, kind: str, row: dict[str, Any]) -> asyncio.Future[Written]:
        """Queue one row; the future is done once it is committed (``write``'s outcome).

        For a caller that must not wait for the commit before it goes on: rows are
        written in the order queued (in one batch or an earlier one), so a row
        queued later still lands after it.
        """
        done: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._queue.append((kind, row, done))
        self._wake.set()
        return done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                taken, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                batch = WriteBatch()
                for kind, row, _ in taken:
                    getattr(batch, kind).append(row)
                started = time.monotonic()
                try:
                    await self.store.apply(batch)
                except Exception as exc:
                    # One bad row must not fail its neighbours: write them one by one.
                    # The database's refusal in one line: a value it cannot hold is an
                    # agent's doing, and one traceback per message would flood the log.
                    if isinstance(exc, DBAPIError):
                        log.error("group write of %d rows failed (%s); writing them singly",
                                  len(batch), refusal(exc))
                    else:
                        log.exception("group write of %d rows failed; writing them singly",
                                      len(batch))
                    await self._write_singly(taken)
                    continue
                took = time.monotonic() - started
                if took > SLOW_BATCH:  # every agent waiting on it is held this long
                    log.warning("group commit of %d rows took %.2f s", len(batch), took)
                self.batches += 1
                self.rows += len(batch)
                for _, _, done in taken:
                    if not done.done():
                        done.set_result(Written.STORED)

    async def _write_singly(self,
                            taken: list[tuple[str, dict[str, Any], asyncio.Future[Written]]]
                            ) -> None:
        for kind, row, done in taken:
            try:
                outcome = await self._write_one(kind, row)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(outcome)

    async def _write_one(self, kind: str, row: dict[str, Any]) -> Written:
        """``row``, else its replacements in turn; raise what the last one raised."""
        try:
            await self._apply_one(kind, row)
            return Written.STORED
        except Exception as exc:
            why = refusal(exc)
        instead = _INSTEAD.get(kind, ())
        log.error("the database refused a %s row (%s); %s", kind, why,
                  "storing a replacement" if instead else "dropped")
        if not instead:
            return Written.DROPPED
        for replace in instead[:-1]:
            try:
                await self._apply_one(kind, replace(row, why))
                return Written.REPLACED
            except Exception as exc:
                log.error("the database refused the replacement too (%s)", refusal(exc))
        await self._apply_one(kind, instead[-1](row, why))
        return Written.REPLACED

    async def _apply_one(self, kind: str, row: dict[str, Any]) -> None:
        single = WriteBatch()
        getattr(single, kind).append(row)
        await self.store.apply(single)
        self.rows += 1
