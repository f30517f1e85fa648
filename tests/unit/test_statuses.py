"""The invocation transition table and the command status derived from invocations."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.messages import AGENT_RESULT_STATUSES
from tether.protocol.statuses import (
    TRANSITIONS,
    CommandStatus,
    InvocationStatus,
    allowed_sources,
    can_transition,
    command_status,
    count,
)

I = InvocationStatus  # noqa: E741
C = CommandStatus
LIVE = {I.PENDING, I.IN_PROGRESS}
TERMINAL = set(I) - LIVE


def test_terminal_flags() -> None:
    assert {s for s in I if s.terminal} == TERMINAL == {
        I.SUCCESS, I.FAILED, I.TIMED_OUT, I.DELIVERY_TIMED_OUT, I.CANCELLED, I.UNDELIVERABLE}
    assert {s for s in C if not s.terminal} == {C.PENDING, C.IN_PROGRESS, C.CANCELLING}


@pytest.mark.parametrize("source", sorted(TERMINAL))
def test_terminal_statuses_never_change(source: InvocationStatus) -> None:
    assert not TRANSITIONS.get(source)
    for target in I:
        assert not can_transition(source, target)


@pytest.mark.parametrize("target", list(I))
def test_allowed_sources_matches_can_transition(target: InvocationStatus) -> None:
    sources = allowed_sources(target)
    assert sources == {s for s in I if can_transition(s, target)}
    assert sources <= LIVE


def test_table_shape() -> None:
    assert set(TRANSITIONS) == LIVE
    for source, targets in TRANSITIONS.items():
        assert source not in targets  # no self-transitions
        assert I.PENDING not in targets  # nothing goes back to Pending
    assert allowed_sources(I.PENDING) == frozenset()
    assert can_transition(I.PENDING, I.IN_PROGRESS)
    assert not can_transition(I.IN_PROGRESS, I.PENDING)
    # Only a never-delivered invocation can miss its delivery deadline.
    assert allowed_sources(I.DELIVERY_TIMED_OUT) == {I.PENDING}
    # Every status reachable at all ends up reachable from Pending.
    for target in I:
        if target is not I.PENDING:
            assert can_transition(I.PENDING, target)


@pytest.mark.parametrize("status", AGENT_RESULT_STATUSES)
def test_agent_results_apply_with_or_without_accepted(status: str) -> None:
    # The 'accepted' frame may be lost with the link while the spooled result arrives later.
    assert allowed_sources(I(status)) == LIVE


@pytest.mark.parametrize(("counts", "cancel", "expected"), [
    ({I.SUCCESS: 3}, False, C.SUCCESS),
    ({I.SUCCESS: 3}, True, C.SUCCESS),  # cancel came too late to matter
    ({I.SUCCESS: 2, I.PENDING: 0}, False, C.SUCCESS),  # zero counts are ignored
    ({I.PENDING: 2}, False, C.PENDING),
    ({I.PENDING: 1, I.SUCCESS: 0}, False, C.PENDING),
    ({I.IN_PROGRESS: 1}, False, C.IN_PROGRESS),
    ({I.PENDING: 1, I.IN_PROGRESS: 1}, False, C.IN_PROGRESS),
    ({I.PENDING: 1, I.SUCCESS: 1}, False, C.IN_PROGRESS),
    ({I.PENDING: 1, I.FAILED: 4}, False, C.IN_PROGRESS),
    ({I.PENDING: 1}, True, C.CANCELLING),
    ({I.IN_PROGRESS: 1, I.CANCELLED: 2}, True, C.CANCELLING),
    ({I.PENDING: 1, I.SUCCESS: 1}, True, C.CANCELLING),
    ({I.CANCELLED: 2}, True, C.CANCELLED),
    ({I.CANCELLED: 1, I.SUCCESS: 1}, True, C.CANCELLED),
    ({I.CANCELLED: 1, I.TIMED_OUT: 1}, True, C.CANCELLED),
    ({I.DELIVERY_TIMED_OUT: 1}, False, C.TIMED_OUT),
    ({I.DELIVERY_TIMED_OUT: 1, I.SUCCESS: 2}, False, C.TIMED_OUT),
    ({I.TIMED_OUT: 1, I.SUCCESS: 5}, False, C.TIMED_OUT),
    ({I.TIMED_OUT: 1, I.FAILED: 1}, False, C.TIMED_OUT),  # as implemented: timeouts win
    ({I.FAILED: 1}, False, C.FAILED),
    ({I.FAILED: 1, I.SUCCESS: 9}, False, C.FAILED),
    ({I.UNDELIVERABLE: 1}, False, C.FAILED),
    ({I.UNDELIVERABLE: 1, I.SUCCESS: 1}, False, C.FAILED),
])
def test_command_status_examples(counts: dict[InvocationStatus, int], cancel: bool,
                                 expected: CommandStatus) -> None:
    assert command_status(counts, cancel) is expected


counts_strategy = st.dictionaries(st.sampled_from(list(I)), st.integers(0, 5)).filter(
    lambda c: sum(c.values()) > 0)


@given(counts_strategy, st.booleans())
def test_command_status_is_terminal_iff_nothing_live(counts: dict[InvocationStatus, int],
                                                     cancel: bool) -> None:
    status = command_status(counts, cancel)
    live = sum(n for s, n in counts.items() if s in LIVE)
    assert status.terminal == (live == 0)
    if live:
        assert (status is C.CANCELLING) == cancel
    total = sum(counts.values())
    assert (status is C.SUCCESS) == (counts.get(I.SUCCESS, 0) == total)
    if not live and status is not C.SUCCESS:
        assert (status is C.CANCELLED) == cancel


@given(counts_strategy, st.booleans(), st.sampled_from(sorted(LIVE)),
       st.sampled_from(sorted(TERMINAL)))
def test_finishing_an_invocation_only_moves_a_command_forward(
        counts: dict[InvocationStatus, int], cancel: bool, source: InvocationStatus,
        target: InvocationStatus) -> None:
    if not counts.get(source) or not can_transition(source, target):
        return
    before = command_status(counts, cancel)
    after_counts = dict(counts)
    after_counts[source] -= 1
    after_counts[target] = after_counts.get(target, 0) + 1
    after = command_status(after_counts, cancel)
    # Pending < InProgress/Cancelling < terminal: finishing an invocation never goes back.
    assert _rank(after) >= _rank(before)
    if before is C.CANCELLING:
        assert after in (C.CANCELLING, C.CANCELLED, C.SUCCESS)


def _rank(status: CommandStatus) -> int:
    if status.terminal:
        return 2
    return 0 if status is C.PENDING else 1


@given(st.lists(st.sampled_from(list(I))))
def test_count_matches_counter(statuses: list[InvocationStatus]) -> None:
    assert count(statuses) == dict(collections.Counter(statuses))
