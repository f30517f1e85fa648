"""``DATA/audit-anchor``: the newest audit record's signed checkpoint, kept outside the database.

Moved forward after every append, so it must be cheap: a new file renamed over the
old one cost 0.5-0.7 ms on ext4 (the rename makes the kernel write the new file's
data out first) against about 1.5 ms for the append itself. So the file has two
fixed slots of one sector each, and an append overwrites one of them in place
(``pwrite``, about 1 us): slot ``seq % 2``, so the slot written is never the one
holding the previous anchor. A write torn by a crash spoils only its own slot, which
no longer parses (or no longer matches its mac); the other slot, one record behind,
is then the anchor. No fsync: the process dying loses nothing (the page cache
outlives it); a power cut may leave an older anchor, which vouches for fewer
records, never for more than the database had.

More than one process writes the file: the server and ``tether admin recover``
(or two recovers) append to one log with one data folder. So the file, not a
process's memory, is the anchor: every read opens it afresh, and every write
takes an exclusive ``flock`` and first reads the slot it would overwrite, leaving
it alone when it already holds a later record (written by the other process
between our commit and our write). Without that, the server's next append put its
own, lower checkpoint over recover's, and a cut of recover's record went unseen.
Replicas on one PostgreSQL database each have their own data folder, so each file
only ever holds its own server's records.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

from tether.server.access.audit_chain import Checkpoint

SLOT = 512
PAD = b" \n\x00"


class AnchorError(ValueError):
    """The file is not an anchor of this key (edited, or another server's)."""


def _slot(data: bytes) -> Checkpoint | None:
    """One slot's checkpoint; None for an empty or torn slot."""
    text = data.strip(PAD)
    try:
        return Checkpoint.from_dict(json.loads(text)) if text else None
    except ValueError:  # torn (or junk): json's errors are ValueErrors too
        return None


def _slots(data: bytes) -> list[Checkpoint | None]:
    """Each slot's checkpoint; None for an empty or torn slot."""
    return [_slot(data[offset:offset + SLOT]) for offset in (0, SLOT)]


def read_anchor(path: Path, key: bytes) -> Checkpoint | None:
    """The newer checkpoint of the two slots; None if there is no file.

    AnchorError when a slot holds a checkpoint not signed with ``key``, or when the
    file holds no checkpoint at all: both are edits or mix-ups, not torn writes.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    found = [cp for cp in _slots(data) if cp is not None]
    if not found:
        raise AnchorError("it holds no checkpoint")
    if any(not cp.signed_by(key) for cp in found):
        raise AnchorError("it is not signed with DATA/audit-key")
    return max(found, key=lambda cp: cp.seq)


def newest_signed(data: bytes, key: bytes) -> Checkpoint | None:
    """The newer of the slots signed with ``key``; unlike read_anchor, never raises.

    For a server already running: a slot it cannot trust is ignored (its own
    anchor in memory still holds), not a reason to stop appending.
    """
    signed = [cp for cp in _slots(data) if cp is not None and cp.signed_by(key)]
    return max(signed, key=lambda cp: cp.seq, default=None)


def _open(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


class AnchorFile:
    """The anchor file of one data folder, shared by every process that appends.

    Opened afresh for each read and write (about 30 us each, parsing and the HMAC
    included, against 2 ms for an append), so a file replaced or
    recreated by another process is the one read.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self.key = key

    def read(self) -> Checkpoint | None:
        """The newest checkpoint signed with the key now in the file (None: none)."""
        try:
            fd = _open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return newest_signed(os.pread(fd, 2 * SLOT, 0), self.key)
        finally:
            os.close(fd)

    def write(self, checkpoint: Checkpoint) -> bool:
        """Put ``checkpoint`` in its slot, unless the slot holds a later record already.

        False when it was left alone. The flock makes the check and the write one
        step against every other process writing this file.
        """
        body = json.dumps(checkpoint.as_dict(), sort_keys=True).encode("ascii") + b"\n"
        assert len(body) <= SLOT, body
        offset = (checkpoint.seq % 2) * SLOT
        fd = _open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            there = _slot(os.pread(fd, SLOT, offset))
            if there is not None and there.seq > checkpoint.seq and there.signed_by(self.key):
                return False
            os.pwrite(fd, body.ljust(SLOT, b" "), offset)
            return True
        finally:
            os.close(fd)  # releases the flock

    def close(self) -> None:
        """Nothing is held open between writes; kept for the store's shutdown."""
