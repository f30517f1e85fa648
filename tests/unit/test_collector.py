"""``collector.settle``: start-up's objects out of every later pass, young passes spaced."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tether.server import collector


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_settle_freezes_what_exists_and_keeps_the_older_ratios() -> None:
    _, middle, old = gc.get_threshold()
    collector.settle()
    assert gc.get_freeze_count() > 1000  # this process's modules, at least
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
    assert collector.YOUNG_THRESHOLD > 700  # CPython's default, which it is there to raise
