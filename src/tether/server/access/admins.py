"""Who can still manage operators: the rule that keeps a server from locking itself out.

An *active admin* is an operator that is enabled, whose policy (roles and own
statements, ``access/policy.py``) allows ``operators:manage``, and that holds at
least one token that is neither revoked nor expired. That, not the ``admin``
role's name, is what lets someone create operators, grant rights and mint
tokens again: an operator with ``operators:manage`` on ``*`` through its own
statements counts, an ``admin`` with an explicit deny on ``operators:manage``
does not, and neither does an admin whose only token expired.

A change that would leave no active admin (revoking the last admin token,
disabling or demoting the last admin) is refused: ``lockout`` is the one check,
applied by the store to the state *after* the change, inside the transaction
that makes it (``store/operators.py``). Time alone can still end the last
token's validity; ``tether admin recover`` is for that, and for a lost token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from tether.server.access.policy import PolicyError, effective_policy, parse_statements

__all__ = ["LAST_ADMIN", "OperatorState", "TokenState", "active_admins",
           "can_manage_operators", "lockout"]

LAST_ADMIN = "last_admin"
MANAGE = "operators:manage"


@dataclasses.dataclass(frozen=True)
class OperatorState:
    """What the rule needs to know about one operator."""

    name: str
    roles: Sequence[str]
    statements: Sequence[dict[str, Any]]
    disabled: bool = False


@dataclasses.dataclass(frozen=True)
class TokenState:
    """What the rule needs to know about one token (never its secret)."""

    operator: str
    revoked: bool = False
    expires_at: float | None = None

    def valid_at(self, now: float) -> bool:
        """The same test as the store's ``for_token``: not revoked, not expired."""
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


def can_manage_operators(roles: Sequence[str], statements: Sequence[dict[str, Any]]) -> bool:
    """Whether this policy allows ``operators:manage``; a policy that does not parse
    grants nothing (stored policies are validated, so that is only a safe default)."""
    try:
        return effective_policy(list(roles), parse_statements(list(statements))).allows(MANAGE)
    except PolicyError:
        return False


def active_admins(operators: Iterable[OperatorState], tokens: Iterable[TokenState],
                  now: float) -> frozenset[str]:
    """The names of the active admins (see the module's docstring)."""
    holding = {t.operator for t in tokens if t.valid_at(now)}
    return frozenset(op.name for op in operators
                     if not op.disabled and op.name in holding
                     and can_manage_operators(op.roles, op.statements))


def lockout(operators: Iterable[OperatorState], tokens: Iterable[TokenState],
            now: float) -> str | None:
    """Why the state after a change locks everyone out of managing operators, or None.

    The message says what to do instead, since the person reading it is the admin
    about to remove the last way in.
    """
    if active_admins(operators, tokens, now):
        return None
    return ("refused: afterwards no enabled operator with operators:manage would hold a "
            "valid token, and no one could manage operators again. Give another operator "
            "admin rights and a token first (tether operators create NAME --role admin; "
            "tether tokens create --operator NAME), then retry")
