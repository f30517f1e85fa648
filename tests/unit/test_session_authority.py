"""The rule a live session goes on by (sessions/authority.py), without sockets or a store."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.server.access.policy import Node, Statement, effective_policy
from tether.server.sessions.authority import (
    ACTION_OF_KIND,
    EXPIRED,
    OPERATOR_DISABLED,
    REVOKED,
    Grant,
    SessionFilter,
    actions_of,
    expiry_of,
    why_end,
)

NODE = Node("mi-0123456789abcdef0", {"team": "me"})
NOW = 1_000_000.0


def grant(*statements: Statement, roles: tuple[str, ...] = (), operator: str = "alice",
          disabled: bool = False, revoked: bool = False, expires_at: float | None = None,
          token_id: str = "t1") -> Grant:
    return Grant(token_id=token_id, operator=operator,
                 policy=effective_policy(list(roles), list(statements)),
                 operator_disabled=disabled, token_revoked=revoked, expires_at=expires_at)


def allow(*actions: str, resource: str = "*") -> Statement:
    return Statement("allow", actions, (resource,))


def test_every_kind_needs_its_action_and_a_chosen_user_needs_its_own() -> None:
    assert set(ACTION_OF_KIND) == {"shell", "forward", "copy"}
    assert actions_of("shell", {"user": None}) == ("sessions:start",)
    assert actions_of("shell", {"user": "root"}) == ("sessions:start", "sessions:choose-user")
    assert actions_of("forward", {"host": "h", "port": 1}) == ("sessions:forward",)
    assert actions_of("copy", {"path": "/x"}) == ("sessions:copy",)


def test_the_reasons_most_telling_first() -> None:
    ok = grant(allow("sessions:start"))
    assert why_end("alice", NODE, ["sessions:start"], [ok], NOW) is None
    # A disabled operator's tokens are revoked too: "operator disabled" says more.
    both = grant(allow("sessions:start"), disabled=True, revoked=True)
    assert why_end("alice", NODE, ["sessions:start"], [both], NOW) == OPERATOR_DISABLED
    revoked = grant(allow("sessions:start"), revoked=True, expires_at=NOW - 1)
    assert why_end("alice", NODE, ["sessions:start"], [revoked], NOW) == REVOKED
    expired = grant(allow("sessions:start"), expires_at=NOW)
    assert why_end("alice", NODE, ["sessions:start"], [expired], NOW) == EXPIRED
    later = grant(allow("sessions:start"), expires_at=NOW + 1)
    assert why_end("alice", NODE, ["sessions:start"], [later], NOW) is None
    assert why_end("alice", NODE, ["sessions:forward"], [ok], NOW) == \
        f"operator alice may no longer sessions:forward on {NODE.node_id}"


def test_an_unknown_or_foreign_token_counts_as_revoked() -> None:
    ok = grant(allow("sessions:start"))
    assert why_end("alice", NODE, ["sessions:start"], [], NOW) == REVOKED
    assert why_end("alice", NODE, ["sessions:start"], [ok, None], NOW) == REVOKED
    bob = grant(allow("sessions:start"), operator="bob", token_id="t2")
    assert why_end("alice", NODE, ["sessions:start"], [ok, bob], NOW) == REVOKED


def test_any_token_of_the_session_counts() -> None:
    """The opener's and each attached stream's: one gone ends the session."""
    ok = grant(allow("sessions:start"))
    stream = grant(allow("sessions:start"), token_id="t2", revoked=True)
    assert why_end("alice", NODE, ["sessions:start"], [ok, stream], NOW) == REVOKED
    assert expiry_of([ok, grant(token_id="t3", expires_at=NOW + 5),
                      grant(token_id="t4", expires_at=NOW + 2), None]) == NOW + 2
    assert expiry_of([ok, None]) is None


def test_a_deny_on_the_nodes_tag_ends_it() -> None:
    denied = grant(allow("sessions:*"),
                   Statement("deny", ("sessions:start",), ("tag:team=me",)))
    assert why_end("alice", NODE, ["sessions:start"], [denied], NOW) is not None
    assert why_end("alice", Node(NODE.node_id, {"team": "you"}), ["sessions:start"],
                   [denied], NOW) is None


ACTIONS = sorted({*ACTION_OF_KIND.values(), "sessions:choose-user", "nodes:read"})
TAGS = st.dictionaries(st.sampled_from(["team", "site"]), st.sampled_from(["a", "b"]),
                       max_size=2)
RESOURCES = st.sampled_from(["*", NODE.node_id, "mi-fedcba98765432100", "tag:team=a",
                             "tag:site=b"])
STATEMENTS = st.lists(st.builds(
    lambda effect, actions, resources: Statement(effect, tuple(actions), tuple(resources)),
    st.sampled_from(["allow", "deny"]),
    st.lists(st.sampled_from([*ACTIONS, "sessions:*", "*"]), min_size=1, max_size=3),
    st.lists(RESOURCES, min_size=1, max_size=2)), max_size=4)
GRANTS = st.lists(st.fixed_dictionaries({
    "disabled": st.booleans(), "revoked": st.booleans(),
    "expires_at": st.one_of(st.none(), st.sampled_from([NOW - 1, NOW, NOW + 1])),
    "missing": st.booleans()}), min_size=1, max_size=3)


def reference(statements: list[Statement], node: Node, actions: list[str],
              grants: list[dict[str, Any]]) -> bool:
    """May the session go on? Written plainly, from the rule's own words."""
    for g in grants:
        if g["missing"] or g["disabled"] or g["revoked"]:
            return False
        if g["expires_at"] is not None and g["expires_at"] <= NOW:
            return False

    def covers(s: Statement, action: str) -> bool:
        acts = any(a in ("*", action) or (a == "sessions:*" and action.startswith("sessions:"))
                   for a in s.actions)
        res = any(r == "*" or r == node.node_id
                  or (r.startswith("tag:") and node.tags.get(r[4:].split("=")[0])
                      == r[4:].split("=")[1]) for r in s.resources)
        return acts and res

    for action in actions:
        if any(s.effect == "deny" and covers(s, action) for s in statements):
            return False
        if not any(s.effect == "allow" and covers(s, action) for s in statements):
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(statements=STATEMENTS, tags=TAGS, kind=st.sampled_from(sorted(ACTION_OF_KIND)),
       user=st.sampled_from([None, "root"]), grants=GRANTS)
