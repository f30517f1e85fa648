"""The per-agent byte budget (access/throttle.py ``BytePacer``), and its keeping per
node across connections (gateway/registry.py), without sockets."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.throttle import BytePacer, TokenBucket
from tether.server.gateway.registry import AgentBudget, Registry


def test_a_burst_passes_then_the_sender_waits_for_the_rate() -> None:
    pacer = BytePacer(rate=1000, burst=5000, now=0.0)
    assert pacer.charge(5000, 0.0) == 0.0
    assert pacer.charge(2000, 0.0) == 2.0      # 2,000 bytes of debt at 1,000 a second
    assert pacer.charge(500, 2.0) == 0.5       # the debt was paid by waiting; this is new
    assert pacer.charge(0, 100.0) == 0.0       # idle time refills up to the burst only
    assert pacer.tokens == 5000


def test_rate_zero_is_off() -> None:
    pacer = BytePacer(rate=0, burst=0, now=0.0)
    assert pacer.charge(10**9, 0.0) == 0.0


@given(rate=st.floats(1, 1e7), burst=st.floats(0, 1e8),
       frames=st.lists(st.tuples(st.integers(0, 2**21), st.floats(0, 5)), max_size=50))
def test_a_sender_that_waits_never_exceeds_burst_plus_rate_times_time(
        rate: float, burst: float, frames: list[tuple[int, float]]) -> None:
    """The bound the server relies on: bytes read by time t <= burst + rate * t."""
    pacer = BytePacer(rate, burst, 0.0)
    now = sent = 0.0
    for cost, idle in frames:
        now += idle
        sent += cost
        now += pacer.charge(cost, now)  # the server stops reading this long
        assert sent <= burst + rate * now + 1e-6 * (sent + 1)


# -- kept per node, across connections (gateway/registry.py) --------------------

def _budget(now: float = 0.0) -> AgentBudget:
    return AgentBudget(TokenBucket(500, 2000, now), BytePacer(1000, 5000, now))


def test_a_spent_budget_outlives_its_connection_until_it_is_full_again() -> None:
    registry = Registry()
    made: list[AgentBudget] = []

    def new() -> AgentBudget:
        made.append(_budget())
        return made[-1]

    budget = registry.budget("mi-0", new)
    assert budget.bytes.charge(7000, 0.0) == 2.0
    registry.keep_budget("mi-0", budget, 0.0)      # the link ended in debt
    assert registry.budget("mi-0", new) is budget  # the next link gets the same
    assert budget.bytes.charge(0, 1.0) == 1.0      # still owes what it owed, less 1 s
    registry.keep_budget("mi-0", budget, 10.0)     # full again: the same as a new one
    assert registry.kept_budgets() == 0
    assert registry.budget("mi-0", new) is not budget and len(made) == 2


def test_kept_budgets_are_swept_when_full_and_cost_a_few_hundred_bytes() -> None:
    """10,000 nodes' spent budgets, each kept past its link: the table is bounded by
    the nodes that spent theirs lately, and one entry is small."""
    registry = Registry()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000):
        budget = _budget()
        budget.bytes.charge(6000, 0.0)  # 1 s of debt each
        registry.keep_budget(f"mi-{i:017x}", budget, 0.0)
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    tracemalloc.stop()
    assert registry.kept_budgets() == 10_000
    assert per_entry < 400, per_entry  # the node id's string included
    # 10,000 other nodes spend theirs at t=10, by when the first ones are full again:
    # a sweep drops those; the table never held twice the most spent at once.
    most = 0
    for i in range(10_000):
        budget = _budget(10.0)
        budget.bytes.charge(6000, 10.0)
        registry.keep_budget(f"mi-late-{i:012x}", budget, 10.0)
        most = max(most, registry.kept_budgets())
    assert registry.kept_budgets() == 10_000 and most <= 2 * 10_000
