"""The file side of ``tether cp``, run as a child process with the session user's rights.

The agent usually runs as root; a copy must not. Every file operation of a
copy (open, the partial file, chmod, rename) happens in this child, started
as the same account a shell would get, so an operator can read and write
exactly what that account could. The agent only moves bytes through pipes.

    read PATH OFFSET
        stdout: ``ok SIZE MODE`` (or ``error MESSAGE``), then the file from
        OFFSET to its end; stderr, at the end: the SHA-256 of the whole file.
    write PATH SIZE SHA256 MODE FORCE(0|1)
        stdout: ``ok HELD`` (bytes already in the partial file, where to
        resume) or ``error MESSAGE``; then stdin is the rest of the file; at
        its end stdout gets ``done`` or ``error MESSAGE``.

The partial file (``.NAME.<first 16 hex of the digest>.tether-part``) is named
after the content, so only an attempt to copy the same content resumes it. It
is written only if it is a regular file of ours (never through a symlink), and
the file gets MODE's permission bits minus the umask, never setuid, setgid or
sticky (``tether.partfile``, ``tether.protocol.filemode``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from typing import BinaryIO

from tether.partfile import PartFile, PartRefused

CHUNK = 256 * 1024


class Refused(Exception):
    pass


class Streaming:
    """Once data flows on stdout, an error can only go to stderr."""

    started = False


def _hash_file(f: BinaryIO, limit: int = -1) -> hashlib._Hash:
    digest = hashlib.sha256()
    left = limit
    while left != 0:
        block = f.read(CHUNK if left < 0 else min(CHUNK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block) if left > 0 else 0
    return digest


def read(path: str, offset: int) -> None:
    try:
        f = open(path, "rb")  # noqa: SIM115 - open for the whole process
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}") from None
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{path} is not a regular file")
    if offset > info.st_size:
        raise Refused(f"{path} is shorter ({info.st_size} bytes) than the part already "
                      "copied; it changed: copy again")
    out = sys.stdout.buffer
    out.write(f"ok {info.st_size} {stat.S_IMODE(info.st_mode)}\n".encode())
    out.flush()
    Streaming.started = True
    digest = _hash_file(f, offset)
    for block in iter(lambda: f.read(CHUNK), b""):
        digest.update(block)
        out.write(block)
    out.flush()
    sys.stderr.write(digest.hexdigest() + "\n")


def write(path: str, size: int, expected: str, mode: int, force: bool) -> None:
    """Receive the file into its partial file, check it, give it its mode, rename it.

    The partial file is opened, checked, chmod-ed and renamed by
    ``tether.partfile`` only: never through a symlink or a planted hard link,
    with ``mode`` masked to its permission bits minus our umask.
    """
    target = os.path.abspath(path)
    if not os.path.isabs(path):
        raise Refused(f"{path} is not an absolute path")
    if os.path.isdir(target):
        raise Refused(f"{path} is a directory; name the file")
    if os.path.lexists(target) and not force:
        raise Refused(f"{path} exists on the device; --force replaces it")
    folder, name = os.path.split(target)
    if not os.path.isdir(folder):
        raise Refused(f"{folder} does not exist on the device")
    try:
        part = PartFile.open(folder, f".{name}.{expected[:16]}.tether-part")
    except PartRefused as exc:
        raise Refused(str(exc)) from None
    with part:
        held = part.resume(size)
        out = sys.stdout.buffer
        out.write(f"ok {held}\n".encode())
        out.flush()
        for block in iter(lambda: sys.stdin.buffer.read(CHUNK), b""):
            part.file.write(block)
        got = part.digest()
        if got != expected:
            part.discard()
            raise Refused(f"checksum mismatch on the device (got {got[:16]}..., expected "
                          f"{expected[:16]}...); the partial file was removed")
        try:
            part.install(name, mode)
        except PartRefused as exc:
            raise Refused(str(exc)) from None
    out.write(b"done\n")
    out.flush()


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["read"] and len(argv) == 3:
            read(argv[1], int(argv[2]))
        elif argv[:1] == ["write"] and len(argv) == 6:
            write(argv[1], int(argv[2]), argv[3], int(argv[4]), argv[5] == "1")
        else:
            raise Refused("usage: read PATH OFFSET | write PATH SIZE SHA256 MODE FORCE")
    except (Refused, OSError) as exc:
        message = str(exc) if isinstance(exc, Refused) else f"{exc.strerror or exc}"
        if Streaming.started:
            sys.stderr.write(f"error {message}\n")
        else:
            sys.stdout.buffer.write(f"error {message}\n".encode())
            sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
