"""Limits per key (a source address, an activation id), as pure counters.

Registration is the one operator-free door into the server: an activation code
can be guessed only as fast as this lets anyone fail. Only failures count, so a
factory registering a thousand devices from one address is never slowed down. Fixed windows keep one
pair of numbers per key; keys whose window has passed are dropped when the map
grows, so a flood of source addresses cannot grow it without bound.
"""

from __future__ import annotations

from tether.server.access.client_address import limit_key

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


class RegistrationThrottle:
    """Failed activation-code guesses, per client address and per activation.

    An address that failed ``per_address`` times this minute is refused before its
    code is checked. An activation that ``per_activation`` guesses missed this
    minute (many addresses at once) is under attack: from then on, until the
    minute ends, every address that has already missed *it* is refused, but an
    address that has not may still try. So a guesser with K addresses gets at most
    ``per_activation + K`` more tries a minute, and the device holding the right
    code, from its own address, still registers: knowing an activation id is not
    enough to lock it. (Codes are 120 random bits, so no rate here makes guessing
    them feasible; the limits keep floods cheap and visible.) Only a wrong code is a
    guess: a right code refused as expired, revoked or used up counts for nothing.
    """

    def __init__(self, per_address: int, per_activation: int, window: float = 60.0) -> None:
        self.by_address = Throttle(per_address, window)
        self.by_activation = Throttle(per_activation, window)
        self._missed_it = Throttle(1, window)  # per (activation, address)

    def wait(self, address: str, activation_id: str, now: float) -> float | None:
        """None if this address may try this activation now, else the seconds until."""
        key = limit_key(address)
        wait = self.by_address.wait(key, now)
        if wait is None and self.by_activation.wait(activation_id, now) is not None:
            wait = self._missed_it.wait(f"{activation_id} {key}", now)
        return wait

    def guessed_wrong(self, address: str, activation_id: str, now: float) -> None:
        key = limit_key(address)
        self.by_address.failed(key, now)
        self.by_activation.failed(activation_id, now)
        self._missed_it.failed(f"{activation_id} {key}", now)


class AddressCount:
    """Things in progress per client address (or IPv6 /64), each kind under its own cap.

    Used for connections still sending their HTTP request head (http_guard.py) and
    for agent WebSocket handshakes before ``hello`` (gateway/registry.py): the
    connections that cost a descriptor before anyone is authenticated.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def take(self, address: str, limit: int) -> bool:
        """Count one; False (not counted) when ``address`` already has ``limit`` going."""
        key = limit_key(address)
        count = self._counts.get(key, 0)
        if count >= limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, address: str) -> None:
        key = limit_key(address)
        count = self._counts.pop(key, 1) - 1
        if count > 0:
            self._counts[key] = count

    def __getitem__(self, address: str) -> int:
        return self._counts.get(limit_key(address), 0)

    def __len__(self) -> int:
        return len(self._counts)


class _Bucket:
    """``burst`` at once, refilled at ``rate`` a second: the bookkeeping both budgets share.

    One per node, kept across its connections (gateway/registry.py): slots keep each
    one to a few dozen bytes.
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def full(self, now: float) -> bool:
        """Refilled to the burst by ``now``: no different from a new one."""
        return self.tokens + (now - self.last) * self.rate >= self.burst

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now


class TokenBucket(_Bucket):
    """Messages one agent may send: ``burst`` at once, ``rate`` a second after that.

    Sized far above what a real agent does (a re-sent spool is a few hundred
    frames), so only a runaway or hostile peer ever meets it.
    """

    __slots__ = ()

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class BytePacer(_Bucket):
    """Bytes one agent may send: ``burst`` at once, ``rate`` a second after that.

    The message rate (``TokenBucket``) counts frames, and a frame may be 2 MiB:
    heavy but valid messages (the review's 1.3 MB inventories) passed it and took
    a core. This counts their bytes. Past the budget the sender is not closed but
    *slowed*: ``charge`` says how long to stop reading, and TCP's window then holds
    the agent back, so an honest agent re-sending a large spool only takes longer.
    ``rate`` 0 turns pacing off.
    """

    __slots__ = ()

    def full(self, now: float) -> bool:
        """Refilled to the burst by ``now`` (or off): no different from a new pacer."""
        return self.rate <= 0 or super().full(now)

    def charge(self, cost: float, now: float) -> float:
        """Take ``cost`` bytes; the seconds to wait before reading more (0: none)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
