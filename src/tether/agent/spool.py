"""The on-disk spool: what the agent has started, produced and not yet handed over.

Layout under ``<state>/spool``::

    ledger              one invocation id per line, fsynced before execution
    <invocation_id>/    command.json, script, stdout, stderr, result.json

The ledger is the "never twice" half of exactly-once: an id is written and
fsynced before its script starts, and a delivery of an id already in the
ledger never starts anything. The per-invocation folder is the "never lost"
half: output and result stay there until the server acknowledges the result.

Both are bounded. The server never re-delivers an invocation whose result it
acknowledged, so the ledger is compacted to the ids still spooled plus the
most recent acknowledged ones. Output is capped in total (``cap``): when
finished invocations hold more than that (a long outage with chatty
commands), the oldest lose their output first, and their result says so.
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

_SAFE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
STREAMS = ("stdout", "stderr")
DEFAULT_CAP = 256 * 1024 * 1024
LEDGER_COMPACT_AT = 4096
LEDGER_KEEP_ACKED = 1024


class Spool:
    def __init__(self, root: Path, cap: int = DEFAULT_CAP) -> None:
        self.root = root
        self.cap = cap
        ensure_private_dir(root)
        self._ledger_path = root / "ledger"
        # Insertion-ordered, so compaction keeps the most recent ids.
        self._ledger: dict[str, None] = {}
        if self._ledger_path.exists():
            self._ledger = dict.fromkeys(self._ledger_path.read_text().split())

    def seen(self, invocation_id: str) -> bool:
        return invocation_id in self._ledger

    def folder(self, invocation_id: str) -> Path:
        if not _SAFE_ID.fullmatch(invocation_id):
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
        self._ledger[command.invocation_id] = None
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
        if len(self._ledger) > LEDGER_COMPACT_AT:
            self._compact_ledger()

    def _compact_ledger(self) -> None:
        spooled = set(self.pending())
        acked = [i for i in self._ledger if i not in spooled][-LEDGER_KEEP_ACKED:]
        keep = [i for i in self._ledger if i in spooled or i in set(acked)]
        write_private(self._ledger_path, "".join(i + "\n" for i in keep).encode())
        self._ledger = dict.fromkeys(keep)

    def ledger_size(self) -> int:
        return len(self._ledger)

    def evict_over_cap(self, protect: set[str]) -> list[Result]:
        """Drop the output of the oldest finished invocations until under the cap.

        Returns the rewritten results, which the caller sends so the server
        learns of the loss at once. Running invocations (``protect``) keep theirs.
        """
        pending = self.pending()
        total = sum(self.stream_size(i, s) for i in pending for s in STREAMS)
        evicted: list[Result] = []
        for invocation_id in pending:
            if total <= self.cap:
                break
            result = self.load_result(invocation_id)
            if invocation_id in protect or result is None or result.output_evicted:
                continue
            for stream in STREAMS:
                total -= self.stream_size(invocation_id, stream)
                self.stream_path(invocation_id, stream).unlink(missing_ok=True)
            note = (f"output evicted from the device's spool (over its {self.cap}-byte cap) "
                    "before the server stored it")
            result = dataclasses.replace(
                result, output_evicted=True,
                reason=f"{result.reason}; {note}" if result.reason else note)
            self.save_result(result)
            evicted.append(result)
        return evicted
