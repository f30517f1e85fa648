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
applied by the store to the states before and after the change, inside the
transaction that makes it (``store/operators.py``).

Expiry is part of the rule, because a token about to expire is a lockout on a
timer: an admin who made itself a 2-second token and then revoked its permanent
one was accepted, and locked everyone out 2 seconds later. So a change must also
leave an active admin whose token *lasts*: never expires, or is still valid
``LASTING`` (24 h) from now. The one exception is a server where no admin holds
such a token already (every admin uses short-lived tokens): there a change only
has to leave an admin whose token is valid now, so that revoking a leaked token
is never refused for a state the change did not make. Time alone can still end
the last token (an admin with only a 30-day token, 30 days on): the next start
says so, and ``tether admin recover`` is for that, and for a lost token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from tether.server.access.policy import PolicyError, effective_policy, parse_statements

__all__ = ["LASTING", "LAST_ADMIN", "OperatorState", "State", "TokenState", "active_admins",
           "can_manage_operators", "lockout"]

LAST_ADMIN = "last_admin"
MANAGE = "operators:manage"
# A token counts toward "an admin can still sign in tomorrow" if it is valid this long from now.
LASTING = 24 * 3600.0


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


State = tuple[Sequence[OperatorState], Sequence[TokenState]]


def lockout(before: State, after: State, now: float) -> str | None:
    """Why going from ``before`` to ``after`` locks everyone out of managing operators
    (now, or once the remaining tokens expire), or None.

    The message says what to do instead, since the person reading it is the admin
    about to remove the last way in.
    """
    if not active_admins(*after, now):
        return ("refused: afterwards no enabled operator with operators:manage would hold a "
                "valid token, and no one could manage operators again. Give another "
                "operator admin rights and a token first (tether operators create NAME "
                "--role admin; tether tokens create --operator NAME), then retry")
    if active_admins(*before, now + LASTING) and not active_admins(*after, now + LASTING):
        return ("refused: afterwards no enabled operator with operators:manage would hold a "
                f"token that lasts more than {LASTING / 3600:g} hours (one that never "
                "expires, or expires later), so everyone would be locked out once the "
                "remaining tokens expire. Give an admin such a token first (tether tokens "
                "create --operator NAME, without --expires), then retry")
    return None
