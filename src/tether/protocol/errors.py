"""Close codes and the one exception the protocol raises.

Every way a peer can misbehave maps to a WebSocket close code in the private
range (4000-4999) and a human-readable reason, so an operator reading an agent
log or a server log sees *why* a connection ended without a packet capture.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    MALFORMED = 4000
    UNKNOWN_TYPE = 4001
    UNSUPPORTED_VERSION = 4002
    AUTH_FAILED = 4003
    DEREGISTERED = 4004
    REPLACED = 4005
    KEEPALIVE_TIMEOUT = 4006
    UNEXPECTED = 4007
    RATE_LIMITED = 4008
    FLOW_CONTROL = 4009  # more channel data than the window allowed

    @property
    def retryable(self) -> bool:
        """Whether an agent should dial again after being closed with this code.

        Authentication failures and revoked credentials will not get better by
        retrying; everything else (restarts, timeouts, replaced connections) will.
        """
        return self not in (CloseCode.AUTH_FAILED, CloseCode.DEREGISTERED,
                            CloseCode.UNSUPPORTED_VERSION)


class ProtocolError(Exception):
    """A frame the receiver cannot accept; carries the close code to send."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        # WebSocket close reasons are limited to 123 bytes of UTF-8.
        self.code = code
        self.reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        super().__init__(f"{code.name} ({int(code)}): {self.reason}")
