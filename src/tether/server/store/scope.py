"""A policy's reach (``access.policy.Scope``) as a SQL condition on a node id column.

Why in SQL: a list filtered after its ``LIMIT`` comes back short, or empty, for an
operator whose policy reaches only part of the fleet, though more rows they may
read exist further down. The nodes, commands and sessions lists share this one
translation, so what a list shows is exactly what ``Policy.allows`` decides.
"""

from __future__ import annotations

import sqlalchemy as sa

from tether.server.access.policy import Scope
from tether.server.store.schema import node_tags


def in_scope(column: sa.ColumnElement[str], scope: Scope) -> sa.ColumnElement[bool]:
    """``column`` (a node id) is in ``scope``: by id, or by one of the scope's tags."""
    if scope.everything:
        return sa.true()
    parts: list[sa.ColumnElement[bool]] = [sa.false()]
    if scope.node_ids:
        parts.append(column.in_(sorted(scope.node_ids)))
    for key, value in sorted(scope.tags):
        parts.append(column.in_(sa.select(node_tags.c.node_id).where(
            node_tags.c.key == key, node_tags.c.value == value)))
    return sa.or_(*parts)


def readable(column: sa.ColumnElement[str], allowed: Scope | None,
             denied: Scope | None) -> sa.ColumnElement[bool]:
    """In the allow scope and not in the deny scope (None: no limit from that side)."""
    condition: sa.ColumnElement[bool] = sa.true()
    if allowed is not None:
        condition = sa.and_(condition, in_scope(column, allowed))
    if denied is not None and not denied.empty():
        condition = sa.and_(condition, sa.not_(in_scope(column, denied)))
    return condition
