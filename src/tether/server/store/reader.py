"""Group reads: the same lookup by many links at once, answered by one query.

Every link that connects asks two questions of the database: whose credential is
this (``Store.authenticate_node``), and what waits for this node
(``Store.deliverable``). In a storm of 10,000 reconnecting agents that was 20,000
queries, each a round trip through the driver (a thread hop on SQLite, a network
round trip on PostgreSQL): the storm's largest cost after the handshakes
themselves. As the group writer does for writes (writer.py), one task takes every
key asked while the previous query ran and asks for all of them at once
(``WHERE key IN (...)``, at most ``max_keys``). There is no timer: a lone lookup
goes out at once, and groups grow exactly as fast as load does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["GroupReader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GroupReader(Generic[K, V]):
    """``get(key)``: ``fetch(keys)``'s value for that key (a key it leaves out: None)."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]],
                 max_keys: int = 500) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        done: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(done)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await done

    async def _run(self) -> None:
        while self._waiting:
            keys = list(self._waiting)[:self._max_keys]
            futures = {k: self._waiting.pop(k) for k in keys}
            try:
                found = await self._fetch(keys)
            except BaseException as exc:  # each caller sees the query's failure
                for waiters in futures.values():
                    for f in waiters:
                        if not f.done():
                            f.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for key, waiters in futures.items():
                for f in waiters:
                    if not f.done():
                        f.set_result(found.get(key))
