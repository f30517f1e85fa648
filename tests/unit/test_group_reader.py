"""``GroupReader``: lookups asked together are one fetch; each caller gets its own answer."""

from __future__ import annotations

import asyncio

from tether.server.store.reader import GroupReader


async def test_lookups_asked_together_are_one_fetch_and_each_gets_its_value() -> None:
    fetched: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, int]:
        fetched.append(keys)
        await asyncio.sleep(0)  # a query in flight: later lookups gather behind it
        return {k: len(k) for k in keys if k != "missing"}

    reader: GroupReader[str, int] = GroupReader(fetch, max_keys=3)
    first = await reader.get("a")  # a lone lookup goes at once
    assert (first, fetched) == (1, [["a"]])
    got = await asyncio.gather(*(reader.get(k) for k in
                                 ["bb", "ccc", "bb", "missing", "dddd", "eeeee"]))
    assert got == [2, 3, 2, None, 4, 5]
    # One fetch per turn, at most max_keys keys each, a key asked twice fetched once.
    assert fetched[1:] == [["bb", "ccc", "missing"], ["dddd", "eeeee"]]


async def test_a_failed_fetch_fails_each_of_its_callers_and_not_the_next() -> None:
    calls = 0

    async def fetch(keys: list[str]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database down")
        return {k: 1 for k in keys}

    reader: GroupReader[str, int] = GroupReader(fetch)
    results = await asyncio.gather(reader.get("x"), reader.get("y"), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert str(results[0]) == "database down"
    assert await reader.get("z") == 1
