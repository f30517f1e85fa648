"""Registration failure limits: per key, per window, bounded memory."""

from __future__ import annotations

import pytest

from tether.server.access.throttle import PRUNE_ABOVE, Throttle, TokenBucket


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
