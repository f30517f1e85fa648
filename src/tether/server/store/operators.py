"""Operators and their API tokens.

A token is shown once and kept only as its SHA-256. It acts for one operator,
may expire, and is refused once revoked or once its operator is disabled; what
the operator may do is that operator's roles and statements, read fresh on each
request, so a changed policy applies to the next call.

Every change that can take a right away (a new policy, a disable, a revoked
token) runs through ``_guarded``: in one transaction that holds the operators'
write lock, it makes the change, reads the result and rolls it back if no active
admin would remain (``access/admins.py``). Two admins demoting each other at the
same moment are therefore serialised, and the second is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol.ids import new_uuid
from tether.server.access.admins import (
    LAST_ADMIN,
    OperatorState,
    TokenState,
    active_admins,
    can_manage_operators,
    lockout,
)
from tether.server.secrets import hash_secret, new_secret
from tether.server.store.rows import as_dicts
from tether.server.store.schema import operator_tokens, operators

Row = dict[str, Any]
ADMIN = "admin"
_TOKEN_COLUMNS = [c for c in operator_tokens.c if c.name != "token_hash"]


class OperatorError(Exception):
    """A refused change; ``code`` is the stable name clients switch on."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _token_row(row: Any) -> Row:
    out = dict(row)
    out["operator"] = out.pop("name")
    return out


Change = Callable[[AsyncConnection, float], Awaitable[None]]
# PostgreSQL: blocks every other writer of both tables (and itself) until commit, not readers,
# so a token check never waits on it. SQLite has one writer at a time anyway.
_PG_LOCK = "LOCK TABLE operators, operator_tokens IN SHARE ROW EXCLUSIVE MODE"


async def _state(conn: AsyncConnection) -> tuple[list[OperatorState], list[TokenState]]:
    """Every operator and every live token, as the admin rule sees them."""
    ops = [OperatorState(r.name, r.roles, r.statements, r.disabled_at is not None)
           for r in await conn.execute(sa.select(
               operators.c.name, operators.c.roles, operators.c.statements,
               operators.c.disabled_at))]
    tokens = [TokenState(r.name, False, r.expires_at) for r in await conn.execute(
        sa.select(operator_tokens.c.name, operator_tokens.c.expires_at)
        .where(operator_tokens.c.revoked_at.is_(None)))]
    return ops, tokens


def _recovery(name: str, row: Row | None) -> Row:
    """What recovering ``name`` takes, given its row (None: no such operator)."""
    if row is None:
        return {"operator": name, "created": True, "re_enabled": False, "roles_added": []}
    roles_added = [] if can_manage_operators(row["roles"], row["statements"]) else [ADMIN]
    if roles_added and not can_manage_operators([*row["roles"], ADMIN], row["statements"]):
        raise OperatorError("recover_denied", f"operator {name}'s own statements deny "
                            "operators:manage; choose another --operator")
    return {"operator": name, "created": False, "re_enabled": row["disabled_at"] is not None,
            "roles_added": roles_added}


