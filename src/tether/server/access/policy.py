"""Policies: allow and deny statements over actions and resources, evaluated purely.

A statement names actions (``commands:send``, ``commands:*``, ``*``) and
resources: ``*``, a node id, or a ``tag:key=value`` selector. Actions on a node
are checked against that node's id and tags; actions on the server as a whole
(creating activations, reading the audit log, managing operators) only match a
statement whose resources include ``*``. Nothing is allowed unless a statement
allows it, and an explicit deny wins over any allow: the model people know
from cloud IAM, small enough to reason about in a review.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tether.protocol.ids import is_node_id

NODE_ACTIONS = frozenset({
    "nodes:read", "nodes:tag", "nodes:deregister", "nodes:rotate-credential",
    "commands:send", "commands:read", "commands:cancel", "commands:read-output",
    "sessions:start", "sessions:forward", "sessions:copy", "sessions:choose-user",
    "sessions:read", "sessions:read-recording", "sessions:terminate",
})
SERVER_ACTIONS = frozenset({
    "activations:create", "activations:read", "activations:revoke",
    "audit:read", "operators:manage",
})
ACTIONS = NODE_ACTIONS | SERVER_ACTIONS
EFFECTS = ("allow", "deny")


class PolicyError(ValueError):
    """A policy document that cannot mean what its author wanted."""


@dataclasses.dataclass(frozen=True)
class Node:
    """What a node-scoped check needs to know about the node."""

    node_id: str
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def covers_action(self, action: str) -> bool:
        return any(a == "*" or a == action or (a.endswith(":*") and action.startswith(a[:-1]))
                   for a in self.actions)

    def covers(self, action: str, node: Node | None) -> bool:
        if not self.covers_action(action):
            return False
        if "*" in self.resources:
            return True
        if node is None:  # a server-wide action: only "*" reaches it
            return False
        return any(_selects(r, node) for r in self.resources)

    def as_dict(self) -> dict[str, Any]:
        return {"effect": self.effect, "actions": list(self.actions),
                "resources": list(self.resources)}


def _selects(resource: str, node: Node) -> bool:
    if resource.startswith("tag:"):
        key, _, value = resource[4:].partition("=")
        return node.tags.get(key) == value
    return resource == node.node_id


@dataclasses.dataclass(frozen=True)
class Scope:
    """The nodes one effect of a policy reaches for one action, as data a query can use.

    A node is in the scope when ``everything`` is set, when its id is in
    ``node_ids``, or when it carries one of ``tags``: exactly what ``covers``
    decides for each statement, gathered over the statements of that effect.
    """

    everything: bool = False
    node_ids: frozenset[str] = frozenset()
    tags: frozenset[tuple[str, str]] = frozenset()

    def empty(self) -> bool:
        return not (self.everything or self.node_ids or self.tags)


@dataclasses.dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...] = ()

    def allows(self, action: str, node: Node | None = None) -> bool:
        if action not in ACTIONS:
            raise PolicyError(f"unknown action {action!r}")
        if action in NODE_ACTIONS and node is None:
            raise PolicyError(f"{action} is checked against a node")
        if action in SERVER_ACTIONS and node is not None:
            raise PolicyError(f"{action} is server-wide, never checked against a node")
        if any(s.effect == "deny" and s.covers(action, node) for s in self.statements):
            return False
        return any(s.effect == "allow" and s.covers(action, node) for s in self.statements)

    def allows_everywhere(self, action: str) -> bool:
        """True when no node can be refused ``action``: lets a 10,000-node check skip work."""
        return (any(s.effect == "allow" and "*" in s.resources and s.covers_action(action)
                    for s in self.statements)
                and not any(s.effect == "deny" and s.covers_action(action)
                            for s in self.statements))

    def scope(self, action: str, effect: str) -> Scope:
        """Where the ``effect`` statements reach for a node ``action``: with ``allows``,
        allowed = in the allow scope and not in the deny scope (tests/unit/test_policy.py)."""
        if action not in NODE_ACTIONS:
            raise PolicyError(f"{action} is not checked against nodes")
        everything, ids, tags = False, set(), set()
        for s in self.statements:
            if s.effect != effect or not s.covers_action(action):
                continue
            for r in s.resources:
                if r == "*":
                    everything = True
                elif r.startswith("tag:"):
                    key, _, value = r[4:].partition("=")
                    tags.add((key, value))
                else:
                    ids.add(r)
        return Scope(everything, frozenset(ids), frozenset(tags))

    def refused(self, action: str, nodes: Iterable[Node]) -> list[str]:
        """Ids of the nodes on which ``action`` is not allowed, in the order given."""
        if self.allows_everywhere(action):
            return []
        return [n.node_id for n in nodes if not self.allows(action, n)]

    def __add__(self, other: Policy) -> Policy:
        return Policy(self.statements + other.statements)


# No statement can name this id (a resource is *, a tag or an mi-... id): a node about to
# register through an activation, which has neither an id nor tags yet.
NEW_NODE_ID = "(new node)"


def node_actions(policy: Policy, node: Node) -> frozenset[str]:
    """Every node action ``policy`` allows on ``node``."""
    return frozenset(a for a in NODE_ACTIONS if policy.allows(a, node))


@dataclasses.dataclass(frozen=True)
class RetagRefusal:
    """Why a change of a node's tags is refused, whole, so one message names every reason."""

    may_not_tag: bool              # nodes:tag refused on the node as it is or as it would be
    newly_allowed: frozenset[str]  # actions allowed on the node after, refused before

    def reasons(self) -> str:
        parts = ["nodes:tag is not allowed on it as it is and as it would be"
                 if self.may_not_tag else ""]
        if self.newly_allowed:
            parts.append("it would newly allow " + ", ".join(sorted(self.newly_allowed)))
        return "; ".join(p for p in parts if p)


