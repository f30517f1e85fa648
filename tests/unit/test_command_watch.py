"""``CommandWatch``: a change wakes the waiters of that command, at once, and only them."""

from __future__ import annotations

import asyncio

from tether.server.dispatch.watch import CommandWatch


async def test_a_change_wakes_its_commands_waiters_only() -> None:
    watch = CommandWatch()
    a = asyncio.create_task(watch.wait("a", 0, 30))
    b = asyncio.create_task(watch.wait("b", 0, 30))
    await asyncio.sleep(0)  # both waiting
    watch.changed("a")
    assert await asyncio.wait_for(a, 5) == 1
    assert not b.done()
    await watch.bump("b", "b")
    assert await asyncio.wait_for(b, 5) == 2
    assert watch._waiters == {}  # nothing left behind by woken waiters


async def test_a_wait_past_the_version_returns_at_once_and_a_timeout_returns_it() -> None:
    watch = CommandWatch()
    watch.changed("c")
    assert await asyncio.wait_for(watch.wait("c", 0, 30), 1) == 1
    assert await watch.wait("c", 1, 0.01) == 1  # nothing changed: the same version
    assert watch._waiters == {}  # a waiter that timed out is gone too
