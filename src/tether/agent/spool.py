"""The on-disk spool: what the agent has started, produced and not yet handed over.

Layout under ``<state>/spool``::

    ledger              one invocation id per line, fsynced before execution
    <invocation_id>/    command.json, script, stdout, stderr, result.json

The ledger is the "never twice" half of exactly-once: an id is written and
fsynced before its script starts, and a delivery of an id already in the
ledger never starts anything. The per-invocation folder is the "never lost"
half: output and result stay there until the server acknowledges the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from tether.agent.state import ensure_private_dir, write_private
from tether.protocol.messages import Command, Result

_SAFE_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
STREAMS = ("stdout", "stderr")


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        ensure_private_dir(root)
        self._ledger_path = root / "ledger"
        self._ledger: set[str] = set()
        if self._ledger_path.exists():
            self._ledger = set(self._ledger_path.read_text().split())

    def seen(self, invocation_id: str) -> bool:
        return invocation_id in self._ledger

    def folder(self, invocation_id: str) -> Path:
        if not _SAFE_ID.match(invocation_id):
            raise ValueError(f"unsafe invocation id {invocation_id[:80]!r}")
        return self.root / invocation_id

    def record(self, command: Command) -> Path:
        """Durably note that ``command`` is about to run, before it runs."""
        folder = self.folder(command.invocation_id)
        ensure_private_dir(folder)
        write_private(folder / "command.json",
                      json.dumps(dataclasses.asdict(command)).encode())
        fd = os.open(self._ledger_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (command.invocation_id + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._ledger.add(command.invocation_id)
        return folder

    def stream_path(self, invocation_id: str, stream: str) -> Path:
        return self.folder(invocation_id) / stream

    def stream_size(self, invocation_id: str, stream: str) -> int:
        try:
            return self.stream_path(invocation_id, stream).stat().st_size
        except FileNotFoundError:
            return 0

    def read_stream(self, invocation_id: str, stream: str, offset: int, length: int) -> bytes:
        try:
            with self.stream_path(invocation_id, stream).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""

    def save_result(self, result: Result) -> None:
        write_private(self.folder(result.invocation_id) / "result.json",
                      json.dumps(dataclasses.asdict(result)).encode())

    def load_result(self, invocation_id: str) -> Optional[Result]:
        try:
            body = json.loads((self.folder(invocation_id) / "result.json").read_text())
        except FileNotFoundError:
            return None
        return Result(**body)

    def unfinished(self) -> Iterator[str]:
        """Invocations started in an earlier life of the agent that never got a result."""
        for invocation_id in self.pending():
            if not (self.folder(invocation_id) / "result.json").exists():
                yield invocation_id

    def pending(self) -> list[str]:
        """Every invocation whose result the server has not acknowledged, oldest first."""
        folders = [p for p in self.root.iterdir()
                   if p.is_dir() and (p / "command.json").exists()]
        folders.sort(key=lambda p: (p / "command.json").stat().st_mtime)
        return [p.name for p in folders]

    def forget(self, invocation_id: str) -> None:
        """The server has the result: drop output and result, keep the ledger line."""
        shutil.rmtree(self.folder(invocation_id), ignore_errors=True)
