"""What ``GET /commands`` filters on, as SQL conditions on the ``commands`` table.

Why SQL: filtered after the ``LIMIT``, a page comes back short or empty though
matching commands exist further down (the reason ``store/scope.py`` exists). A
command's status is not stored: ``protocol.statuses.command_status`` derives it from
its invocations' statuses, so it can never disagree with them. ``status_is`` says
the same rule over the invocation rows, one ``EXISTS`` per question it asks;
``tests/integration/test_command_history.py`` checks the two agree for every status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sqlalchemy as sa

from tether.protocol.statuses import CommandStatus, InvocationStatus
from tether.server.store.schema import commands, invocations

_I = InvocationStatus
_S = CommandStatus


@dataclasses.dataclass(frozen=True)
class CommandFilter:
    """None (or empty) is no condition from that field."""

    node_id: str | None = None
    status: CommandStatus | None = None
    since: float | None = None     # created at or after (Unix seconds)
    operator: str | None = None    # created_by
    before: str | None = None      # a command id: the page after it (older ones)


def _has(statuses: Iterable[InvocationStatus], negate: bool = False) -> sa.ColumnElement[bool]:
    """The command has an invocation whose status is (with ``negate``: is not) one of
    ``statuses``."""
    values = [s.value for s in statuses]
    status = invocations.c.status
    return sa.exists().where(invocations.c.command_id == commands.c.command_id,
                             status.not_in(values) if negate else status.in_(values))


def status_is(status: CommandStatus) -> sa.ColumnElement[bool]:
    """The command's derived status is ``status``: ``command_status``, in SQL."""
    live = _has([_I.PENDING, _I.IN_PROGRESS])
    cancel = commands.c.cancel_requested
    all_success = sa.and_(_has([_I.SUCCESS]), ~_has([_I.SUCCESS], negate=True))
    ended = sa.and_(~live, ~all_success)  # ended, and not every one a Success
    timed_out = _has([_I.TIMED_OUT, _I.DELIVERY_TIMED_OUT])
    conditions = {
        _S.CANCELLING: sa.and_(live, cancel),
        _S.PENDING: sa.and_(live, ~cancel, ~_has([_I.PENDING], negate=True)),
        _S.IN_PROGRESS: sa.and_(live, ~cancel, _has([_I.PENDING], negate=True)),
        _S.SUCCESS: sa.and_(~live, all_success),
        _S.CANCELLED: sa.and_(ended, cancel),
        _S.TIMED_OUT: sa.and_(ended, ~cancel, timed_out),
        _S.FAILED: sa.and_(ended, ~cancel, ~timed_out),
    }
    return conditions[status]


def page_before(command_id: str) -> sa.ColumnElement[bool]:
    """Older than the command ``command_id`` in the list's order (newest first, the id
    breaking ties): the next page after a page that ended with it. An unknown id is
    an empty page."""
    other = commands.alias("cursor")
    at = sa.select(other.c.created_at).where(other.c.command_id == command_id).scalar_subquery()
    return sa.or_(commands.c.created_at < at,
                  sa.and_(commands.c.created_at == at, commands.c.command_id < command_id))


def conditions(f: CommandFilter) -> list[sa.ColumnElement[bool]]:
    """The filter's conditions, to AND (none: every command)."""
    out: list[sa.ColumnElement[bool]] = []
    if f.node_id is not None:
        out.append(commands.c.command_id.in_(sa.select(invocations.c.command_id).where(
            invocations.c.node_id == f.node_id)))
    if f.status is not None:
        out.append(status_is(f.status))
    if f.since is not None:
        out.append(commands.c.created_at >= f.since)
    if f.operator is not None:
        out.append(commands.c.created_by == f.operator)
    if f.before is not None:
        out.append(page_before(f.before))
    return out
