"""What a copied file may become: its mode, and which partial file a copy may write into.

A copy's mode comes from the far end: for ``tether cp NODE:PATH LOCAL`` it is
whatever the device put in ``opened``; for an upload it is what the operator's
request said. Either way it is input, not an instruction. A hostile device
answered ``opened`` with mode 0o6777 and the CLI left a setuid, world-writable
file on the operator's machine. So a copy keeps only the permission bits
(``mode & 0o777``), takes the receiver's umask off them, and never sets
setuid, setgid or sticky; nothing else in ``src/`` gives a file a mode that is
not a literal (``tests/unit/test_filemode.py`` walks the code to hold that).

And a partial file is only written if it is what the copy itself would have
created: a regular file, owned by the account the copy runs as, with one link.
A symlink or a hard link planted under the part file's name by another local
user would otherwise make the copy write (and chmod) the file it points at.

Pure functions, shared by the CLI (downloads) and the agent's copy helper
(uploads); the I/O around them is ``tether.partfile``. Standard library only.
"""

from __future__ import annotations

import stat
from typing import Optional

__all__ = ["NEW_FILE_MODE", "PERMISSION_BITS", "copied_mode", "part_problem"]

# The bits a copy may carry over: read, write and execute for owner, group, others.
PERMISSION_BITS = 0o777
# What a file gets when the far end named no mode, before the umask: what ``cp`` and
# ``open()`` give a new file.
NEW_FILE_MODE = 0o666


def copied_mode(sent: Optional[int], umask: int) -> int:
    """The mode to give a copied file: the sent permission bits minus the local umask.

    ``sent`` is the far end's mode, or None when it named none (then a new
    file's ``0o666``). Anything that is not a non-negative int counts as none:
    the value crossed a network. Setuid, setgid and sticky (``0o7000``) and
    any higher bits are always dropped, as is every bit the umask withholds.
    """
    if not isinstance(sent, int) or isinstance(sent, bool) or sent < 0:
        sent = NEW_FILE_MODE
    return sent & PERMISSION_BITS & ~umask


def part_problem(st_mode: int, st_uid: int, st_nlink: int, uid: int) -> Optional[str]:
    """Why a copy must not write into this partial file (from its ``fstat``), or None.

    Only what the copy itself would have made is acceptable: a regular file,
    owned by ``uid`` (the account the copy runs as), with exactly one link (a
    hard link planted by someone else would share its inode with their target).
    """
    if stat.S_ISLNK(st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st_mode):
        return "is not a regular file"
    if st_uid != uid:
        return f"is owned by uid {st_uid}, not by the copy's account (uid {uid})"
    if st_nlink != 1:
        return f"has {st_nlink} links (a partial file has one)"
    return None
