"""Full command outputs, kept outside the database.

A folder is the embedded default; an S3-compatible store can sit behind the
same small interface later. Writes are positional (``write_at``) so that an
agent re-sending a slice after a reconnect is harmless: the same bytes land
on the same offsets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def write_at(self, key: str, offset: int, data: bytes) -> None: ...
    def size(self, key: str) -> int: ...
    def read(self, key: str, offset: int = 0, length: int = -1) -> bytes: ...


def output_key(command_id: str, node_id: str, stream: str) -> str:
    return f"outputs/{command_id}/{node_id}.{stream}"


class FolderBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, key: str, offset: int = 0, length: int = -1) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""
