"""The keepalive clock, as a pure state machine both sides run.

Only the agent probes, and only when the link has been quiet: a busy link
costs no keepalive bytes at all. The server never probes; it expects to hear
*something* at least every ``interval + timeout`` seconds and declares the
link dead otherwise. That bound is what turns a silent link death (no FIN, no
RST) into ConnectionLost.

How the agent learns that the link died differs by protocol version:

- Protocol 1 (``answered=True``): the agent pings after ``interval`` seconds
  without *receiving* anything, the server answers with a pong, and the agent
  gives up ``interval + timeout`` after the last frame it received.
- Protocol 2 (``answered=False``): the agent pings after ``interval`` seconds
  without *sending* anything, and nobody answers at the application level.
  The server's TCP acknowledgement is the answer: the agent sets
  TCP_USER_TIMEOUT to ``timeout``, so its kernel drops the connection when a
  ping stays unacknowledged that long. One small frame and one bare ACK per
  interval is within 20 % of the cheapest possible TCP keepalive exchange,
  where a ping/pong pair costs about 1.8 times it (docs/benchmarks.md).
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    NONE = "none"
    SEND_PING = "send_ping"
    DEAD = "dead"


class Keepalive:
    def __init__(self, interval: float, timeout: float, now: float, *, probing: bool,
                 answered: bool = True) -> None:
        self.interval = interval
        self.timeout = timeout
        self.probing = probing
        self.answered = answered
        self.last_received = now
        self.last_sent = now
        self.ping_sent_at: float | None = None

    def received(self, now: float) -> None:
        self.last_received = now
        self.ping_sent_at = None

    def sent(self, now: float) -> None:
        self.last_sent = now

    def poll(self, now: float) -> Action:
        """What to do now; call again no later than ``next_deadline()``."""
        if not self.answered:
            # Compare against the very sum next_deadline() returns, so waking at a
            # deadline always finds it due (float rounding could otherwise disagree).
            if self.probing and now >= self.last_sent + self.interval:
                self.last_sent = now
                return Action.SEND_PING
            if not self.probing and now >= self.last_received + self.interval + self.timeout:
                return Action.DEAD
            return Action.NONE
        if now >= self.last_received + self.interval + self.timeout:
            return Action.DEAD
        if self.probing and self.ping_sent_at is None \
                and now >= self.last_received + self.interval:
            self.ping_sent_at = now
            return Action.SEND_PING
        return Action.NONE

    def next_deadline(self) -> float:
        if not self.answered:
            if self.probing:
                return self.last_sent + self.interval
            return self.last_received + self.interval + self.timeout
        if self.probing and self.ping_sent_at is None:
            return self.last_received + self.interval
        return self.last_received + self.interval + self.timeout
