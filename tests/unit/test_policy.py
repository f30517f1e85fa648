"""Access policies: allow/deny statements, the built-in roles and the document parser."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.server.access.policy import (
    ACTIONS,
    NODE_ACTIONS,
    ROLES,
    SERVER_ACTIONS,
    Node,
    Policy,
    PolicyError,
    Scope,
    Statement,
    effective_policy,
    parse_statements,
)

NODE_A = "mi-0123456789abcdef0"
NODE_B = "mi-fedcba98765432100"
NODE_C = "mi-00000000000000001"

PROD_A = Node(NODE_A, {"env": "prod", "site": "north"})
DEV_B = Node(NODE_B, {"env": "dev"})
BARE_C = Node(NODE_C)

# The built-in roles, written out action by action so that any change to a role
# (or a new action nobody placed in a role) turns up as a failing test.
ROLE_TABLE: Mapping[str, frozenset[str]] = {
    "admin": frozenset({
        "nodes:read", "nodes:tag", "nodes:deregister", "nodes:rotate-credential",
        "commands:send", "commands:read", "commands:cancel", "commands:read-output",
        "sessions:start", "sessions:forward", "sessions:copy", "sessions:choose-user",
        "sessions:read", "sessions:read-recording", "sessions:terminate",
        "activations:create", "activations:read", "activations:revoke",
        "audit:read", "operators:manage",
    }),
    "operator": frozenset({
        "nodes:read", "nodes:tag",
        "commands:send", "commands:read", "commands:cancel", "commands:read-output",
        "sessions:start", "sessions:forward", "sessions:copy", "sessions:read",
        "sessions:read-recording", "activations:create", "activations:read",
    }),
    # Never what a device printed: command output and shell recordings are out.
    "viewer": frozenset({"nodes:read", "commands:read", "sessions:read"}),
}
ALL_ACTIONS = frozenset({
    "nodes:read", "nodes:tag", "nodes:deregister", "nodes:rotate-credential",
    "commands:send", "commands:read", "commands:cancel", "commands:read-output",
    "sessions:start", "sessions:forward", "sessions:copy", "sessions:choose-user",
    "sessions:read", "sessions:read-recording", "sessions:terminate",
    "activations:create", "activations:read", "activations:revoke",
    "audit:read", "operators:manage",
})


def stmt(effect: str, actions: Sequence[str], resources: Sequence[str]) -> Statement:
    return Statement(effect, tuple(actions), tuple(resources))


def policy(*statements: Statement) -> Policy:
    return Policy(tuple(statements))


def check(p: Policy, action: str, node: Node) -> bool:
    """``allows`` at the right scope: the node for node actions, the server otherwise."""
    return p.allows(action, node if action in NODE_ACTIONS else None)


# --- the action catalogue and the role matrix ---------------------------------


def test_action_catalogue() -> None:
    assert ACTIONS == ALL_ACTIONS
    assert NODE_ACTIONS | SERVER_ACTIONS == ACTIONS
    assert not NODE_ACTIONS & SERVER_ACTIONS
    assert set(SERVER_ACTIONS) == {
        "activations:create", "activations:read", "activations:revoke",
        "audit:read", "operators:manage"}


def test_role_table_is_complete() -> None:
    assert set(ROLES) == set(ROLE_TABLE)
    for granted in ROLE_TABLE.values():
        assert granted <= ALL_ACTIONS
    assert ROLE_TABLE["admin"] == ALL_ACTIONS


@pytest.mark.parametrize(("role", "action"),
                         [(r, a) for r in sorted(ROLE_TABLE) for a in sorted(ALL_ACTIONS)])
def test_role_matrix(role: str, action: str) -> None:
    expected = action in ROLE_TABLE[role]
    p = ROLES[role]
    if action in NODE_ACTIONS:
        for node in (PROD_A, DEV_B, BARE_C):
            assert p.allows(action, node) is expected
        assert p.refused(action, [PROD_A, BARE_C]) == ([] if expected else [NODE_A, NODE_C])
    else:
        assert p.allows(action, None) is expected
    assert p.allows_everywhere(action) is expected


# --- resources ----------------------------------------------------------------


def test_star_resource_reaches_every_node_and_the_server() -> None:
    p = policy(stmt("allow", ["*"], ["*"]))
    for node in (PROD_A, DEV_B, BARE_C):
        assert p.allows("commands:send", node)
    assert p.allows("audit:read")
    assert p.allows("operators:manage", None)


def test_exact_node_id_resource() -> None:
    p = policy(stmt("allow", ["commands:send"], [NODE_A]))
    assert p.allows("commands:send", PROD_A)
    assert p.allows("commands:send", Node(NODE_A))  # the id alone is enough, tags or not
    assert not p.allows("commands:send", DEV_B)
    assert not p.allows("commands:send", BARE_C)
    assert not p.allows("commands:read", PROD_A)


def test_tag_resource_matches_exact_value_only() -> None:
    p = policy(stmt("allow", ["commands:send"], ["tag:env=prod"]))
    assert p.allows("commands:send", PROD_A)
    assert p.allows("commands:send", Node(NODE_C, {"env": "prod"}))
    assert not p.allows("commands:send", DEV_B)  # same key, other value
    assert not p.allows("commands:send", BARE_C)  # no tags at all
    assert not p.allows("commands:send", Node(NODE_C, {"env": "production"}))
    assert not p.allows("commands:send", Node(NODE_C, {"env": "pro"}))
    assert not p.allows("commands:send", Node(NODE_C, {"environment": "prod"}))
    assert not p.allows("commands:send", Node(NODE_C, {"prod": "env"}))
    assert not p.allows("commands:send", Node(NODE_C, {"site": "prod"}))


def test_tag_value_may_contain_equals_sign() -> None:
    p = policy(*parse_statements([
        {"effect": "allow", "actions": ["nodes:read"], "resources": ["tag:expr=a=b"]}]))
    assert p.allows("nodes:read", Node(NODE_A, {"expr": "a=b"}))
    assert not p.allows("nodes:read", Node(NODE_A, {"expr": "a"}))


def test_empty_tag_value_selects_only_the_empty_value() -> None:
    p = policy(*parse_statements([
        {"effect": "allow", "actions": ["nodes:read"], "resources": ["tag:flag="]}]))
    assert p.allows("nodes:read", Node(NODE_A, {"flag": ""}))
    assert not p.allows("nodes:read", BARE_C)
    assert not p.allows("nodes:read", Node(NODE_A, {"flag": "x"}))


def test_several_resources_in_one_statement_are_alternatives() -> None:
    p = policy(stmt("allow", ["nodes:read"], [NODE_B, "tag:site=north"]))
    assert p.allows("nodes:read", PROD_A)
    assert p.allows("nodes:read", DEV_B)
    assert not p.allows("nodes:read", BARE_C)


@pytest.mark.parametrize("action", sorted(SERVER_ACTIONS))
@pytest.mark.parametrize("resources", [[NODE_A], ["tag:env=prod"], [NODE_A, "tag:env=prod"]])
def test_node_scoped_statements_never_grant_server_actions(
        action: str, resources: list[str]) -> None:
    p = policy(stmt("allow", ["*"], resources), stmt("allow", [action], resources))
    assert not p.allows(action)
    assert not p.allows(action, None)
    assert not p.allows_everywhere(action)


@pytest.mark.parametrize("action", sorted(SERVER_ACTIONS))
def test_node_scoped_deny_does_not_refuse_server_actions(action: str) -> None:
    p = policy(stmt("allow", ["*"], ["*"]), stmt("deny", ["*"], [NODE_A, "tag:env=prod"]))
    assert p.allows(action)


@pytest.mark.parametrize("action", sorted(SERVER_ACTIONS))
def test_server_action_checked_with_a_node_is_not_granted_by_a_node_statement(
        action: str) -> None:
    p = policy(stmt("allow", [action], [NODE_A]))
    with pytest.raises(PolicyError, match="server-wide"):
        p.allows(action, PROD_A)


# --- action wildcards ---------------------------------------------------------


def test_star_action_covers_every_action() -> None:
    p = policy(stmt("allow", ["*"], ["*"]))
    for action in sorted(ACTIONS):
        assert check(p, action, PROD_A)


def test_prefix_wildcard_covers_its_family_only() -> None:
    p = policy(stmt("allow", ["commands:*"], ["*"]))
    for action in sorted(ACTIONS):
        assert check(p, action, PROD_A) is action.startswith("commands:")
    assert p.allows("commands:read-output", PROD_A)
    assert not p.allows("nodes:read", PROD_A)
    assert not p.allows("sessions:start", PROD_A)


def test_prefix_wildcard_for_server_actions() -> None:
    p = policy(stmt("allow", ["activations:*"], ["*"]))
    assert p.allows("activations:create")
    assert p.allows("activations:read")
    assert p.allows("activations:revoke")
    assert not p.allows("audit:read")
    assert not p.allows("commands:send", PROD_A)


def test_exact_action_covers_only_itself() -> None:
    p = policy(stmt("allow", ["commands:read"], ["*"]))
    for action in sorted(ACTIONS):
        assert check(p, action, PROD_A) is (action == "commands:read")


def test_several_actions_in_one_statement_are_alternatives() -> None:
    p = policy(stmt("allow", ["nodes:read", "audit:read"], ["*"]))
    assert p.allows("nodes:read", BARE_C)
    assert p.allows("audit:read")
    assert not p.allows("nodes:tag", BARE_C)


# --- deny wins, default deny --------------------------------------------------


def test_default_is_deny() -> None:
    p = Policy()
    for action in sorted(ACTIONS):
        assert not check(p, action, PROD_A)
        assert not p.allows_everywhere(action)
    assert p.refused("nodes:read", [PROD_A, DEV_B]) == [NODE_A, NODE_B]


def test_deny_alone_is_still_deny() -> None:
    p = policy(stmt("deny", ["commands:send"], [NODE_A]))
    assert not p.allows("commands:send", PROD_A)
    assert not p.allows("commands:send", DEV_B)


@pytest.mark.parametrize("deny_first", [True, False])
def test_explicit_deny_wins_regardless_of_order(deny_first: bool) -> None:
    allow = stmt("allow", ["*"], ["*"])
    deny = stmt("deny", ["commands:send"], [NODE_A])
    p = policy(deny, allow) if deny_first else policy(allow, deny)
    assert not p.allows("commands:send", PROD_A)
    assert p.allows("commands:send", DEV_B)
    assert p.allows("commands:read", PROD_A)


@pytest.mark.parametrize("deny_first", [True, False])
def test_server_deny_wins_regardless_of_order(deny_first: bool) -> None:
    allow = stmt("allow", ["audit:read"], ["*"])
    deny = stmt("deny", ["audit:*"], ["*"])
    p = policy(deny, allow) if deny_first else policy(allow, deny)
    assert not p.allows("audit:read")


def test_deny_by_tag_allow_elsewhere() -> None:
    p = policy(stmt("allow", ["commands:*"], ["*"]),
               stmt("deny", ["commands:send"], ["tag:env=prod"]))
    assert not p.allows("commands:send", PROD_A)
    assert not p.allows("commands:send", Node(NODE_C, {"env": "prod"}))
    assert p.allows("commands:send", DEV_B)
    assert p.allows("commands:send", BARE_C)
    assert p.allows("commands:read", PROD_A)  # the deny names only commands:send


def test_wildcard_deny_beats_exact_allow() -> None:
    p = policy(stmt("allow", ["commands:send"], [NODE_A]),
               stmt("deny", ["*"], ["tag:site=north"]))
    assert not p.allows("commands:send", PROD_A)


def test_policies_add_by_concatenating_statements() -> None:
    a = policy(stmt("allow", ["*"], ["*"]))
    b = policy(stmt("deny", ["nodes:tag"], [NODE_A]))
    combined = a + b
    assert combined.statements == a.statements + b.statements
    assert not combined.allows("nodes:tag", PROD_A)
    assert combined.allows("nodes:tag", DEV_B)
    assert (b + a).allows("nodes:tag", PROD_A) is False


# --- allows_everywhere --------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "operator"])
def test_allows_everywhere_for_roles_that_send(role: str) -> None:
    assert ROLES[role].allows_everywhere("commands:send")


def test_viewer_cannot_send_anywhere() -> None:
    assert not ROLES["viewer"].allows_everywhere("commands:send")


@pytest.mark.parametrize("deny_resources", [["*"], [NODE_A], ["tag:env=prod"]])
@pytest.mark.parametrize("deny_actions", [["commands:send"], ["commands:*"], ["*"]])
@pytest.mark.parametrize("role", ["admin", "operator"])
def test_any_covering_deny_spoils_allows_everywhere(
        role: str, deny_actions: list[str], deny_resources: list[str]) -> None:
    p = effective_policy([role], [stmt("deny", deny_actions, deny_resources)])
    assert not p.allows_everywhere("commands:send")


def test_unrelated_deny_keeps_allows_everywhere() -> None:
    p = effective_policy(["operator"], [stmt("deny", ["nodes:tag"], ["*"])])
    assert p.allows_everywhere("commands:send")
    assert not p.allows_everywhere("nodes:tag")


def test_allow_only_on_a_tag_or_node_is_not_everywhere() -> None:
    assert not policy(stmt("allow", ["commands:send"], ["tag:env=prod"])
                      ).allows_everywhere("commands:send")
    assert not policy(stmt("allow", ["commands:send"], [NODE_A])
                      ).allows_everywhere("commands:send")
    assert not policy(stmt("allow", ["*"], ["tag:env=prod", NODE_A])
                      ).allows_everywhere("commands:send")


def test_allows_everywhere_needs_the_action_covered() -> None:
    p = policy(stmt("allow", ["commands:read"], ["*"]))
    assert p.allows_everywhere("commands:read")
    assert not p.allows_everywhere("commands:send")
    assert policy(stmt("allow", ["commands:*"], ["*"])).allows_everywhere("commands:cancel")
    assert policy(stmt("allow", ["audit:read"], ["*"])).allows_everywhere("audit:read")


# --- refused ------------------------------------------------------------------


def test_refused_fast_path_is_empty() -> None:
    p = ROLES["operator"]
    assert p.allows_everywhere("commands:send")
    assert p.refused("commands:send", [PROD_A, DEV_B, BARE_C]) == []
    assert p.refused("commands:send", []) == []


def test_refused_fast_path_does_not_consume_nodes() -> None:
    def nodes() -> Iterator[Node]:
        raise AssertionError("iterated the nodes although the action is allowed everywhere")
        yield  # pragma: no cover

    assert ROLES["admin"].refused("nodes:deregister", nodes()) == []


def test_refused_lists_refused_ids_in_order() -> None:
    p = policy(stmt("allow", ["commands:send"], ["tag:env=prod"]))
    other_prod = Node(NODE_C, {"env": "prod"})
    assert p.refused("commands:send", [DEV_B, PROD_A, BARE_C, other_prod]) == [NODE_B, NODE_C]
    assert p.refused("commands:send", [BARE_C, DEV_B]) == [NODE_C, NODE_B]
    assert p.refused("commands:send", iter([PROD_A, other_prod])) == []


def test_refused_with_deny_by_tag() -> None:
    p = policy(stmt("allow", ["*"], ["*"]), stmt("deny", ["commands:*"], ["tag:env=prod"]))
    assert p.refused("commands:send", [PROD_A, DEV_B, BARE_C]) == [NODE_A]
    assert p.refused("nodes:read", [PROD_A, DEV_B, BARE_C]) == []


def test_refused_keeps_duplicates() -> None:
    p = policy(stmt("allow", ["nodes:read"], [NODE_B]))
    assert p.refused("nodes:read", [PROD_A, DEV_B, PROD_A]) == [NODE_A, NODE_A]


# --- errors from allows -------------------------------------------------------


@pytest.mark.parametrize("action", ["nodes:delete", "foo", "commands:*", "*", "", "NODES:READ"])
def test_allows_rejects_unknown_action(action: str) -> None:
    p = ROLES["admin"]
    with pytest.raises(PolicyError, match="unknown action"):
        p.allows(action, PROD_A)
    with pytest.raises(PolicyError, match="unknown action"):
        p.allows(action)


@pytest.mark.parametrize("action", sorted(NODE_ACTIONS))
def test_allows_rejects_node_action_without_node(action: str) -> None:
    with pytest.raises(PolicyError, match="against a node"):
        ROLES["admin"].allows(action)
    with pytest.raises(PolicyError, match=re.escape(action)):
        Policy().allows(action, None)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


# --- parse_statements ---------------------------------------------------------

GOOD = {"effect": "allow", "actions": ["commands:send"], "resources": ["*"]}


def test_parse_list() -> None:
    doc = [GOOD, {"effect": "deny", "actions": ["nodes:*", "*"],
                  "resources": [NODE_A, "tag:env=prod"]}]
    assert parse_statements(doc) == (
        Statement("allow", ("commands:send",), ("*",)),
        Statement("deny", ("nodes:*", "*"), (NODE_A, "tag:env=prod")),
    )


def test_parse_statements_object() -> None:
    assert parse_statements({"statements": [GOOD]}) == parse_statements([GOOD])
    assert parse_statements({"statements": []}) == ()
    assert parse_statements([]) == ()


def test_parse_round_trips_as_dict() -> None:
    parsed = parse_statements([GOOD, {"effect": "deny", "actions": ["*"],
                                      "resources": ["tag:a=b", NODE_B]}])
    assert parse_statements([s.as_dict() for s in parsed]) == parsed
    assert parsed[0].as_dict() == GOOD


@pytest.mark.parametrize("action", ["nodes:*", "*", "commands:*", "sessions:*", "activations:*",
                                    "audit:*", "operators:*", "commands:read-output"])
def test_parse_accepts_actions(action: str) -> None:
    (s,) = parse_statements([{"effect": "allow", "actions": [action], "resources": ["*"]}])
    assert s.actions == (action,)


@pytest.mark.parametrize("resource", ["*", NODE_A, "tag:env=prod", "tag:k=", "tag:a=b=c"])
def test_parse_accepts_resources(resource: str) -> None:
    (s,) = parse_statements([{"effect": "deny", "actions": ["*"], "resources": [resource]}])
    assert s.resources == (resource,)


@pytest.mark.parametrize("document", [
    None, "statements", 42, {"effect": "allow"}, {"statements": [GOOD], "extra": 1},
    {"statements": "nope"}, {}, (GOOD,),
])
def test_parse_rejects_non_lists(document: object) -> None:
    with pytest.raises(PolicyError, match="list of statements"):
        parse_statements(document)


@pytest.mark.parametrize("raw", ["allow", 1, None, [GOOD], ("allow",)])
def test_parse_rejects_non_object_statements(raw: object) -> None:
    with pytest.raises(PolicyError, match=r"statement 2: not an object"):
        parse_statements([GOOD, raw])


def test_parse_rejects_unknown_fields() -> None:
    with pytest.raises(PolicyError, match=r"statement 1: unknown field\(s\) condition, sid"):
        parse_statements([{**GOOD, "sid": "x", "condition": {}}])
    with pytest.raises(PolicyError, match=r"unknown field.*Effect"):
        parse_statements([{"Effect": "allow", **GOOD}])


@pytest.mark.parametrize("effect", ["Allow", "DENY", "permit", "", None, True, ["allow"]])
def test_parse_rejects_bad_effect(effect: object) -> None:
    with pytest.raises(PolicyError, match="effect must be allow or deny"):
        parse_statements([{**GOOD, "effect": effect}])


def test_parse_rejects_missing_fields() -> None:
    with pytest.raises(PolicyError, match="effect must be"):
        parse_statements([{"actions": ["*"], "resources": ["*"]}])
    with pytest.raises(PolicyError, match="actions must be a non-empty list of strings"):
        parse_statements([{"effect": "allow", "resources": ["*"]}])
    with pytest.raises(PolicyError, match="resources must be a non-empty list of strings"):
        parse_statements([{"effect": "allow", "actions": ["*"]}])


@pytest.mark.parametrize("field", ["actions", "resources"])
@pytest.mark.parametrize("value", [[], "*", None, ["*", 3], [None], {"*": 1}, ("*",)])
def test_parse_rejects_empty_or_non_string_lists(field: str, value: object) -> None:
    with pytest.raises(PolicyError, match=f"statement 1: {field} must be a non-empty list"):
        parse_statements([{**GOOD, field: value}])


@pytest.mark.parametrize("action", ["nodes:delete", "foo:*", "foo", "", "command:*", ":*",
                                    "*:*", "commands:**", "commands*", "nodes:read:*",
                                    "Nodes:Read", " nodes:read", "commands:read*"])
def test_parse_rejects_unknown_actions(action: str) -> None:
    with pytest.raises(PolicyError, match="unknown action") as info:
        parse_statements([{**GOOD, "actions": ["nodes:read", action]}])
    assert repr(action) in str(info.value)


@pytest.mark.parametrize("resource", [
    "node1", "tag:novalue", "tag:=x", "tag:", "tag:=", "", "**", "mi-0123", NODE_A.upper(),
    "mi-0123456789abcdef0 ", "mi-0123456789abcdef01", "i-0123456789abcdef0",
])
def test_parse_rejects_bad_resources(resource: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_statements([GOOD, {**GOOD, "resources": ["*", resource]}])
    message = str(info.value)
    assert message.startswith("statement 2:")
    assert repr(resource) in message
    assert "tag:key=value" in message


def test_parse_tag_errors_name_the_selector_form() -> None:
    with pytest.raises(PolicyError, match="a tag selector is tag:key=value"):
        parse_statements([{**GOOD, "resources": ["tag:novalue"]}])
    with pytest.raises(PolicyError, match="a resource is \\*, a node id"):
        parse_statements([{**GOOD, "resources": ["node1"]}])


# --- effective_policy ---------------------------------------------------------


def test_effective_policy_unknown_role() -> None:
    with pytest.raises(PolicyError, match=r"unknown role.*superuser"):
        effective_policy(["viewer", "superuser"], [])
    with pytest.raises(PolicyError, match="Admin"):
        effective_policy(["Admin"], [])


def test_effective_policy_no_roles_no_statements_denies() -> None:
    p = effective_policy([], [])
    for action in sorted(ACTIONS):
        assert not check(p, action, PROD_A)


def test_effective_policy_role_alone_equals_role() -> None:
    for role in ROLES:
        p = effective_policy([role], [])
        for action in sorted(ACTIONS):
            assert check(p, action, PROD_A) is (action in ROLE_TABLE[role])


def test_effective_policy_own_deny_beats_role_allow() -> None:
    own = parse_statements([{"effect": "deny", "actions": ["commands:send"],
                             "resources": ["tag:env=prod"]},
                            {"effect": "deny", "actions": ["audit:read"], "resources": ["*"]}])
    p = effective_policy(["admin"], own)
    assert not p.allows("commands:send", PROD_A)
    assert p.allows("commands:send", DEV_B)
    assert not p.allows("audit:read")
    assert p.allows("operators:manage")


def test_effective_policy_own_allow_extends_roles() -> None:
    own = [stmt("allow", ["nodes:deregister"], ["tag:env=dev"]),
           stmt("allow", ["audit:read"], ["*"])]
    p = effective_policy(["viewer"], own)
    assert p.allows("nodes:read", PROD_A)  # from the role
    assert p.allows("nodes:deregister", DEV_B)  # from its own statement
    assert not p.allows("nodes:deregister", PROD_A)
    assert p.allows("audit:read")
    assert not p.allows("commands:send", DEV_B)


def test_effective_policy_roles_union() -> None:
    p = effective_policy(["viewer", "operator"], [])
    for action in sorted(ACTIONS):
        assert check(p, action, PROD_A) is (action in ROLE_TABLE["operator"])


def test_effective_policy_deny_in_own_statements_wins_over_several_roles() -> None:
    p = effective_policy(["operator", "admin"], [stmt("deny", ["*"], [NODE_A])])
    for action in sorted(NODE_ACTIONS):
        assert not p.allows(action, PROD_A)
        assert p.allows(action, DEV_B)


def test_roles_are_not_mutated_by_effective_policy() -> None:
    before = {name: role.statements for name, role in ROLES.items()}
    effective_policy(["admin", "viewer"], [stmt("deny", ["*"], ["*"])])
    assert {name: role.statements for name, role in ROLES.items()} == before
    assert ROLES["admin"].allows("audit:read")


# --- a property test against a reference implementation -----------------------

NODE_IDS = [NODE_A, NODE_B, NODE_C, "mi-abcdefabcdefabcde"]
TAG_KEYS = ["env", "site"]
TAG_VALUES = ["prod", "dev", ""]
ACTION_PATTERNS = [*sorted(ACTIONS), "*", "nodes:*", "commands:*", "sessions:*",
                   "activations:*", "audit:*", "operators:*"]
RESOURCES = ["*", *NODE_IDS[:3], *(f"tag:{k}={v}" for k in TAG_KEYS for v in TAG_VALUES)]

raw_statements = st.fixed_dictionaries({
    "effect": st.sampled_from(["allow", "deny"]),
    "actions": st.lists(st.sampled_from(ACTION_PATTERNS), min_size=1, max_size=3),
    "resources": st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=3),
})
nodes = st.builds(
    Node,
    st.sampled_from(NODE_IDS),
    st.dictionaries(st.sampled_from(TAG_KEYS), st.sampled_from(TAG_VALUES), max_size=2),
)


def ref_action_matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return action.split(":", 1)[0] == pattern[:-2]
    return pattern == action


def ref_resource_matches(resource: str, action: str, node: Node | None) -> bool:
    if resource == "*":
        return True
    if action in SERVER_ACTIONS or node is None:
        return False
    if resource.startswith("tag:"):
        key, value = resource[len("tag:"):].split("=", 1)
        return key in node.tags and node.tags[key] == value
    return resource == node.node_id


def ref_allows(raw: list[dict[str, Any]], action: str, node: Node | None) -> bool:
    def matching(effect: str) -> bool:
        return any(s["effect"] == effect
                   and any(ref_action_matches(a, action) for a in s["actions"])
                   and any(ref_resource_matches(r, action, node) for r in s["resources"])
                   for s in raw)

    if matching("deny"):
        return False
    return matching("allow")


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(raw_statements, max_size=6),
       fleet=st.lists(nodes, max_size=6),
       action=st.sampled_from(sorted(ACTIONS)))
def test_policy_matches_reference(raw: list[dict[str, Any]], fleet: list[Node],
                                  action: str) -> None:
    p = Policy(parse_statements(raw))
    if action in SERVER_ACTIONS:
        assert p.allows(action) is ref_allows(raw, action, None)
        if p.allows_everywhere(action):
            assert p.allows(action)
        return
    for node in fleet:
        assert p.allows(action, node) is ref_allows(raw, action, node)
    assert p.refused(action, fleet) == [n.node_id for n in fleet if not p.allows(action, n)]
    if p.allows_everywhere(action):
        assert p.refused(action, fleet) == []
        for node_id in NODE_IDS:
            for tags in ({}, {"env": "prod"}, {"env": "dev", "site": ""}):
                assert p.allows(action, Node(node_id, tags))


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(raw_statements, max_size=6), action=st.sampled_from(sorted(ACTIONS)),
       node=nodes)
def test_statement_order_does_not_matter(raw: list[dict[str, Any]], action: str,
                                         node: Node) -> None:
    forward = Policy(parse_statements(raw))
    backward = Policy(parse_statements(list(reversed(raw))))
    assert check(forward, action, node) is check(backward, action, node)
    assert forward.allows_everywhere(action) is backward.allows_everywhere(action)


def in_scope(scope: Scope, node: Node) -> bool:
    return (scope.everything or node.node_id in scope.node_ids
            or any(node.tags.get(k) == v for k, v in scope.tags))


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(raw_statements, max_size=6), fleet=st.lists(nodes, max_size=6),
       action=st.sampled_from(sorted(NODE_ACTIONS)))
def test_scopes_decide_as_allows_does(raw: list[dict[str, Any]], fleet: list[Node],
                                      action: str) -> None:
    """The fleet search turns a policy into SQL through scope(); it must decide as allows."""
    p = Policy(parse_statements(raw))
    allowed, denied = p.scope(action, "allow"), p.scope(action, "deny")
    for node in fleet:
        assert (in_scope(allowed, node) and not in_scope(denied, node)) is p.allows(action, node)


def test_scope_is_for_node_actions_only() -> None:
    with pytest.raises(PolicyError):
        ROLES["admin"].scope("audit:read", "allow")


def test_reading_recordings_is_its_own_action() -> None:
    """A shell's recording is what the device printed: ``sessions:read`` (in ``viewer``, and
    in policies stored before the action existed) must not reach it; ``sessions:*`` does."""
    p = policy(*parse_statements([
        {"effect": "allow", "actions": ["sessions:read"], "resources": ["*"]}]))
    assert p.allows("sessions:read", PROD_A)
    assert not p.allows("sessions:read-recording", PROD_A)
    assert not ROLES["viewer"].allows("sessions:read-recording", PROD_A)
    assert policy(stmt("allow", ["sessions:*"], ["*"])).allows("sessions:read-recording", PROD_A)
    assert ROLES["operator"].allows_everywhere("sessions:read-recording")
