"""Repeated refusals: the first written at once, the rest one count per window, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.audit_digest import Digest, Kind, kind_of

WINDOW = 60.0


def bad_token(source: str = "10.0.0.1", status: int = 401) -> Kind:
    return kind_of("anonymous", "GET /api/v1/nodes", None, source, "denied",
                   {"status": status, "error": "invalid_token"})


def test_the_first_is_written_and_repeats_are_counted_until_the_window_ends() -> None:
    d = Digest(WINDOW)
    kind = bad_token()
    assert d.repeat(kind, 100.0, authenticated=False) is False
    d.wrote(kind, seq=7)
    for i in range(1, 500):
        assert d.repeat(kind, 100.0 + i / 10, authenticated=False) is True
    assert d.due(159.9) == []  # the window is still open
    assert d.next_due() == 160.0
    [summary] = d.due(160.0)
    assert (summary.kind, summary.repeats, summary.repeat_of) == (kind, 499, 7)
    assert (summary.since, summary.until) == (100.1, 149.9)
    assert len(d) == 0 and d.next_due() is None
    # The next one opens a new window: written at once again.
    assert d.repeat(kind, 161.0, authenticated=False) is False


def test_anything_recorded_that_differs_is_another_kind() -> None:
    d = Digest(WINDOW)
    kinds = [bad_token(), bad_token(source="10.0.0.2"), bad_token(status=429),
             kind_of("op", "POST /api/v1/commands", None, "10.0.0.1", "denied",
                     {"status": 403, "script": "a"}),
             kind_of("op", "POST /api/v1/commands", None, "10.0.0.1", "denied",
                     {"status": 403, "script": "b"})]
    assert len(set(kinds)) == len(kinds)
    assert [d.repeat(k, 0.0, authenticated=False) for k in kinds] == [False] * len(kinds)
    assert kind_of("a", "b", None, None, "denied", {"x": 1, "y": 2}) == kind_of(
        "a", "b", None, None, "denied", {"y": 2, "x": 1})


def test_a_window_without_repeats_adds_nothing() -> None:
    d = Digest(WINDOW)
    d.repeat(bad_token(), 0.0, authenticated=False)
    assert d.due(WINDOW) == [] and len(d) == 0


def test_a_window_replaced_before_it_was_collected_still_yields_its_count() -> None:
    d = Digest(WINDOW)
    kind = bad_token()
    d.repeat(kind, 0.0, authenticated=False)
    d.wrote(kind, 1)
    d.repeat(kind, 1.0, authenticated=False)
    assert d.repeat(kind, 61.0, authenticated=False) is False  # a new window
    assert d.next_due() == float("-inf")  # a count is owed now
    [summary] = d.due(61.0)
    assert (summary.repeats, summary.repeat_of) == (1, 1)


def test_drain_yields_every_open_count() -> None:
    d = Digest(WINDOW)
    for source in ("a", "b"):
        for _ in range(3):
            d.repeat(bad_token(source), 0.0, authenticated=False)
    assert sorted(s.repeats for s in d.drain()) == [2, 2]


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=400))
def test_memory_and_rows_are_bounded_and_every_call_is_counted(
        calls: list[tuple[int, bool]]) -> None:
    """Past max_kinds, unauthenticated kinds fold into one total; operators' are written."""
    d = Digest(WINDOW, max_kinds=8)
    written = {True: 0, False: 0}
    for source, authenticated in calls:
        actor = "op" if authenticated else "anonymous"
        kind = kind_of(actor, "GET /x", None, str(source), "denied", {})
        if not d.repeat(kind, 1.0, authenticated):
            written[authenticated] += 1
        assert len(d) <= 8
    summaries = d.drain()
    assert sum(written.values()) + sum(s.repeats for s in summaries) == len(calls)
    assert len([s for s in summaries if s.kind is None]) <= 1
    # Rows for unauthenticated calls: at most one and one count per tracked kind, and
    # the one total; however many distinct kinds they tried.
    anonymous = [s for s in summaries if s.kind is None or s.kind[0] == "anonymous"]
    assert written[False] + len(anonymous) <= 2 * 8 + 1