def test_why_end_agrees_with_the_reference(statements: list[Statement], tags: dict[str, str],
                                           kind: str, user: str | None,
                                           grants: list[dict[str, Any]]) -> None:
    node = Node(NODE.node_id, tags)
    actions = list(actions_of(kind, {"user": user}))
    held = [None if g["missing"] else
            grant(*statements, disabled=g["disabled"], revoked=g["revoked"],
                  expires_at=g["expires_at"], token_id=f"t{i}")
            for i, g in enumerate(grants)]
    reason = why_end("alice", node, actions, held, NOW)
    assert (reason is None) == reference(statements, node, actions, grants), reason


@pytest.mark.parametrize(("which", "expected"), [
    (SessionFilter(), True),
    (SessionFilter(operator="alice"), True),
    (SessionFilter(operator="bob"), False),
    (SessionFilter(token_id="t2"), True),
    (SessionFilter(token_id="t9"), False),
    (SessionFilter(node_id=NODE.node_id), True),
    (SessionFilter(node_id="mi-fedcba98765432100"), False),
    (SessionFilter(operator="alice", node_id="mi-fedcba98765432100"), False),
])
def test_a_filter_selects_the_sessions_a_change_concerns(which: SessionFilter,
                                                         expected: bool) -> None:
    assert which.matches("alice", NODE.node_id, {"t1", "t2"}) is expected
