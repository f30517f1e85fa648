"""Change counters per command, so a waiting client hears of progress at once.

The CLI long-polls ``GET /commands/{id}?after=N``; every status change bumps
the command's counter and wakes the waiters. Polling on a timer would add up
to a full poll period to every command's latency.
"""

from __future__ import annotations

import asyncio
import contextlib


class CommandWatch:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._changed = asyncio.Condition()

    def version(self, command_id: str) -> int:
        return self._versions.get(command_id, 0)

    async def bump(self, *command_ids: str) -> None:
        for cid in command_ids:
            self._versions[cid] = self._versions.get(cid, 0) + 1
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, command_id: str, after: int, timeout: float) -> int:
        with contextlib.suppress(asyncio.TimeoutError):
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version(command_id) > after), timeout)
        return self.version(command_id)
