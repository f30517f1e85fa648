"""The review of live sessions, in process, on a real SQLite and PostgreSQL store.

What a change behind the hooks leaves (another replica's, a restore's, a store
call no route wraps) is what the periodic review is for: these tests make the
change through the store alone and check that a review ends exactly the sessions
that may no longer go on, with their reasons, through the bus as the API calls
it, and that the watchdog runs the review on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness import postgres_database
from tether.server.blobs import FolderBlobStore
from tether.server.bus import InProcessBus
from tether.server.gateway.registry import Registry
from tether.server.sessions.authority import SessionFilter
from tether.server.sessions.manager import LiveSession, SessionManager
from tether.server.store import Store
from tether.server.store.store import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path / 't.db'}")
        await s.create_admin_token_if_none()
        yield s
        await s.close()
    else:
        with postgres_database() as url:
            s = await open_store(url)
            await s.create_admin_token_if_none()
            yield s
            await s.close()


def manager_of(store: Store, tmp_path: Path, review_interval: float = 10.0) -> SessionManager:
    return SessionManager(store, Registry(), FolderBlobStore(tmp_path / "blobs"),
                          idle_timeout=1e6, max_duration=1e6, record_input=False,
                          review_interval=review_interval)


async def nodes(store: Store, n: int) -> list[str]:
    act, code = await store.create_activation(limit=n, expires_at=time.time() + 60, tags={},
                                              name_prefix=None)
    return [(await store.register_node(activation_id=act["activation_id"], code=code,
                                       computer_name=f"n{i}", replaces=None))[0]["node_id"]
            for i in range(n)]


async def operator(store: Store, name: str, statements: list[dict[str, Any]]) -> str:
    """The operator, and the id of its first token."""
    await store.operators.create(name, [], statements, "test")
    return str((await token(store, name))["token_id"])


async def token(store: Store, name: str, expires_at: float | None = None) -> dict[str, Any]:
    row, _ = await store.operators.create_token(name, None, expires_at)
    return row


async def live(manager: SessionManager, operator: str, token_id: str, node_id: str) -> str:
    """A live forward as ``start`` leaves it, without a node link (none is needed here)."""
    row = await manager.store.sessions.create(
        session_id=f"{operator}-{len(manager.live)}", node_id=node_id, operator=operator,
        kind="forward", target={"host": "127.0.0.1", "port": 80}, recording=None)
    session = LiveSession(row, None, token_id)
    manager.live[session.session_id] = session
    return session.session_id


def allow(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"effect": "allow", "actions": actions, "resources": resources}


async def test_a_review_ends_exactly_the_sessions_that_may_no_longer_go_on(
        store: Store, tmp_path: Path) -> None:
    manager = manager_of(store, tmp_path)
    bus = InProcessBus(manager.registry, manager)
    one, two = await nodes(store, 2)
    await store.set_tags(one, {"team": "a"}, [])
    await store.set_tags(two, {"team": "a"}, [])
    alice = await operator(store, "alice", [allow(["sessions:forward"], ["tag:team=a"])])
    bob = await operator(store, "bob", [allow(["sessions:*"], ["*"])])
    alice_two = (await token(store, "alice"))["token_id"]
    s1 = await live(manager, "alice", alice, one)
    s2 = await live(manager, "alice", alice_two, two)
    s3 = await live(manager, "bob", bob, one)

    assert await manager.review(SessionFilter(), "server") == {}

    # A revoked token: a review of other sessions leaves it, a review of all ends it.
    await store.operators.revoke_token(alice_two)
    assert await manager.review(SessionFilter(node_id=one), "server") == {}
    assert await manager.review(SessionFilter(), "server") == {s2: "token revoked"}

    # A retag: alice's session on the node ends, bob's (allowed everywhere) stays.
    await store.set_tags(one, {"team": "b"}, [])
    await bus.review_sessions(SessionFilter(node_id=one), actor="admin")
    assert set(manager.live) == {s3}
    row = await store.sessions.get(s1)
    assert row is not None and row["end_reason"] == \
        f"operator alice may no longer sessions:forward on {one}"

    # A disabled operator, told apart from its (also revoked) tokens.
    await store.operators.disable("bob")
    assert await manager.review(SessionFilter(operator="bob"), "admin") == \
        {s3: "operator disabled"}
    assert manager.live == {}
    ended = {r["session_id"]: r for r in await store.sessions.find(active=False)}
    assert {ended[s]["status"] for s in (s1, s2, s3)} == {"Terminated"}


async def test_the_watchdog_reviews_on_its_own_and_ends_at_expiry(
        store: Store, tmp_path: Path) -> None:
    manager = manager_of(store, tmp_path, review_interval=0.5)
    await manager.open()
    try:
        (node,) = await nodes(store, 1)
        first = await operator(store, "carol", [allow(["sessions:forward"], ["*"])])
        expiring = (await token(store, "carol", expires_at=time.time() + 1.5))["token_id"]
        revoked_later = await live(manager, "carol", first, node)
        expires = await live(manager, "carol", expiring, node)
        # What it learns at the start (here: the first review) sets the expiry it watches.
        await manager.review(SessionFilter(token_id=expiring), "server")
        assert manager.live[expires].expires_at is not None
        await store.operators.revoke_token(first)  # no hook: only the watchdog sees it
        deadline = time.monotonic() + 10
        while manager.live and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # polling interval of a deadline-bound poll
        reasons = {s: (await store.sessions.get(s) or {}).get("end_reason")
                   for s in (revoked_later, expires)}
        assert reasons == {revoked_later: "token revoked", expires: "token expired"}
    finally:
        await manager.close()
