"""Whether a live session may go on: the one rule every check of a running session uses.

A session is allowed when it starts (``POST /api/v1/sessions`` checks the policy),
but what that rests on can change while it runs: its operator is disabled, the
token it was opened with (or a stream's) is revoked or expires, the operator's
policy or the node's tags change so that the session's action is no longer
allowed on the node. ``why_end`` answers, from what the store says now, why a
session must end (None: it may go on). It is pure, and it is asked

- at the start, and on every new stream (each of a forward's connections),
- after every change that can take a right away (disable, revoke, policy
  update, retag), through the bus so that every replica asks for its own
  sessions (``SessionFilter`` says which ones a change concerns),
- on a bounded timer, as the safety net for any change no hook saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from tether.server.access.policy import Node, Policy, effective_policy, parse_statements

ACTION_OF_KIND = {"shell": "sessions:start", "forward": "sessions:forward",
                  "copy": "sessions:copy"}
# A ``closed`` message's ``code`` (and a refused stream's) when the session itself is
# over: ended by the server, an operator, or what it rested on being taken away. A
# client stops, and a forward stops listening, since no new stream of it will open.
SESSION_ENDED = "session_ended"
OPERATOR_DISABLED = "operator disabled"
REVOKED = "token revoked"
EXPIRED = "token expired"


def actions_of(kind: str, target: Mapping[str, Any]) -> tuple[str, ...]:
    """The actions a session of ``kind`` reaching ``target`` needs on its node, all along."""
    action = ACTION_OF_KIND[kind]
    return (action, "sessions:choose-user") if target.get("user") is not None else (action,)


@dataclasses.dataclass(frozen=True)
class Grant:
    """What the store says now about one token and the operator it acts for."""

    token_id: str
    operator: str
    policy: Policy
    operator_disabled: bool
    token_revoked: bool
    expires_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Grant:
        """From a token row joined with its operator's (``store.sessions.grants``)."""
        return cls(token_id=str(row["token_id"]), operator=str(row["name"]),
                   policy=effective_policy(row["roles"], parse_statements(row["statements"])),
                   operator_disabled=row["disabled_at"] is not None,
                   token_revoked=row["revoked_at"] is not None,
                   expires_at=row["expires_at"])


def why_end(operator: str, node: Node, actions: Iterable[str],
            grants: Collection[Grant | None], now: float) -> str | None:
    """Why ``operator``'s session needing ``actions`` on ``node`` must end now, or None.

    ``grants`` are the session's tokens as the store has them (None: no such token,
    which counts as revoked). The reasons are what the operator's client shows after
    "session ended: ", most telling first: a disabled operator's tokens are revoked
    too, and "operator disabled" says more than "token revoked".
    """
    present = [g for g in grants if g is not None]
    if any(g.operator_disabled for g in present):
        return OPERATOR_DISABLED
    if not grants or len(present) < len(grants) or any(g.token_revoked for g in present):
        return REVOKED
    if any(g.operator != operator for g in present):
        return REVOKED  # a token of someone else never carries this session
    if any(g.expires_at is not None and g.expires_at <= now for g in present):
        return EXPIRED
    policy = present[0].policy  # one operator, one policy
    for action in actions:
        if not policy.allows(action, node):
            return f"operator {operator} may no longer {action} on {node.node_id}"
    return None


def expiry_of(grants: Iterable[Grant | None]) -> float | None:
    """When the first of these tokens expires (None: none does)."""
    times = [g.expires_at for g in grants if g is not None and g.expires_at is not None]
    return min(times) if times else None


@dataclasses.dataclass(frozen=True)
class SessionFilter:
    """Which live sessions a change concerns (each field given narrows; none: every one)."""

    operator: str | None = None
    token_id: str | None = None
    node_id: str | None = None

    def matches(self, operator: str, node_id: str, token_ids: Collection[str]) -> bool:
        return ((self.operator is None or self.operator == operator)
                and (self.node_id is None or self.node_id == node_id)
                and (self.token_id is None or self.token_id in token_ids))
