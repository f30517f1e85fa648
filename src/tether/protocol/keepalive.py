"""The keepalive clock, as a pure state machine both sides run.

Only the agent sends probes, and only when the link has been quiet for
``interval`` seconds: any frame received counts as proof of life, so a busy
link costs no keepalive bytes at all. The server never pings; it expects to
hear *something* at least every ``interval + timeout`` seconds and declares
the link dead otherwise. That bound is what turns a silent link death (no
FIN, no RST) into ConnectionLost.
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    NONE = "none"
    SEND_PING = "send_ping"
    DEAD = "dead"


class Keepalive:
    def __init__(self, interval: float, timeout: float, now: float, *, probing: bool) -> None:
        self.interval = interval
        self.timeout = timeout
        self.probing = probing
        self.last_received = now
        self.ping_sent_at: float | None = None

    def received(self, now: float) -> None:
        self.last_received = now
        self.ping_sent_at = None

    def poll(self, now: float) -> Action:
        """What to do now; call again no later than ``next_deadline()``."""
        # Compare against the very sums next_deadline() returns, so waking at a
        # deadline always finds it due (float rounding could otherwise disagree).
        if now >= self.last_received + self.interval + self.timeout:
            return Action.DEAD
        if self.probing and self.ping_sent_at is None \
                and now >= self.last_received + self.interval:
            self.ping_sent_at = now
            return Action.SEND_PING
        return Action.NONE

    def next_deadline(self) -> float:
        if self.probing and self.ping_sent_at is None:
            return self.last_received + self.interval
        return self.last_received + self.interval + self.timeout
