"""Command and invocation statuses, and the one table of legal transitions.

The names are Systems Manager's, so people moving over read them without a
glossary. Rules enforced here and nowhere else:

- An invocation starts Pending. It becomes InProgress when the agent says it
  has recorded and started it, and ends in exactly one terminal status.
- Pending can end without ever running: DeliveryTimedOut (the node did not
  come back in time), Cancelled (an operator cancelled first) or
  Undeliverable (the node was deregistered).
- InProgress ends with whatever the agent reports (Success, Failed, TimedOut,
  Cancelled), or when the server gives up on it: TimedOut (no result within the
  timeout plus the delivery timeout) or Undeliverable (the node was deregistered).
- A terminal status never changes again; a late or repeated report is
  acknowledged and dropped.

The store applies a transition with a conditional UPDATE whose WHERE clause
comes from ``allowed_sources`` (store.py's ``_moving``, the only way it writes a
status), so two racing writers cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum


class InvocationStatus(str, Enum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    DELIVERY_TIMED_OUT = "DeliveryTimedOut"
    CANCELLED = "Cancelled"
    UNDELIVERABLE = "Undeliverable"

    @property
    def terminal(self) -> bool:
        return self not in (InvocationStatus.PENDING, InvocationStatus.IN_PROGRESS)


class CommandStatus(str, Enum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (CommandStatus.SUCCESS, CommandStatus.FAILED,
                        CommandStatus.TIMED_OUT, CommandStatus.CANCELLED)


_I = InvocationStatus
TRANSITIONS: Mapping[InvocationStatus, frozenset[InvocationStatus]] = {
    _I.PENDING: frozenset({_I.IN_PROGRESS, _I.DELIVERY_TIMED_OUT, _I.CANCELLED,
                           _I.UNDELIVERABLE, _I.SUCCESS, _I.FAILED, _I.TIMED_OUT}),
    _I.IN_PROGRESS: frozenset({_I.SUCCESS, _I.FAILED, _I.TIMED_OUT, _I.CANCELLED,
                               _I.UNDELIVERABLE}),
}
# Pending -> Success/Failed/TimedOut directly: the 'accepted' frame can be lost
# with a dropped link while the result, spooled on the device, arrives later.


def can_transition(source: InvocationStatus, target: InvocationStatus) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def allowed_sources(target: InvocationStatus) -> frozenset[InvocationStatus]:
    """Every status from which ``target`` may be reached (for the store's WHERE)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def command_status(counts: Mapping[InvocationStatus, int],
                   cancel_requested: bool) -> CommandStatus:
    """A command's status, derived from its invocations so it can never disagree."""
    live = counts.get(_I.PENDING, 0) + counts.get(_I.IN_PROGRESS, 0)
    total = sum(counts.values())
    if live:
        if cancel_requested:
            return CommandStatus.CANCELLING
        if counts.get(_I.PENDING, 0) == total:
            return CommandStatus.PENDING
        return CommandStatus.IN_PROGRESS
    if total and counts.get(_I.SUCCESS, 0) == total:
        return CommandStatus.SUCCESS
    if cancel_requested:
        return CommandStatus.CANCELLED
    if counts.get(_I.TIMED_OUT, 0) or counts.get(_I.DELIVERY_TIMED_OUT, 0):
        return CommandStatus.TIMED_OUT
    return CommandStatus.FAILED


def count(statuses: Iterable[InvocationStatus]) -> dict[InvocationStatus, int]:
    out: dict[InvocationStatus, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out
