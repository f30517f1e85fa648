"""The last admin: who counts as one, and that no change can leave none.

Why: revoking one's own token or demoting oneself used to be accepted and left a
server no one could manage. ``access/admins.py`` says who is an active admin
(enabled, ``operators:manage`` from any role or statement, a valid token); the
store refuses a change after which none is left, inside the change's own
transaction. The structural test keeps every write that can take a right away
on that one path; the store tests run it on a real SQLite database, with two
engines racing as two processes would.
"""

from __future__ import annotations

import ast
import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether.server.access.admins import (
    LASTING,
    OperatorState,
    TokenState,
    active_admins,
    can_manage_operators,
    lockout,
)
from tether.server.store import Store, open_store
from tether.server.store.operators import OperatorError

SRC = Path(__file__).resolve().parents[2] / "src" / "tether"
NOW = 1_000_000.0
MANAGE_ALL = [{"effect": "allow", "actions": ["operators:manage"], "resources": ["*"]}]
DENY_MANAGE = [{"effect": "deny", "actions": ["operators:*"], "resources": ["*"]}]


def admins(*ops: OperatorState, tokens: tuple[TokenState, ...] | None = None) -> frozenset[str]:
    given = tokens if tokens is not None else tuple(TokenState(op.name) for op in ops)
    return active_admins(ops, given, NOW)


@pytest.mark.parametrize(("op", "token", "counts"), [
    (OperatorState("a", ["admin"], []), TokenState("a"), True),
    (OperatorState("a", [], MANAGE_ALL), TokenState("a"), True),  # a statement, not the role
    (OperatorState("a", ["operator"], MANAGE_ALL), TokenState("a"), True),
    (OperatorState("a", ["admin"], DENY_MANAGE), TokenState("a"), False),  # deny wins
    (OperatorState("a", ["admin"], [], disabled=True), TokenState("a"), False),
    (OperatorState("a", ["admin"], []), TokenState("a", revoked=True), False),
    (OperatorState("a", ["admin"], []), TokenState("a", expires_at=NOW), False),
    (OperatorState("a", ["admin"], []), TokenState("a", expires_at=NOW + 1), True),
    (OperatorState("a", ["admin"], []), TokenState("b"), False),  # someone else's token
    (OperatorState("a", ["operator"], []), TokenState("a"), False),
    (OperatorState("a", ["viewer"], []), TokenState("a"), False),
    # operators:manage is server-wide: an allow on a node or a tag grants nothing.
    (OperatorState("a", [], [{"effect": "allow", "actions": ["*"],
                              "resources": ["tag:site=a"]}]), TokenState("a"), False),
    (OperatorState("a", ["no-such-role"], []), TokenState("a"), False),  # grants nothing
])
def test_who_is_an_active_admin(op: OperatorState, token: TokenState, counts: bool) -> None:
    assert (admins(op, tokens=(token,)) == {"a"}) is counts


def test_one_valid_token_among_revoked_and_expired_is_enough() -> None:
    op = OperatorState("a", ["admin"], [])
    dead = (TokenState("a", revoked=True), TokenState("a", expires_at=NOW - 1))
    assert admins(op, tokens=dead) == set()
    assert admins(op, tokens=(*dead, TokenState("a"))) == {"a"}


def test_lockout_names_the_way_out_only_when_no_admin_is_left() -> None:
    viewer, admin = OperatorState("v", ["viewer"], []), OperatorState("a", ["admin"], [])
    before = ([viewer, admin], [TokenState("v"), TokenState("a")])
    assert lockout(before, before, NOW) is None
    message = lockout(before, ([viewer, admin], [TokenState("v")]), NOW)
    assert message is not None
    assert "tether operators create NAME --role admin" in message
    assert "tether tokens create --operator NAME" in message


A, B = OperatorState("a", ["admin"], []), OperatorState("b", ["admin"], [])
FOREVER, SOON = TokenState("a"), TokenState("a", expires_at=NOW + 2)
DAY_AND_A_BIT = TokenState("a", expires_at=NOW + LASTING + 1)


