"""``store/scope.within``: the SQL that lists use decides as ``Policy.allows`` does.

Lists of things on nodes (commands, sessions) need two rights at once, the list's own
action and ``nodes:read`` (issue 12 #16), so the condition is an AND of one reach per
action. Run against a real SQLite database with the real ``node_tags`` table, for
random policies and fleets, it must select exactly the nodes on which every action is
allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy import nodes, raw_statements

from tether.server.access.policy import NODE_ACTIONS, ROLES, Node, Policy, parse_statements
from tether.server.store.schema import node_tags
from tether.server.store.scope import reach, within

ids = sa.Table("ids", sa.MetaData(), sa.Column("node_id", sa.String(20), primary_key=True))


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://")
    node_tags.create(engine)
    ids.create(engine)
    yield engine
    engine.dispose()


def selected(engine: sa.Engine, fleet: list[Node], condition: sa.ColumnElement[bool]) -> set[str]:
    with engine.begin() as conn:
        conn.execute(node_tags.delete())
        conn.execute(ids.delete())
        unique = {n.node_id: n for n in fleet}
        if unique:
            conn.execute(ids.insert(), [{"node_id": n} for n in unique])
        tags = [{"node_id": n.node_id, "key": k, "value": v}
                for n in unique.values() for k, v in n.tags.items()]
        if tags:
            conn.execute(node_tags.insert(), tags)
        return set(conn.execute(sa.select(ids.c.node_id).where(condition)).scalars())


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(raw_statements, max_size=6), fleet=st.lists(nodes, max_size=6),
       actions=st.lists(st.sampled_from(sorted(NODE_ACTIONS)), min_size=1, max_size=3))
def test_within_every_reach_selects_the_nodes_every_action_is_allowed_on(
        engine: sa.Engine, raw: list[dict[str, Any]], fleet: list[Node],
        actions: list[str]) -> None:
    p = Policy(parse_statements(raw))
    unique = {n.node_id: n for n in fleet}
    expected = {n.node_id for n in unique.values() if all(p.allows(a, n) for a in actions)}
    assert selected(engine, fleet, within(ids.c.node_id, reach(p, *actions))) == expected


def test_a_policy_allowing_everywhere_adds_no_condition() -> None:
    """The admin's lists cost no subquery per tag; a scoped action adds one reach."""
    assert reach(ROLES["admin"], "nodes:read", "commands:read") == ()
    viewer_scoped = Policy(parse_statements([
        {"effect": "allow", "actions": ["commands:read"], "resources": ["*"]},
        {"effect": "allow", "actions": ["nodes:read"], "resources": ["tag:env=lab"]}]))
    (only,) = reach(viewer_scoped, "nodes:read", "commands:read", "nodes:read")
    assert only.allowed is not None and only.allowed.tags == {("env", "lab")}
