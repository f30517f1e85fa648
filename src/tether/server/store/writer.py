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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from tether.server.store.store import Store

log = logging.getLogger(__name__)
MAX_BATCH = 2000
SLOW_BATCH = 0.5


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
        self._queue: list[tuple[str, dict[str, Any], asyncio.Future[None]]] = []
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

    async def write(self, kind: str, row: dict[str, Any]) -> None:
        """Queue one row of ``kind`` (a WriteBatch field); return once it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((kind, row, done))
        self._wake.set()
        await done

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
                except Exception:
                    # One bad row must not fail its neighbours: write them one by one.
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
                        done.set_result(None)

    async def _write_singly(self,
                            taken: list[tuple[str, dict[str, Any], asyncio.Future[None]]]
                            ) -> None:
        for kind, row, done in taken:
            single = WriteBatch()
            getattr(single, kind).append(row)
            try:
                await self.store.apply(single)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                self.rows += 1
                if not done.done():
                    done.set_result(None)
