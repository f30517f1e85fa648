"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads a
fleet that lost its link at the same moment, so a restarted server is not hit
by every device in the same second. The cap bounds how long a device whose
link came back can stay away; the incumbent's agent can wait for hours.
"""

from __future__ import annotations

import random
from typing import Callable

DEFAULT_BASE = 1.0
DEFAULT_CAP = 60.0


class Backoff:
    def __init__(self, base: float = DEFAULT_BASE, cap: float = DEFAULT_CAP,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._uniform = uniform
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
