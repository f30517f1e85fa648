"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads a
fleet that lost its link at the same moment, so a restarted server is not hit
by every device in the same second. The cap bounds how long a device whose
link came back can stay away; the incumbent's agent can wait for hours.

The delay runs from the start of a failed dial, not its end: a dial into a dead
link can hang on the kernel's SYN retries for up to the connect timeout, and a
link restored during that hang must still see the next attempt within the cap
(or within one dial's timeout, if that is longer than the cap).
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

    def next_delay(self, spent: float = 0.0) -> float:
        """The wait before the next attempt, given ``spent`` seconds in a failed dial.

        Attempts therefore start at most ``max(cap, spent)`` seconds apart. Pass 0
        once the connection had opened: a fleet dropped by a restarting or
        overloaded server must draw its full jitter again, not rush back at once.
        """
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return max(0.0, self._uniform(0.0, ceiling) - spent)

    def reset(self) -> None:
        self.attempt = 0
