"""Small outputs held in memory until their result is stored with them.

Most fleet commands print a line or two. Writing each such stream to a file of
its own cost a file creation (about 0.2 ms on this machine's ext4) per node per
stream, the largest single cost of a 10,000-node fan-out; held here, the bytes
go into the invocation's row in the same group-committed write as its result.

A stream is held while it is contiguous from offset 0 and at most ``limit``
bytes, and while all held streams together stay under ``budget``; anything else
(and a held stream that grows past the limit) goes to the blob store, where a
re-sent slice lands on the same offsets. Nothing held is ever the only copy an
agent has: the agent keeps output and result until the result is acknowledged,
which happens only after the row (with the bytes) is committed.
"""

from __future__ import annotations

from tether.server.blobs import BlobStore

INLINE_LIMIT = 4096
INLINE_BUDGET = 64 * 1024 * 1024


class SmallOutputs:
    def __init__(self, blobs: BlobStore, limit: int = INLINE_LIMIT,
                 budget: int = INLINE_BUDGET) -> None:
        self.blobs = blobs
        self.limit = limit
        self.budget = budget
        self.held_bytes = 0
        self._held: dict[str, bytearray] = {}

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        end = offset + len(data)
        buf = self._held.get(key)
        if buf is None:
            if offset == 0 and end <= self.limit and self.held_bytes + end <= self.budget:
                self._held[key] = bytearray(data)
                self.held_bytes += end
            else:
                self.blobs.write_at(key, offset, data)
        elif end <= self.limit and offset <= len(buf):
            before = len(buf)
            buf[offset:end] = data  # same bytes again, or the continuation
            self.held_bytes += len(buf) - before
        else:
            self.spill(key)
            self.blobs.write_at(key, offset, data)

    def size(self, key: str) -> int:
        buf = self._held.get(key)
        return len(buf) if buf is not None else self.blobs.size(key)

    def holds(self, key: str) -> bool:
        return key in self._held

    def peek(self, key: str) -> bytes | None:
        """The held bytes of a stream still running, for a reader who cannot wait."""
        buf = self._held.get(key)
        return None if buf is None else bytes(buf)

    def take(self, key: str) -> bytes | None:
        """The held bytes, forgotten here: the caller stores them."""
        buf = self._held.pop(key, None)
        if buf is None:
            return None
        self.held_bytes -= len(buf)
        return bytes(buf)

    def spill(self, key: str) -> None:
        """Move held bytes to the blob store (output that outlives its result)."""
        data = self.take(key)
        if data:
            self.blobs.write_at(key, 0, data)
