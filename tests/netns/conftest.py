"""Fixtures for tests that need the field-like namespace network (see pppnet.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pppnet import NetnsUnavailable, PppNetwork, unavailable_reason


@pytest.fixture
def ppp_network() -> Iterator[PppNetwork]:
    """A fresh device/carrier/server network per test; skipped where it cannot exist."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"ppp_network {reason}")
    try:
        net = PppNetwork().__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(f"ppp_network cannot be built here (ip netns add or tun failed): {exc}")
    try:
        yield net
    finally:
        net.close()