class Operators:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()

    async def _guarded(self, change: Change) -> None:
        """Make ``change``, refusing it (``last_admin``) if it leaves no active admin.

        The lock comes first: on PostgreSQL a table lock, on SQLite ``BEGIN
        IMMEDIATE``, so the state read before the change (the rule compares before
        and after) is still the state when the change is made; the asyncio lock
        spares this process's writers the database's busy wait. Rights can only be
        removed through here: a structural test (tests/unit/test_admins.py) fails on
        an UPDATE anywhere else.
        """
        now = time.time()
        async with self._lock, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text(_PG_LOCK))
            elif conn.dialect.name == "sqlite":
                # The state before the change is read too: take the write lock first
                # (the driver would only begin the transaction at the first write).
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            before = await _state(conn)
            await change(conn, now)
            refusal = lockout(before, await _state(conn), now)
            if refusal is not None:
                raise OperatorError(LAST_ADMIN, refusal)  # rolls the change back

    async def active_admins(self) -> frozenset[str]:
        async with self.engine.connect() as conn:
            return active_admins(*await _state(conn), time.time())

    async def bootstrap_admin(self) -> str | None:
        """On a fresh database: the admin operator and its first token (returned once)."""
        async with self.engine.begin() as conn:
            if await conn.scalar(sa.select(sa.func.count()).select_from(operator_tokens)):
                return None
            now = time.time()
            if await conn.scalar(sa.select(sa.func.count()).select_from(operators)
                                 .where(operators.c.name == ADMIN)) == 0:
                await conn.execute(operators.insert().values(
                    name=ADMIN, roles=[ADMIN], statements=[], created_at=now,
                    created_by="tether server (first start)"))
            token = new_secret("tth")
            await conn.execute(operator_tokens.insert().values(
                token_id=new_uuid(), name=ADMIN, token_hash=hash_secret(token),
                created_at=now, label="first admin token"))
            return token

    async def recover(self, name: str, by: str,
                      audit: Callable[[Row], Awaitable[object]]) -> tuple[Row, str]:
        """Break-glass (``tether admin recover``): make ``name`` an active admin and mint
        it a token, returned once.

        Creates the operator (role ``admin``) if it does not exist, re-enables it if it
        was disabled, and adds the ``admin`` role if its policy does not allow
        ``operators:manage``; an explicit deny of that in its own statements is
        refused rather than rewritten. ``audit`` is called with what will be done
        (and the new token's id) before the token exists, so none is ever without
        its record; it runs outside the transaction because the audit log has its
        own (on SQLite, a second writer inside ours would wait on ourselves).
        """
        plan = {**_recovery(name, await self.get(name)), "token_id": new_uuid()}
        await audit(plan)
        token = new_secret("tth")

        async def change(conn: AsyncConnection, now: float) -> None:
            # The token first: on SQLite that write takes the lock, so the row read
            # next cannot change before the commit.
            await conn.execute(operator_tokens.insert().values(
                token_id=plan["token_id"], name=name, token_hash=hash_secret(token),
                created_at=now, label="break-glass: tether admin recover"))
            row = await self._get(conn, name)
            steps = _recovery(name, row)
            if steps["created"]:
                await conn.execute(operators.insert().values(
                    name=name, roles=[ADMIN], statements=[], created_at=now, created_by=by))
            if steps["re_enabled"]:
                await conn.execute(operators.update().where(operators.c.name == name)
                                   .values(disabled_at=None))
            if steps["roles_added"] and row is not None:
                await conn.execute(operators.update().where(operators.c.name == name)
                                   .values(roles=[*row["roles"], *steps["roles_added"]]))

        await self._guarded(change)
        return plan, token

    async def token_manages_operators(self, token: str) -> bool:
        """Whether ``token`` works now and its operator is an active admin."""
        row = await self.for_token(token, time.time())
        return row is not None and can_manage_operators(row["roles"], row["statements"])

    async def for_token(self, token: str, now: float) -> Row | None:
        """The operator a valid token acts for (name, roles, statements, token_id)."""
        q = (sa.select(operators.c.name, operators.c.roles, operators.c.statements,
                       operator_tokens.c.token_id)
             .join(operators, operators.c.name == operator_tokens.c.name)
             .where(operator_tokens.c.token_hash == hash_secret(token),
                    operator_tokens.c.revoked_at.is_(None),
                    sa.or_(operator_tokens.c.expires_at.is_(None),
                           operator_tokens.c.expires_at > now),
                    operators.c.disabled_at.is_(None)))
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
            return dict(row) if row else None

    async def create(self, name: str, roles: list[str], statements: list[dict[str, Any]],
                     created_by: str) -> Row:
        async with self.engine.begin() as conn:
            if await self._get(conn, name) is not None:
                raise OperatorError("operator_exists", f"there is already an operator {name}")
            await conn.execute(operators.insert().values(
                name=name, roles=roles, statements=statements, created_at=time.time(),
                created_by=created_by))
            row = await self._get(conn, name)
            assert row is not None
            return row

    async def get(self, name: str) -> Row | None:
        async with self.engine.connect() as conn:
            return await self._get(conn, name)

    @staticmethod
    async def _get(conn: Any, name: str) -> Row | None:
        row = (await conn.execute(sa.select(operators).where(operators.c.name == name))
               ).mappings().first()
        return dict(row) if row else None

    async def all(self) -> list[Row]:
        async with self.engine.connect() as conn:
            return as_dicts(await conn.execute(
                sa.select(operators).order_by(operators.c.name)))

    async def update(self, name: str, roles: list[str] | None,
                     statements: list[dict[str, Any]] | None) -> Row | None:
        """Replace the roles and/or statements; refused if it demotes the last admin."""
        values: dict[str, Any] = {}
        if roles is not None:
            values["roles"] = roles
        if statements is not None:
            values["statements"] = statements

        async def change(conn: AsyncConnection, now: float) -> None:
            if values:
                await conn.execute(operators.update().where(operators.c.name == name)
                                   .values(**values))

        await self._guarded(change)
        return await self.get(name)

    async def disable(self, name: str) -> Row | None:
        """Disable the operator and revoke every token it has, at once; refused if it
        is the last admin."""
        async def change(conn: AsyncConnection, now: float) -> None:
            await conn.execute(operators.update().where(
                operators.c.name == name, operators.c.disabled_at.is_(None))
                .values(disabled_at=now))
            await conn.execute(operator_tokens.update().where(
                operator_tokens.c.name == name, operator_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now))

        await self._guarded(change)
        return await self.get(name)

    async def create_token(self, operator: str, label: str | None,
                           expires_at: float | None) -> tuple[Row, str]:
        token = new_secret("tth")
        token_id = new_uuid()
        async with self.engine.begin() as conn:
            await conn.execute(operator_tokens.insert().values(
                token_id=token_id, name=operator, token_hash=hash_secret(token),
                created_at=time.time(), label=label, expires_at=expires_at))
            row = (await conn.execute(sa.select(*_TOKEN_COLUMNS).where(
                operator_tokens.c.token_id == token_id))).mappings().one()
            return _token_row(row), token

    async def tokens(self, operator: str | None = None) -> list[Row]:
        q = sa.select(*_TOKEN_COLUMNS).order_by(operator_tokens.c.created_at)
        if operator is not None:
            q = q.where(operator_tokens.c.name == operator)
        async with self.engine.connect() as conn:
            return [_token_row(r) for r in (await conn.execute(q)).mappings()]

    async def revoke_token(self, token_id: str) -> Row | None:
        """Revoke at once; refused if it is the last admin's last valid token."""
        async def change(conn: AsyncConnection, now: float) -> None:
            await conn.execute(operator_tokens.update().where(
                operator_tokens.c.token_id == token_id, operator_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now))

        await self._guarded(change)
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(*_TOKEN_COLUMNS).where(
                operator_tokens.c.token_id == token_id))).mappings().first()
            return _token_row(row) if row else None
