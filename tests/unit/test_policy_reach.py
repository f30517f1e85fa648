"""Retags and activations must not widen an operator's own reach (issue 12, findings 4 and 5).

``retag_refusal`` decides whether an operator may change a node's tags, and
``new_node_refusal`` whether it may create an activation whose nodes carry given
tags. Both are checked here against the reference evaluator of test_policy.py:
a change is accepted exactly when ``nodes:tag`` is allowed on the node as it would
be and no node action goes from refused to allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_policy import NODE_IDS, TAG_KEYS, TAG_VALUES, nodes, raw_statements, ref_allows

from tether.server.access.policy import (
    NEW_NODE_ID,
    NODE_ACTIONS,
    ROLES,
    Node,
    Policy,
    RetagRefusal,
    new_node_refusal,
    parse_statements,
    retag_refusal,
)

NODE = "mi-0123456789abcdef0"
# A node id no generated statement names, standing for a node not registered yet.
FRESH = "mi-99999999999999999"
assert FRESH not in NODE_IDS


def allow(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"effect": "allow", "actions": actions, "resources": resources}


def deny(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"effect": "deny", "actions": actions, "resources": resources}


def policy(*raw: dict[str, Any]) -> Policy:
    return Policy(parse_statements(list(raw)))


def retagged(node: Node, set_: Mapping[str, str], remove: list[str]) -> Node:
    """The node after ``PATCH /nodes/ID/tags`` (the route's own arithmetic)."""
    return Node(node.node_id, {k: v for k, v in node.tags.items() if k not in remove} | set_)


def ref_newly_allowed(raw: list[dict[str, Any]], before: Node, after: Node) -> set[str]:
    return {a for a in NODE_ACTIONS
            if not ref_allows(raw, a, before) and ref_allows(raw, a, after)}


# --- the findings' reproductions ------------------------------------------------


def test_removing_a_deny_tag_is_refused() -> None:
    """Allowed commands:* on site=a, denied commands:send on frozen=yes: unfreezing is
    the escape (finding 4)."""
    p = policy(allow(["commands:*", "nodes:tag", "nodes:read"], ["tag:site=a"]),
               deny(["commands:send"], ["tag:frozen=yes"]))
    frozen = Node(NODE, {"site": "a", "frozen": "yes"})
    refusal = retag_refusal(p, frozen, retagged(frozen, {}, ["frozen"]))
    assert refusal == RetagRefusal(may_not_tag=False, newly_allowed=frozenset({"commands:send"}))
    assert refusal.reasons() == "it would newly allow commands:send"
    # Freezing, or any tag that changes nothing this operator may do, is fine.
    assert retag_refusal(p, Node(NODE, {"site": "a"}), frozen) is None
    assert retag_refusal(p, frozen, retagged(frozen, {"rack": "7"}, [])) is None


def test_tagging_into_ones_own_team_is_refused() -> None:
    """nodes:tag on *, commands on team=me: tagging a node into team=me (finding 4)."""
    p = policy(allow(["nodes:tag", "nodes:read"], ["*"]),
               allow(["commands:send", "commands:read"], ["tag:team=me"]))
    other = Node(NODE, {"team": "them"})
    refusal = retag_refusal(p, other, retagged(other, {"team": "me"}, []))
    assert refusal is not None and not refusal.may_not_tag
    assert refusal.newly_allowed == {"commands:send", "commands:read"}
    # Out of its team is a loss, not a gain: allowed (nodes:tag holds on both sides).
    assert retag_refusal(p, Node(NODE, {"team": "me"}), other) is None


def test_moving_a_node_out_of_ones_tag_reach_is_still_refused() -> None:
    p = policy(allow(["nodes:tag", "nodes:read"], ["tag:env=lab"]))
    lab = Node(NODE, {"env": "lab"})
    refusal = retag_refusal(p, lab, retagged(lab, {"env": "prod"}, []))
    assert refusal == RetagRefusal(may_not_tag=True, newly_allowed=frozenset())
    assert "nodes:tag" in refusal.reasons()


def test_roles_on_star_retag_anything() -> None:
    for role in ("admin", "operator"):
        before = Node(NODE, {"a": "1"})
        assert retag_refusal(ROLES[role], before, Node(NODE, {"b": "2"})) is None
        assert new_node_refusal(ROLES[role], {"site": "b"}) is None
    assert retag_refusal(ROLES["viewer"], Node(NODE), Node(NODE, {"b": "2"})) is not None


def test_activation_for_another_site_is_refused() -> None:
    """activations:create plus nodes:tag on site=a only: an activation tagged site=b
    would plant devices in site b (finding 5)."""
    p = policy(allow(["activations:create"], ["*"]),
               allow(["nodes:tag", "nodes:read", "commands:*"], ["tag:site=a"]))
    refusal = new_node_refusal(p, {"site": "b"})
    assert refusal is not None and refusal.may_not_tag
    # Its own site is its to enrol into: the new nodes are nobody else's to take over.
    assert new_node_refusal(p, {"site": "a"}) is None
    # Each tag is a way in: site=a may not carry env=prod along (env=prod alone is refused).
    assert new_node_refusal(p, {"site": "a", "env": "prod"}) is not None
    assert new_node_refusal(p, {"env": "prod"}) is not None
    assert new_node_refusal(p, {}) is None  # untagged: no tag to check


def test_activation_denied_tag_cannot_be_left_off() -> None:
    """A deny that the tags keep is no escape; a tag that a deny names is allowed."""
    p = policy(allow(["*"], ["*"]), deny(["commands:send"], ["tag:frozen=yes"]))
    assert new_node_refusal(p, {"frozen": "yes"}) is None
    assert new_node_refusal(p, {"site": "b"}) is None


def test_the_fresh_node_id_matches_no_statement() -> None:
    p = policy(allow(["*"], [NODE]))
    assert node_ids_named(p) == {NODE}
    assert not p.allows("nodes:tag", Node(NEW_NODE_ID))


def node_ids_named(p: Policy) -> set[str]:
    return {r for s in p.statements for r in s.resources if r.startswith("mi-")}


# --- properties against the reference evaluator ---------------------------------

# Half the policies may tag everywhere, so that accepted changes are common too.
policies = st.builds(lambda tag_all, rest: [allow(["nodes:tag"], ["*"])] * tag_all + rest,
                     st.booleans(), st.lists(raw_statements, max_size=6))
tag_sets = st.dictionaries(st.sampled_from([*TAG_KEYS, "frozen"]),
                           st.sampled_from([*TAG_VALUES, "yes"]), max_size=3)


@settings(max_examples=1000, deadline=None)
@given(raw=policies, node=nodes, set_=tag_sets,
       remove=st.lists(st.sampled_from([*TAG_KEYS, "frozen"]), max_size=2))
def test_retag_accepted_iff_no_action_goes_from_denied_to_allowed(
        raw: list[dict[str, Any]], node: Node, set_: dict[str, str], remove: list[str]) -> None:
    p = Policy(parse_statements(raw))
    after = retagged(node, set_, remove)
    newly = ref_newly_allowed(raw, node, after)
    may_tag = ref_allows(raw, "nodes:tag", after)
    refusal = retag_refusal(p, node, after)
    event("accepted" if refusal is None else "refused")
    assert (refusal is None) is (may_tag and not newly)
    if refusal is not None:
        assert refusal.newly_allowed == newly
        assert refusal.may_not_tag is not may_tag
    if refusal is None:  # accepted: nodes:tag held before as well, nothing was gained
        assert ref_allows(raw, "nodes:tag", node)
        assert all(ref_allows(raw, a, node) for a in NODE_ACTIONS if ref_allows(raw, a, after))


@settings(max_examples=600, deadline=None)
@given(raw=policies, tags=tag_sets)
def test_activation_tags_need_nodes_tag_for_each_tag_and_all_together(
        raw: list[dict[str, Any]], tags: dict[str, str]) -> None:
    p = Policy(parse_statements(raw))
    expected = not tags or (ref_allows(raw, "nodes:tag", Node(FRESH, tags)) and all(
        ref_allows(raw, "nodes:tag", Node(FRESH, {k: v})) for k, v in tags.items()))
    refusal = new_node_refusal(p, tags)
    event("accepted" if refusal is None else "refused")
    assert (refusal is None) is expected
    if refusal is not None:
        assert refusal.may_not_tag and not refusal.newly_allowed
