"""Failure limits per key (a source address, an activation id), as a pure counter.

Registration is the one operator-free door into the server: an activation code
can be guessed only as fast as this lets anyone fail. Only failures count, so a
factory registering a thousand devices from one address is never slowed down. Fixed windows keep one
pair of numbers per key; keys whose window has passed are dropped when the map
grows, so a flood of source addresses cannot grow it without bound.
"""

from __future__ import annotations

PRUNE_ABOVE = 10_000


class Throttle:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[float, int]] = {}

    def wait(self, key: str, now: float) -> float | None:
        """None if ``key`` may try now, else the seconds until it may."""
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window or count < self.limit:
            return None
        return start + self.window - now

    def failed(self, key: str, now: float) -> None:
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._counts[key] = (start, count + 1)
        if len(self._counts) > PRUNE_ABOVE:
            self._counts = {k: v for k, v in self._counts.items()
                            if now - v[0] < self.window}

    def __len__(self) -> int:
        return len(self._counts)


class TokenBucket:
    """Messages one agent may send: ``burst`` at once, ``rate`` a second after that.

    Sized far above what a real agent does (a re-sent spool is a few hundred
    frames), so only a runaway or hostile peer ever meets it.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
