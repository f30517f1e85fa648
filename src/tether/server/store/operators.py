"""Operators and their API tokens.

A token is shown once and kept only as its SHA-256. It acts for one operator,
may expire, and is refused once revoked or once its operator is disabled; what
the operator may do is that operator's roles and statements, read fresh on each
request, so a changed policy applies to the next call.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.ids import new_uuid
from tether.server.secrets import hash_secret, new_secret
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


class Operators:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

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
            return [dict(r) for r in (await conn.execute(
                sa.select(operators).order_by(operators.c.name))).mappings()]

    async def update(self, name: str, roles: list[str] | None,
                     statements: list[dict[str, Any]] | None) -> Row | None:
        values: dict[str, Any] = {}
        if roles is not None:
            values["roles"] = roles
        if statements is not None:
            values["statements"] = statements
        async with self.engine.begin() as conn:
            if values:
                await conn.execute(operators.update().where(operators.c.name == name)
                                   .values(**values))
            return await self._get(conn, name)

    async def disable(self, name: str) -> Row | None:
        """Disable the operator and revoke every token it has, at once."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(operators.update().where(
                operators.c.name == name, operators.c.disabled_at.is_(None))
                .values(disabled_at=now))
            await conn.execute(operator_tokens.update().where(
                operator_tokens.c.name == name, operator_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now))
            return await self._get(conn, name)

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
        async with self.engine.begin() as conn:
            await conn.execute(operator_tokens.update().where(
                operator_tokens.c.token_id == token_id, operator_tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time()))
            row = (await conn.execute(sa.select(*_TOKEN_COLUMNS).where(
                operator_tokens.c.token_id == token_id))).mappings().first()
            return _token_row(row) if row else None
