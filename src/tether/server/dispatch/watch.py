"""Change counters per command, so a waiting client hears of progress at once.

The CLI long-polls ``GET /commands/{id}?after=N``; every status change bumps
the command's counter and wakes the waiters of that command only. Polling on a
timer would add up to a full poll period to every command's latency. A change
is cheap (a counter, and a future per waiter): a 10,000-node fan-out makes
20,000 of them, and the one ``asyncio.Condition`` this was before woke every
waiter of every command for each, through its lock.
"""

from __future__ import annotations

import asyncio
import contextlib


class CommandWatch:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def version(self, command_id: str) -> int:
        return self._versions.get(command_id, 0)

    def changed(self, *command_ids: str) -> None:
        """Count a change of each command and wake whoever waits on it."""
        for cid in command_ids:
            self._versions[cid] = self._versions.get(cid, 0) + 1
            for waiter in self._waiters.pop(cid, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def bump(self, *command_ids: str) -> None:
        self.changed(*command_ids)

    async def wait(self, command_id: str, after: int, timeout: float) -> int:
        """The command's version once it is past ``after``, or after ``timeout`` s."""
        if self.version(command_id) > after:
            return self.version(command_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(command_id, set())
        waiters.add(waiter)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(command_id) is waiters:
                del self._waiters[command_id]
        return self.version(command_id)
