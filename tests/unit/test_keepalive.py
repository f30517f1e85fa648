"""The keepalive clock: one ping after a quiet interval, death after interval + timeout.

Property tests use times that are multiples of 1/64 s and small enough that
float sums and differences are exact; the regression test at the end covers
arbitrary floats, where ``poll`` once disagreed with ``next_deadline`` by one ulp.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.keepalive import Action, Keepalive

INTERVAL = 30.0
TIMEOUT = 10.0
T0 = 1000.0


def ticks(lo: int, hi: int) -> st.SearchStrategy[float]:
    """Multiples of 1/64 between lo/64 and hi/64: exact in binary floating point."""
    return st.integers(lo, hi).map(lambda n: n / 64)


intervals = ticks(1, 64 * 120)
starts = ticks(0, 64 * 10**6)
gaps = ticks(0, 64 * 200)


def test_probing_side_pings_once_then_dies() -> None:
    ka = Keepalive(INTERVAL, TIMEOUT, T0, probing=True)
    assert ka.poll(T0) is Action.NONE
    assert ka.poll(T0 + INTERVAL - 0.5) is Action.NONE
    assert ka.poll(T0 + INTERVAL) is Action.SEND_PING
    assert ka.poll(T0 + INTERVAL) is Action.NONE  # not twice
    assert ka.poll(T0 + INTERVAL + 1) is Action.NONE
    assert ka.poll(T0 + INTERVAL + TIMEOUT - 0.5) is Action.NONE
    assert ka.poll(T0 + INTERVAL + TIMEOUT) is Action.DEAD
    assert ka.poll(T0 + INTERVAL + TIMEOUT + 100) is Action.DEAD  # and stays dead


def test_receiving_resets_the_clock() -> None:
    ka = Keepalive(INTERVAL, TIMEOUT, T0, probing=True)
    assert ka.poll(T0 + INTERVAL) is Action.SEND_PING
    ka.received(T0 + INTERVAL + 2)  # the pong
    assert ka.next_deadline() == T0 + 2 * INTERVAL + 2
    assert ka.poll(T0 + INTERVAL + TIMEOUT) is Action.NONE  # would have been dead
    assert ka.poll(T0 + 2 * INTERVAL + 1) is Action.NONE
    assert ka.poll(T0 + 2 * INTERVAL + 2) is Action.SEND_PING  # a new quiet interval
    assert ka.poll(T0 + 2 * INTERVAL + 2 + TIMEOUT) is Action.DEAD


def test_busy_link_never_pings() -> None:
    ka = Keepalive(INTERVAL, TIMEOUT, T0, probing=True)
    now = T0
    for _ in range(1000):
        now += INTERVAL - 1
        assert ka.poll(now) is Action.NONE
        ka.received(now)


def test_non_probing_side_never_pings() -> None:
    ka = Keepalive(INTERVAL, TIMEOUT, T0, probing=False)
    assert ka.next_deadline() == T0 + INTERVAL + TIMEOUT
    assert ka.poll(T0 + INTERVAL) is Action.NONE
    assert ka.poll(T0 + INTERVAL + TIMEOUT - 0.5) is Action.NONE
    assert ka.poll(T0 + INTERVAL + TIMEOUT) is Action.DEAD


def test_poll_that_misses_the_ping_window_goes_straight_to_dead() -> None:
    ka = Keepalive(INTERVAL, TIMEOUT, T0, probing=True)
    assert ka.poll(T0 + INTERVAL + TIMEOUT) is Action.DEAD


Event = tuple[str, float]
events = st.lists(st.tuples(st.sampled_from(["poll", "poll", "received"]), gaps), max_size=60)


@given(intervals, intervals, starts, st.booleans(), events)
def test_poll_follows_the_rules(interval: float, timeout: float, start: float, probing: bool,
                                steps: list[Event]) -> None:
    ka = Keepalive(interval, timeout, start, probing=probing)
    now = last = start
    pinged = False
    for kind, gap in steps:
        now += gap
        if kind == "received":
            ka.received(now)
            last, pinged = now, False
            continue
        deadline = ka.next_deadline()
        action = ka.poll(now)
        silence = now - last
        if now < deadline:
            assert action is Action.NONE
        if silence >= interval + timeout:
            assert action is Action.DEAD
        elif probing and not pinged and silence >= interval:
            assert action is Action.SEND_PING
            pinged = True
        else:
            assert action is Action.NONE
        assert ka.next_deadline() == last + (
            interval if probing and not pinged else interval + timeout)


@given(intervals, intervals, starts, st.booleans(), st.lists(gaps, max_size=30))
def test_deadline_driven_loop(interval: float, timeout: float, start: float, probing: bool,
                              arrivals: list[float]) -> None:
    """Drive the clock the way a connection does: poll at each deadline, unless a frame
    arrives first. Pings go out exactly ``interval`` after the last frame; the link is
    declared dead exactly ``interval + timeout`` after it, and nothing else happens."""
    ka = Keepalive(interval, timeout, start, probing=probing)
    now = last = start
    log: list[tuple[float, Action]] = []  # what happened since the last frame arrived
    pending = list(arrivals)  # gaps between frames
    for _ in range(200):
        deadline = ka.next_deadline()
        if pending and last + pending[0] < deadline:
            now = last = last + pending.pop(0)
            ka.received(now)
            log.clear()
            continue
        now = deadline
        action = ka.poll(now)
        assert action is not Action.NONE, "polled at next_deadline() and nothing was due"
        log.append((now, action))
        if action is Action.DEAD:
            break
    else:
        pytest.fail("never declared dead")
    assert log[-1] == (last + interval + timeout, Action.DEAD)
    pings = [t for t, a in log if a is Action.SEND_PING]
    if probing:
        assert pings == [last + interval]
    else:
        assert pings == []


@pytest.mark.parametrize(("interval", "timeout", "start", "probing"), [
    (0.1, 5.0, 0.7, True),
    (30.0, 10.0, 1012.7930964535236, True),
])
def test_regression_poll_at_next_deadline_can_do_nothing(interval: float, timeout: float,
                                                  start: float, probing: bool) -> None:
    ka = Keepalive(interval, timeout, start, probing=probing)
    assert ka.poll(ka.next_deadline()) is not Action.NONE


def test_protocol_2_agent_pings_after_sending_nothing_for_an_interval() -> None:
    ka = Keepalive(10.0, 5.0, 0.0, probing=True, answered=False)
    assert ka.next_deadline() == 10.0
    ka.sent(4.0)  # any frame sent proves life to the server
    ka.received(9.0)  # frames received do not: the server needs to hear from us
    assert ka.poll(13.9) is Action.NONE
    assert ka.poll(ka.next_deadline()) is Action.SEND_PING
    assert ka.next_deadline() == 24.0  # the ping itself counts as sent
    assert ka.poll(1000.0) is Action.SEND_PING  # never DEAD: the kernel judges the link


def test_protocol_2_server_side_declares_death_after_interval_plus_timeout() -> None:
    ka = Keepalive(10.0, 5.0, 0.0, probing=False, answered=False)
    ka.received(2.0)
    assert ka.poll(16.9) is Action.NONE
    assert ka.poll(ka.next_deadline()) is Action.DEAD
