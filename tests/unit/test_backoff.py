"""Reconnect backoff: exponential ceilings, full jitter, a hard cap, reset on success."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.agent.backoff import DEFAULT_CAP, Backoff


def test_ceilings_double_up_to_the_cap_when_jitter_takes_the_top() -> None:
    backoff = Backoff(base=1.0, cap=10.0, uniform=lambda lo, hi: hi)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    seen: list[tuple[float, float]] = []
    backoff = Backoff(base=0.5, cap=4.0, uniform=lambda lo, hi: seen.append((lo, hi)) or lo)
    for _ in range(5):
        assert backoff.next_delay() == 0.0
    assert seen == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 4.0)]


@given(st.floats(0.01, 5), st.floats(5, 120), st.integers(0, 10_000))
def test_no_delay_ever_exceeds_the_cap(base: float, cap: float, attempts: int) -> None:
    backoff = Backoff(base, cap, uniform=random.Random(attempts).uniform)
    for _ in range(min(attempts, 200)):
        assert 0.0 <= backoff.next_delay() <= cap
    backoff.attempt = attempts  # far into an outage: still bounded, no overflow
    assert backoff.next_delay() <= cap


def test_the_default_cap_is_at_most_a_minute() -> None:
    assert DEFAULT_CAP <= 60


@pytest.mark.parametrize(("base", "cap"), [(0, 10), (-1, 10), (5, 1)])
def test_nonsense_settings_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)


def test_time_spent_in_a_failed_attempt_comes_off_the_wait() -> None:
    backoff = Backoff(base=1.0, cap=60.0, uniform=lambda lo, hi: hi)
    backoff.attempt = 10  # at the cap
    assert backoff.next_delay(spent=20.0) == 40.0
    assert backoff.next_delay(spent=75.0) == 0.0


@given(st.floats(0, 120), st.integers(0, 50), st.integers(0, 2**32))
def test_attempts_start_at_most_a_cap_apart(spent: float, attempt: int, seed: int) -> None:
    """A link restored during a slow failed dial sees the next dial within the cap."""
    backoff = Backoff(1.0, 60.0, uniform=random.Random(seed).uniform)
    backoff.attempt = attempt
    wait = backoff.next_delay(spent)
    assert wait >= 0.0
    assert spent + wait <= max(spent, 60.0)
