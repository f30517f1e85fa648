"""The partial file of a copy, on whichever end receives it: opened safely, installed in place.

``tether cp`` writes into a partial file beside the target and renames it into
place once the whole file's SHA-256 matched; the device's copy helper does it
for an upload, the CLI for a download. Both ends write in folders other people
may write in too (``/tmp``, a shared directory), often with more rights than
those people (the agent usually runs as root). A local user who plants a
symlink or hard link under the partial file's name must not get the copy to
write, chmod or rename the file it points at. So, here and only here:

- the folder is opened once and everything after happens relative to that
  descriptor, so a folder swapped for a symlink midway changes nothing;
- the partial file is opened with ``O_NOFOLLOW`` (and ``O_CREAT | O_EXCL`` when
  it is new), then checked on the descriptor (``fstat``): a regular file, owned
  by the copy's account, one link (``filemode.part_problem``);
- the mode is set with ``fchmod`` on the descriptor, masked by
  ``filemode.copied_mode`` (never setuid, setgid or sticky; minus the umask);
- the rename stays in the same folder (a bare name to a bare name), and only
  if the name still holds the file we wrote.

Standard library only, Python 3.9: the agent imports it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from types import TracebackType
from typing import BinaryIO, Optional

from tether.protocol.filemode import copied_mode, part_problem

__all__ = ["PartFile", "PartRefused", "current_umask"]

CHUNK = 1024 * 1024
# No symlink followed, no controlling terminal taken, no wait on a FIFO: whatever is
# there is opened only to be looked at (``fstat``) before a byte is written.
_OPEN_FLAGS = (os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
               | getattr(os, "O_CLOEXEC", 0))
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class PartRefused(Exception):
    """The copy cannot use this partial file or folder; the message says which and why."""


def current_umask() -> int:
    """This process's umask, read without changing it where the system allows.

    Linux shows it in ``/proc/self/status`` (since 4.7); elsewhere the only way
    is to set it and set it back, harmless in the single-threaded CLI and helper.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _open_part(folder: str, dir_fd: int, name: str) -> int:
    """The descriptor of an existing acceptable part file, or of a new one."""
    path = os.path.join(folder, name)
    refuse = (f"; a copy writes only into a partial file it made itself: remove {path} "
              "(someone else may have put it there) and copy again")
    for _ in range(3):  # a name that appears between "not there" and O_EXCL is looked at anew
        try:
            there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None:  # looked at before it is opened (a device, a FIFO), and after
            problem = part_problem(there.st_mode, there.st_uid, there.st_nlink, os.geteuid())
            if problem is not None:
                raise PartRefused(f"{path} {problem}{refuse}")
        try:
            if there is None:
                fd = os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            else:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except (FileExistsError, FileNotFoundError):
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PartRefused(f"{path} is a symbolic link{refuse}") from None
            raise PartRefused(f"cannot write {path}: {exc.strerror}") from None
        info = os.fstat(fd)
        problem = part_problem(info.st_mode, info.st_uid, info.st_nlink, os.geteuid())
        if problem is not None:
            os.close(fd)
            raise PartRefused(f"{path} {problem}{refuse}")
        return fd
    raise PartRefused(f"{path} keeps appearing and disappearing{refuse}")


class PartFile:
    """One copy's partial file, open for reading and writing, in its open folder.

    ``held`` is what it held when opened: where a resumed copy starts. Use as a
    context manager; ``install`` or ``discard`` ends it, ``close`` leaves the
    file for a later attempt.
    """

    def __init__(self, folder: str, dir_fd: int, name: str, fd: int) -> None:
        self.folder, self.dir_fd, self.name = folder, dir_fd, name
        self.file: BinaryIO = os.fdopen(fd, "r+b")
        self.held = os.fstat(fd).st_size
        self._closed = False

    @classmethod
    def open(cls, folder: str, name: str) -> PartFile:
        """Open (or create) ``folder/name``; refused if it is not what a copy would make."""
        if not name or "/" in name or name in (".", ".."):
            raise PartRefused(f"{name!r} is not a file name")
        try:
            dir_fd = os.open(folder, _DIR_FLAGS)
        except OSError as exc:
            raise PartRefused(f"cannot write in {folder}: {exc.strerror}") from None
        try:
            return cls(folder, dir_fd, name, _open_part(folder, dir_fd, name))
        except BaseException:
            os.close(dir_fd)
            raise

    def resume(self, size: int) -> int:
        """Where a copy of ``size`` bytes resumes: after what is held, or from the start
        (emptied) when more is held than the whole file has; ``file`` is put there."""
        held = self.held
        if held > size:
            self.file.truncate(0)
            held = 0
        self.file.seek(held)
        return held

    @property
    def path(self) -> str:
        return os.path.join(self.folder, self.name)

    def size(self) -> int:
        """What it holds now (after writes through ``file``, once flushed)."""
        self.file.flush()
        return os.fstat(self.file.fileno()).st_size

    def digest(self) -> str:
        """SHA-256 of everything it holds, read through the descriptor."""
        self.file.flush()
        self.file.seek(0)
        h = hashlib.sha256()
        for block in iter(lambda: self.file.read(CHUNK), b""):
            h.update(block)
        return h.hexdigest()

    def _still_ours(self) -> bool:
        """Whether the name in the folder still holds the file we wrote."""
        try:
            there = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(self.file.fileno())
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def install(self, target: str, mode: Optional[int]) -> None:
        """Give it its (masked) mode and rename it to ``target`` in the same folder."""
        if not target or "/" in target or target in (".", ".."):
            raise PartRefused(f"{target!r} is not a file name in {self.folder}")
        self.file.flush()
        fd = self.file.fileno()
        os.fsync(fd)
        os.fchmod(fd, copied_mode(mode, current_umask()))
        if not self._still_ours():
            raise PartRefused(f"{self.path} was replaced during the copy; nothing was "
                              "installed")
        os.replace(self.name, target, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        with contextlib.suppress(OSError):  # not every system syncs a directory
            os.fsync(self.dir_fd)  # the rename survives a power cut
        self.close()

    def discard(self) -> None:
        """Remove it (a checksum mismatch: its content cannot be resumed)."""
        if self._still_ours():
            os.unlink(self.name, dir_fd=self.dir_fd)
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.file.close()
            os.close(self.dir_fd)

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()
