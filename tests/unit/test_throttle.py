"""Failure limits per key and per window, bounded memory; counts per address."""

from __future__ import annotations

import pytest

from tether.server.access.throttle import (
    PRUNE_ABOVE,
    AddressCount,
    RegistrationThrottle,
    Throttle,
    TokenBucket,
)


def test_failures_per_key_then_wait_until_the_window_ends() -> None:
    t = Throttle(limit=3, window=60)
    for i in range(3):
        assert t.wait("10.0.0.1", 100.0 + i) is None
        t.failed("10.0.0.1", 100.0 + i)
    assert t.wait("10.0.0.1", 110.0) == pytest.approx(50.0)
    assert t.wait("10.0.0.2", 110.0) is None  # another key is not affected
    assert t.wait("10.0.0.1", 159.9) == pytest.approx(0.1)
    assert t.wait("10.0.0.1", 160.0) is None  # a new window
    t.failed("10.0.0.1", 160.0)
    assert t.wait("10.0.0.1", 161.0) is None  # counting starts again


def test_only_failures_count() -> None:
    t = Throttle(limit=1, window=10)
    for now in range(100):
        assert t.wait("k", float(now)) is None  # successes never call failed()


def test_a_flood_of_keys_is_pruned() -> None:
    t = Throttle(limit=1, window=1)
    for i in range(PRUNE_ABOVE * 3):
        t.failed(f"k{i}", float(i // 1000))  # each second, 1,000 new addresses fail
    assert len(t) <= PRUNE_ABOVE + 1000


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.05) is False  # half a token so far
    assert bucket.take(0.1) is True    # one token after 0.1 s at 10/s
    assert bucket.take(0.1) is False
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # never above the burst


def test_registration_guesses_per_address() -> None:
    t = RegistrationThrottle(per_address=3, per_activation=100)
    for _ in range(3):
        assert t.wait("10.0.0.1", "act", 0.0) is None
        t.guessed_wrong("10.0.0.1", "act", 0.0)
    assert t.wait("10.0.0.1", "act", 1.0) == pytest.approx(59.0)
    assert t.wait("10.0.0.1", "other", 1.0) is not None  # the address, whatever it tries
    assert t.wait("10.0.0.2", "act", 1.0) is None


def test_an_activation_under_attack_still_takes_the_right_code_from_a_new_address() -> None:
    """Many addresses missing one activation lock out themselves, not its device."""
    t = RegistrationThrottle(per_address=10, per_activation=30)
    for i in range(31):
        t.guessed_wrong(f"10.0.{i}.1", "act", 0.0)
    assert t.wait("10.0.0.1", "act", 1.0) == pytest.approx(59.0)  # already missed it
    assert t.wait("10.0.99.1", "act", 1.0) is None                # the device: may try
    assert t.wait("10.0.0.1", "another", 1.0) is None             # other activations
    t.guessed_wrong("10.0.99.1", "act", 1.0)                      # a wrong guess there...
    assert t.wait("10.0.99.1", "act", 2.0) is not None            # ...is its last this minute
    assert t.wait("10.0.0.1", "act", 60.0) is None                # a new window


def test_below_the_activation_limit_an_address_keeps_its_own_budget() -> None:
    t = RegistrationThrottle(per_address=10, per_activation=30)
    for _ in range(5):
        t.guessed_wrong("10.0.0.1", "act", 0.0)
    assert t.wait("10.0.0.1", "act", 1.0) is None  # a typo or five is not a lock-out


def test_ipv6_addresses_of_one_prefix_share_a_budget() -> None:
    t = RegistrationThrottle(per_address=2, per_activation=100)
    t.guessed_wrong("2001:db8::1", "a", 0.0)
    t.guessed_wrong("2001:db8::2", "b", 0.0)
    assert t.wait("2001:db8::3", "c", 1.0) is not None
    assert t.wait("2001:db8:1::1", "c", 1.0) is None


def test_address_counts_are_capped_and_released() -> None:
    count = AddressCount()
    assert count.take("10.0.0.1", 2) and count.take("10.0.0.1", 2)
    assert not count.take("10.0.0.1", 2)
    count.release("10.0.0.1")
    assert count.take("10.0.0.1", 2)
    count.release("10.0.0.1")
    count.release("10.0.0.1")
    assert count["10.0.0.1"] == 0 and len(count) == 0  # nothing kept for idle addresses
