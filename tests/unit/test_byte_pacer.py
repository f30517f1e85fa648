"""The per-agent byte budget (access/throttle.py ``BytePacer``), without sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.throttle import BytePacer


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
