"""Full command outputs, kept outside the database.

A folder is the embedded default; an S3-compatible store can sit behind the
same small interface later. Writes are positional (``write_at``) so that an
agent re-sending a slice after a reconnect is harmless: the same bytes land
on the same offsets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def write_at(self, key: str, offset: int, data: bytes) -> None: ...
    def size(self, key: str) -> int: ...
    def read(self, key: str, offset: int = 0, length: int = -1) -> bytes: ...


def output_key(command_id: str, node_id: str, stream: str) -> str:
    return f"outputs/{command_id}/{node_id}.{stream}"


_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class FolderBlobStore:
    """One file per key under ``root``.

    Keys are checked by their spelling (segments of letters, digits, ``._-``, none
    starting with a dot) rather than by resolving the path: ``realpath`` costs an
    ``lstat`` per component, and a 10,000-node fan-out resolved 40,000 paths.
    For the same reason a folder is made only when opening a file in it fails.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._root = str(root)

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not all(_SEGMENT.fullmatch(p) for p in parts):
            raise ValueError(f"not a blob key: {key!r}")
        return os.path.join(self._root, *parts)

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return 0

    def read(self, key: str, offset: int = 0, length: int = -1) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""