@pytest.mark.parametrize(("before", "after", "refused"), [
    # The red team's lockout on a timer: a 2 s token made, then the permanent one revoked.
    ([FOREVER, SOON], [SOON], "lasts more than 24 hours"),
    ([FOREVER, TokenState("a", expires_at=NOW + LASTING)], [TokenState(
        "a", expires_at=NOW + LASTING)], "lasts more than 24 hours"),  # exactly 24 h: not past
    ([FOREVER, DAY_AND_A_BIT], [DAY_AND_A_BIT], None),  # outlives the margin: counts
    ([FOREVER, SOON], [FOREVER], None),  # revoking the short one is fine
    ([FOREVER], [], "valid token"),
    # Every admin on short tokens already: a change only has to leave one that works now,
    # so a leaked token can always be revoked; the last one still cannot.
    ([SOON, TokenState("a", expires_at=NOW + 60)], [SOON], None),
    ([SOON], [], "valid token"),
    # Another admin's short token does not make up for the last lasting one.
    ([FOREVER, TokenState("b", expires_at=NOW + 60)], [TokenState("b", expires_at=NOW + 60)],
     "lasts more than 24 hours"),
])
def test_a_change_must_leave_an_admin_whose_token_lasts(
        before: list[TokenState], after: list[TokenState], refused: str | None) -> None:
    message = lockout(([A, B], before), ([A, B], after), NOW)
    assert (message is None) if refused is None else (refused in (message or "")), message


def test_a_policy_that_does_not_parse_grants_nothing() -> None:
    assert not can_manage_operators(["admin"], [{"effect": "maybe"}])


# -- the one path: a structural guard ----------------------------------------------

RIGHTS_TABLES = {"operators", "operator_tokens"}


def _writes(tree: ast.AST) -> list[ast.Call]:
    """``operators.update()``, ``operator_tokens.delete()``...: writes that can take a
    right away (an insert adds an operator or a token; it cannot remove one)."""
    return [n for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("update", "delete") and isinstance(n.func.value, ast.Name)
            and n.func.value.id in RIGHTS_TABLES]


def test_every_write_that_can_remove_a_right_runs_inside_guarded() -> None:
    """Outside store/operators.py (and the migrations) nothing updates or deletes
    operators or tokens; inside it, only a ``change`` handed to ``self._guarded``."""
    for path in SRC.rglob("*.py"):
        if "migrations" in path.parts or path == SRC / "server" / "store" / "operators.py":
            continue
        text = path.read_text()
        assert not _writes(ast.parse(text)), path
        for sql in ("UPDATE operator", "DELETE FROM operator"):
            assert sql.lower() not in text.lower(), (path, sql)
    store = SRC / "server" / "store" / "operators.py"
    tree = ast.parse(store.read_text())
    guarded_changes = 0
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        writes = [w for w in _writes(fn) if not any(
            w in _writes(inner) for inner in ast.walk(fn)
            if inner is not fn and isinstance(inner, ast.AsyncFunctionDef | ast.FunctionDef))]
        if not writes:
            continue
        assert fn.name == "change", (fn.name, [ast.unparse(w) for w in writes])
        guarded_changes += 1
    handed = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and ast.unparse(n.func) == "self._guarded" and n.args
              and isinstance(n.args[0], ast.Name) and n.args[0].id == "change"]
    changes = [fn for fn in ast.walk(tree)
               if isinstance(fn, ast.AsyncFunctionDef) and fn.name == "change"]
    assert len(handed) == len(changes) >= guarded_changes >= 3  # update, disable, revoke...


# -- the store, on a real SQLite database --------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'tether.db'}")
    assert await s.create_admin_token_if_none() is not None
    yield s
    await s.close()


async def _token_id(store: Store, operator: str) -> str:
    (row,) = [t for t in await store.operators.tokens(operator) if t["revoked_at"] is None]
    token_id: str = row["token_id"]
    return token_id


async def test_the_last_admin_cannot_revoke_be_disabled_or_be_demoted(store: Store) -> None:
    ops = store.operators
    token_id = await _token_id(store, "admin")
    for attempt in (ops.revoke_token(token_id), ops.disable("admin"),
                    ops.update("admin", ["operator"], []),
                    ops.update("admin", None, DENY_MANAGE)):
        with pytest.raises(OperatorError) as refused:
            await attempt
        assert refused.value.code == "last_admin"
    assert await ops.active_admins() == {"admin"}  # every refusal was rolled back
    (token,) = await ops.tokens("admin")
    assert token["revoked_at"] is None


