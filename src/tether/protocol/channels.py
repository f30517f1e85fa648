"""Channels inside the agent's one connection: data frames and credit windows.

Protocol 4 carries sessions (a shell, a tunnelled TCP connection, a file copy)
as numbered channels beside the control messages. Channel data travels in
binary WebSocket frames: a 4-byte big-endian channel number, then the bytes,
so a bulk copy pays no base64 and no JSON.

Flow control is credit based, per channel and per direction, as in SSH: a
receiver announces a window (in ``open``/``opened``) and a sender never has
more than that many bytes unacknowledged; the receiver hands credit back
(``window``) only after it has passed the bytes on. Nobody therefore buffers
more than one window per channel, and a slow consumer of one channel stalls
that channel alone, never the control messages or another channel.

Everything here is pure: the agent and the server drive these objects from
their own I/O.
"""

from __future__ import annotations

import struct

from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.messages import MAX_CHANNEL, MAX_WINDOW

DEFAULT_WINDOW = 256 * 1024
# Bulk channels (tunnels, copies) get more: a window caps a channel at window / RTT,
# and a cellular RTT of 200 ms held a 256 KiB window to 1.25 MiB/s (docs/benchmarks.md).
BULK_WINDOW = 2 * 1024 * 1024
MAX_CHUNK = 32 * 1024  # bytes of channel data in one frame
_HEADER = struct.Struct(">I")
CHANNELS_PROTOCOL = 4  # the first protocol version with channels


def window_for(kind: str) -> int:
    """The receive window each side announces for a channel of ``kind``.

    A shell moves keystrokes and screens: a small window keeps Ctrl-C close
    behind a flood of output. Everything else is bulk.
    """
    return DEFAULT_WINDOW if kind == "shell" else BULK_WINDOW


def pack_data(channel: int, data: bytes) -> bytes:
    """One binary frame of channel data."""
    if not 0 < channel <= MAX_CHANNEL:
        raise ValueError(f"channel must be 1..{MAX_CHANNEL}")
    if not 0 < len(data) <= MAX_CHUNK:
        raise ValueError(f"a data frame carries 1..{MAX_CHUNK} bytes")
    return _HEADER.pack(channel) + data


def unpack_data(frame: bytes) -> tuple[int, bytes]:
    """The channel and the bytes of a binary frame, or the protocol error it is."""
    if len(frame) <= _HEADER.size:
        raise ProtocolError(CloseCode.MALFORMED, "a data frame needs a channel and data")
    if len(frame) > _HEADER.size + MAX_CHUNK:
        raise ProtocolError(CloseCode.MALFORMED,
                            f"a data frame carries at most {MAX_CHUNK} bytes")
    (channel,) = _HEADER.unpack_from(frame)
    if channel == 0:
        raise ProtocolError(CloseCode.MALFORMED, "channel 0 does not exist")
    return channel, frame[_HEADER.size:]


class SendWindow:
    """How much this side may still send on one channel."""

    def __init__(self, initial: int) -> None:
        self.available = initial

    def grant(self, credit: int) -> None:
        self.available += credit

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` bytes (and at most one frame) that may go now; 0 means wait."""
        n = min(wanted, self.available, MAX_CHUNK)
        self.available -= n
        return n


class ReceiveWindow:
    """What the peer may send on one channel, and when to give it more.

    Credit goes back in batches of at least half a window, so a steady stream
    costs one ``window`` message per half window, not one per frame.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"a window is 0..{MAX_WINDOW} bytes")
        self.size = size
        self.outstanding = 0  # received, not yet credited back
        self._consumed = 0

    @property
    def remaining(self) -> int:
        return self.size - self.outstanding

    def received(self, n: int) -> None:
        """Count bytes that arrived; more than the window is the peer's fault."""
        if n > self.remaining:
            raise ProtocolError(CloseCode.FLOW_CONTROL,
                                f"{n} bytes sent on a window of {self.remaining}")
        self.outstanding += n

    def consumed(self, n: int) -> int:
        """Bytes passed on; returns the credit to send back now (0: not yet)."""
        if not 0 <= self._consumed + n <= self.outstanding:
            raise ValueError(f"consumed {n} bytes of {self.outstanding - self._consumed} held")
        self._consumed += n
        if self._consumed * 2 >= self.size:
            credit, self._consumed = self._consumed, 0
            self.outstanding -= credit
            return credit
        return 0
