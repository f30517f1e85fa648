"""Session rows: written when a session starts and when it ends, nothing between.

The bytes relayed and the last activity live in memory while a session runs
(``tether.server.sessions.manager``); writing them per frame would make the
database the bottleneck of a port forward.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.store.rows import as_dicts
from tether.server.store.schema import nodes, operator_tokens, operators, sessions
from tether.server.store.scope import Reach, within

Row = dict[str, Any]
CONNECTED, TERMINATED, FAILED = "Connected", "Terminated", "Failed"
# A session row with its node's name (``node_name``), for the tables people read.
_NAMED = (sa.select(sessions, nodes.c.name.label("node_name"))
          .select_from(sessions.outerjoin(nodes, nodes.c.node_id == sessions.c.node_id)))


def new_session_id(operator: str) -> str:
    """Like Session Manager's: the operator's name, a dash, 17 hex digits."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in operator)[:20]
    return f"{safe}-{secrets.token_hex(9)[:17]}"


class Sessions:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, *, session_id: str, node_id: str, operator: str, kind: str,
                     target: dict[str, Any], recording: str | None) -> Row:
        row: Row = dict(session_id=session_id, node_id=node_id,
                        operator=operator, kind=kind, status=CONNECTED, target=target,
                        started_at=time.time(), recording=recording, bytes_to_node=0,
                        bytes_from_node=0, ended_at=None, end_reason=None, exit_code=None)
        async with self.engine.begin() as conn:
            await conn.execute(sessions.insert().values(**row))
        return row

    async def end(self, session_id: str, *, status: str, reason: str,
                  exit_code: int | None, bytes_to_node: int, bytes_from_node: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sessions.update().where(
                sessions.c.session_id == session_id, sessions.c.ended_at.is_(None)).values(
                status=status, end_reason=reason, exit_code=exit_code, ended_at=time.time(),
                bytes_to_node=bytes_to_node, bytes_from_node=bytes_from_node))

    async def end_all_open(self, reason: str) -> list[Row]:
        """At start: sessions a previous process left open cannot still be running."""
        async with self.engine.begin() as conn:
            left = as_dicts(await conn.execute(
                sa.select(sessions).where(sessions.c.ended_at.is_(None))))
            await conn.execute(sessions.update().where(sessions.c.ended_at.is_(None)).values(
                status=TERMINATED, end_reason=reason, ended_at=time.time()))
        return left

    async def grants(self, token_ids: Sequence[str]) -> dict[str, Row]:
        """Each token with its operator's name, roles, statements and disabled_at, by id:
        what a live session's right to go on rests on (``sessions/authority.py``). Read
        whatever the token's state, so a revoked token is told apart from an unknown one."""
        q = (sa.select(operator_tokens.c.token_id, operator_tokens.c.revoked_at,
                       operator_tokens.c.expires_at, operators.c.name, operators.c.roles,
                       operators.c.statements, operators.c.disabled_at)
             .join(operators, operators.c.name == operator_tokens.c.name))
        out: dict[str, Row] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(token_ids), 1000):
                chunk = list(token_ids[start:start + 1000])
                for r in (await conn.execute(q.where(
                        operator_tokens.c.token_id.in_(chunk)))).mappings():
                    out[r["token_id"]] = dict(r)
        return out

    async def get(self, session_id: str) -> Row | None:
        """One session, with its node's name as ``find`` gives it."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_NAMED.where(
                sessions.c.session_id == session_id))).mappings().first()
        return dict(row) if row else None

    async def find(self, *, node_ids: Sequence[str] | None = None, operator: str | None = None,
                   active: bool | None = None, limit: int = 100,
                   reach: Sequence[Reach] = ()) -> list[Row]:
        """Newest first, on the nodes within every one of ``reach`` (a policy's reach,
        ``store/scope.py``, applied before the limit), each with its node's name
        (``node_name``, for the tables people read)."""
        q = (_NAMED.where(within(sessions.c.node_id, reach))
             .order_by(sessions.c.started_at.desc()).limit(limit))
        if node_ids is not None:
            q = q.where(sessions.c.node_id.in_(list(node_ids)))
        if operator is not None:
            q = q.where(sessions.c.operator == operator)
        if active is not None:
            q = q.where(sessions.c.ended_at.is_(None) if active
                        else sessions.c.ended_at.is_not(None))
        async with self.engine.connect() as conn:
            return as_dicts(await conn.execute(q))