async def test_with_a_second_admin_one_may_go(store: Store) -> None:
    ops = store.operators
    await ops.create("bob", [], MANAGE_ALL, "admin")
    await ops.create_token("bob", None, None)
    await ops.update("admin", ["viewer"], [])
    assert await ops.active_admins() == {"bob"}
    with pytest.raises(OperatorError):
        await ops.revoke_token(await _token_id(store, "bob"))
    # Revoking a token that is not the last admin's is no one's business here.
    await ops.create("carol", ["viewer"], [], "admin")
    row, _ = await ops.create_token("carol", None, None)
    assert (await ops.revoke_token(row["token_id"]) or {})["revoked_at"] is not None


async def test_an_admin_whose_only_other_token_expired_does_not_count(store: Store) -> None:
    ops = store.operators
    await ops.create("bob", ["admin"], [], "admin")
    await ops.create_token("bob", None, expires_at=1.0)  # long expired
    with pytest.raises(OperatorError):
        await ops.update("admin", ["viewer"], [])


async def test_two_admins_demoting_each_other_at_once_do_not_both_succeed(
        tmp_path: Path) -> None:
    """Two engines on one file, as the server and a second process would be: the
    write lock serialises the two transactions and the second sees the first."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    first, second = await open_store(url), await open_store(url)
    try:
        await first.create_admin_token_if_none()
        await first.operators.create("bob", ["admin"], [], "admin")
        await first.operators.create_token("bob", None, None)
        for _ in range(10):
            results = await asyncio.gather(
                first.operators.update("admin", ["viewer"], []),
                second.operators.update("bob", ["viewer"], []), return_exceptions=True)
            refused = [r for r in results if isinstance(r, OperatorError)]
            assert len(refused) == 1 and refused[0].code == "last_admin", results
            (survivor,) = await first.operators.active_admins()
            demoted = "bob" if survivor == "admin" else "admin"
            await first.operators.update(demoted, ["admin"], [])  # a promotion is never refused
    finally:
        await first.close()
        await second.close()


async def test_recover_makes_an_active_admin_and_audits_first(store: Store) -> None:
    ops = store.operators
    await ops.create("bob", ["admin"], [], "admin")
    await ops.create_token("bob", None, None)
    await ops.disable("admin")
    recorded: list[dict[str, Any]] = []

    async def audit(plan: dict[str, Any]) -> None:
        assert await ops.tokens("admin") == [t for t in await ops.tokens("admin")
                                             if t["token_id"] != plan["token_id"]]
        recorded.append(plan)

    done, token = await ops.recover("admin", "test", audit)
    assert recorded == [done] and done["re_enabled"] and not done["created"]
    assert await ops.token_manages_operators(token)
    assert await ops.active_admins() == {"admin", "bob"}
    created, _ = await ops.recover("newcomer", "test", audit)
    assert created["created"] and (await ops.get("newcomer") or {})["roles"] == ["admin"]
    await ops.create("denied", ["viewer"], DENY_MANAGE, "admin")
    with pytest.raises(OperatorError) as refused:
        await ops.recover("denied", "test", audit)
    assert refused.value.code == "recover_denied" and len(recorded) == 2


# -- the database file is the owner's ---------------------------------------------


async def test_the_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        s = await open_store(f"sqlite:///{tmp_path / 'tether.db'}")
        await s.create_admin_token_if_none()  # a write: the WAL and its index exist now
        await s.close()
        files = sorted(tmp_path.glob("tether.db*"))
        assert [f.name for f in files] == ["tether.db", "tether.db-shm", "tether.db-wal"] or (
            [f.name for f in files] == ["tether.db"])  # a clean close may drop the WAL
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        # An older install's world-readable files are tightened on the next start.
        for f in files:
            os.chmod(f, 0o644)
        s = await open_store(f"sqlite:///{tmp_path / 'tether.db'}")
        for f in tmp_path.glob("tether.db*"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        await s.close()
    finally:
        os.umask(old)
