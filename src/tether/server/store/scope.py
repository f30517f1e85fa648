"""A policy's reach (``access.policy.Scope``) as a SQL condition on a node id column.

Why in SQL: a list filtered after its ``LIMIT`` comes back short, or empty, for an
operator whose policy reaches only part of the fleet, though more rows they may
read exist further down. The nodes, commands and sessions lists share this one
translation, so what a list shows is exactly what ``Policy.allows`` decides.

A list names nodes, so it needs two rights at once: the list's own action
(``commands:read``, ``sessions:read``) and ``nodes:read``, since outside its read
scope a node does not exist for an operator (issue 12 #16). ``reach`` gives one
``Reach`` per action, and ``within`` ANDs them: a row is shown only on a node every
one of the actions is allowed on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sqlalchemy as sa

from tether.server.access.policy import Policy, Scope
from tether.server.store.schema import node_tags


@dataclasses.dataclass(frozen=True)
class Reach:
    """Where one node action is allowed: in ``allowed`` and not in ``denied``
    (None: no limit from that side)."""

    allowed: Scope | None = None
    denied: Scope | None = None


def reach(policy: Policy, *actions: str) -> tuple[Reach, ...]:
    """Where ``policy`` allows every one of ``actions``: one ``Reach`` for each action it
    does not allow everywhere (none at all: no condition, the common admin case)."""
    return tuple(Reach(policy.scope(a, "allow"), policy.scope(a, "deny"))
                 for a in dict.fromkeys(actions) if not policy.allows_everywhere(a))


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


def within(column: sa.ColumnElement[str], reaches: Iterable[Reach]) -> sa.ColumnElement[bool]:
    """``column`` (a node id) is within every one of ``reaches`` (none: any node)."""
    condition: sa.ColumnElement[bool] = sa.true()
    for r in reaches:
        if r.allowed is not None:
            condition = sa.and_(condition, in_scope(column, r.allowed))
        if r.denied is not None and not r.denied.empty():
            condition = sa.and_(condition, sa.not_(in_scope(column, r.denied)))
    return condition