def retag_refusal(policy: Policy, before: Node, after: Node) -> RetagRefusal | None:
    """None if ``policy`` may change ``before``'s tags into ``after``'s; else why not.

    Tags grant access: an allow on ``tag:site=a`` reaches whatever is tagged so, and a
    deny on ``tag:frozen=yes`` holds only while the tag is there. Checking ``nodes:tag``
    alone let an operator remove ``frozen`` and then send, or tag a node into its own
    team and then run commands on it. So a retag must not allow this operator any node
    action it does not already hold on the node (what the other tags' operators gain is
    theirs to hold: that is what ``nodes:tag`` on both sides is for). With that rule,
    ``nodes:tag`` after the change implies it before.
    """
    held, would_hold = node_actions(policy, before), node_actions(policy, after)
    refusal = RetagRefusal(may_not_tag="nodes:tag" not in would_hold,
                           newly_allowed=would_hold - held)
    return refusal if refusal.may_not_tag or refusal.newly_allowed else None


def new_node_refusal(policy: Policy, tags: Mapping[str, str]) -> RetagRefusal | None:
    """An activation's tags need ``nodes:tag`` for each tag, and for all of them together.

    Every node registered through the activation carries the tags from its first
    moment, so creating it is tagging those nodes. Each tag is checked on its own
    because each is a way in: with ``nodes:tag`` only on ``tag:site=a``, an activation
    tagged ``site=a, env=prod`` would plant a device that every ``tag:env=prod`` command
    then reaches, though ``env=prod`` alone is refused. The whole set is checked too,
    so a deny on one combination still holds. Unlike a retag, nothing is taken over:
    the node does not exist yet and is whoever holds the code, so what the tags give
    the creator on it (its own site's commands) is no widening of its reach.
    """
    if not tags:
        return None
    alone = (Node(NEW_NODE_ID, {key: value}) for key, value in tags.items())
    if all(policy.allows("nodes:tag", n) for n in (*alone, Node(NEW_NODE_ID, dict(tags)))):
        return None
    return RetagRefusal(may_not_tag=True, newly_allowed=frozenset())


def parse_statements(document: object) -> tuple[Statement, ...]:
    """Validate a policy document: ``[{"effect", "actions", "resources"}, ...]``.

    Also accepts ``{"statements": [...]}``. Every mistake is named, so a typo in
    an action cannot silently grant or withhold nothing.
    """
    if isinstance(document, dict) and set(document) == {"statements"}:
        document = document["statements"]
    if not isinstance(document, list):
        raise PolicyError("a policy is a list of statements (or {\"statements\": [...]})")
    return tuple(_statement(i, s) for i, s in enumerate(document))


def _statement(index: int, raw: object) -> Statement:
    where = f"statement {index + 1}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: not an object")
    unknown = set(raw) - {"effect", "actions", "resources"}
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    effect = raw.get("effect")
    if effect not in EFFECTS:
        raise PolicyError(f"{where}: effect must be allow or deny, not {effect!r}")
    actions = _strings(where, "actions", raw.get("actions"))
    for action in actions:
        if not (action == "*" or action in ACTIONS
                or (action.endswith(":*") and any(a.startswith(action[:-1]) for a in ACTIONS))):
            raise PolicyError(f"{where}: unknown action {action!r} (known: "
                              f"{', '.join(sorted(ACTIONS))}, a prefix with :*, or *)")
    resources = _strings(where, "resources", raw.get("resources"))
    for resource in resources:
        if resource.startswith("tag:"):
            key, eq, _ = resource[4:].partition("=")
            if not key or not eq:
                raise PolicyError(f"{where}: a tag selector is tag:key=value, not {resource!r}")
        elif resource != "*" and not is_node_id(resource):
            raise PolicyError(f"{where}: a resource is *, a node id (mi-...) or "
                              f"tag:key=value, not {resource!r}")
    return Statement(effect, actions, resources)


def _strings(where: str, name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: {name} must be a non-empty list of strings")
    return tuple(value)


def _role(*actions: str) -> Policy:
    return Policy((Statement("allow", actions, ("*",)),))


ROLES: Mapping[str, Policy] = {
    "admin": _role("*"),
    # A viewer reads what happened (nodes, commands, who had which session), never what a
    # device printed: command output and shell recordings are actions of their own.
    "operator": _role("nodes:read", "nodes:tag", "commands:*", "sessions:start",
                      "sessions:forward", "sessions:copy", "sessions:read",
                      "sessions:read-recording", "activations:create", "activations:read"),
    "viewer": _role("nodes:read", "commands:read", "sessions:read"),
}


def effective_policy(roles: Sequence[str], statements: Sequence[Statement]) -> Policy:
    """An operator's roles' statements, then its own (a deny there still wins)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise PolicyError(f"unknown role(s) {', '.join(unknown)} (known: {', '.join(ROLES)})")
    policy = Policy(tuple(statements))
    for role in roles:
        policy = ROLES[role] + policy
    return policy
