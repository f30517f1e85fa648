"""Live sessions: who opened what on which node, for how long, and how each ended.

A session is one operator's shell, port forward or file copy on one node. It
starts with a row and an audit record, carries one or more channels over the
node's link, and ends exactly once, with a second audit record naming why:
the shell exited, the operator or another one terminated it, it sat idle, it
reached its maximum duration, or the link or the server went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tether.protocol.channels import CHANNELS_PROTOCOL
from tether.server.blobs import BlobStore
from tether.server.gateway.channels import ServerChannel
from tether.server.gateway.registry import Registry
from tether.server.sessions.recording import Recorder, recording_key
from tether.server.store import Store
from tether.server.store.sessions import FAILED, TERMINATED, Row, new_session_id

log = logging.getLogger(__name__)
WATCH_INTERVAL = 1.0


class SessionError(Exception):
    """A session that cannot start or go on; ``code`` is the API's error name."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        self.code, self.status = code, status
        super().__init__(message)


@dataclass
class LiveSession:
    row: Row
    recorder: Recorder | None
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    channels: set[ServerChannel] = field(default_factory=set)
    bytes_to_node: int = 0
    bytes_from_node: int = 0
    ended: bool = False

    @property
    def session_id(self) -> str:
        return str(self.row["session_id"])

    @property
    def kind(self) -> str:
        return str(self.row["kind"])

    def active(self, to_node: int = 0, from_node: int = 0) -> None:
        self.last_activity = time.monotonic()
        self.bytes_to_node += to_node
        self.bytes_from_node += from_node


class SessionManager:
    def __init__(self, store: Store, registry: Registry, blobs: BlobStore, *,
                 idle_timeout: float, max_duration: float, record_input: bool) -> None:
        self.store, self.registry, self.blobs = store, registry, blobs
        self.idle_timeout, self.max_duration = idle_timeout, max_duration
        self.record_input = record_input
        self.live: dict[str, LiveSession] = {}
        self._watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        for row in await self.store.sessions.end_all_open("the server restarted"):
            await self._audit_end(row, "server", "the server restarted", None)
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for live in list(self.live.values()):
            await self.end(live, TERMINATED, "the server stopped", actor="server")

    # -- lifecycle -------------------------------------------------------------

    async def start(self, *, node_id: str, operator: str, kind: str,
                    target: dict[str, Any]) -> LiveSession:
        """The session's start is audited by its API call (POST /api/v1/sessions)."""
        conn = self.registry.get(node_id)
        if conn is None:
            raise SessionError("node_offline", f"{node_id} is not connected")
        if conn.protocol < CHANNELS_PROTOCOL:
            raise SessionError("agent_too_old", f"the agent on {node_id} speaks protocol "
                               f"{conn.protocol}; sessions need {CHANNELS_PROTOCOL} or newer: "
                               "upgrade the agent")
        session_id = new_session_id(operator)
        recorder = None
        if kind == "shell":
            recorder = Recorder(self.blobs, recording_key(session_id),
                                int(target.get("cols") or 80), int(target.get("rows") or 24),
                                str(target.get("term") or "xterm-256color"), self.record_input)
        row = await self.store.sessions.create(
            session_id=session_id, node_id=node_id, operator=operator, kind=kind,
            target=target, recording=recorder.key if recorder else None)
        live = LiveSession(row, recorder)
        self.live[live.session_id] = live
        return live

    def channel(self, live: LiveSession, kind: str, **params: Any) -> ServerChannel:
        """A new channel of the session on its node's current link."""
        conn = self.registry.get(live.row["node_id"])
        if conn is None or live.ended:
            raise SessionError("node_offline", f"{live.row['node_id']} is not connected")
        channel = conn.channels.open(kind, **params)
        live.channels.add(channel)
        return channel

    async def end(self, live: LiveSession, status: str, reason: str, *, actor: str,
                  exit_code: int | None = None) -> None:
        """End a session once: close its channels, write its row, audit it."""
        if live.ended:
            return
        live.ended = True
        self.live.pop(live.session_id, None)
        for channel in list(live.channels):
            channel.close(reason)
        await self.store.sessions.end(live.session_id, status=status, reason=reason,
                                      exit_code=exit_code, bytes_to_node=live.bytes_to_node,
                                      bytes_from_node=live.bytes_from_node)
        row = dict(live.row, bytes_to_node=live.bytes_to_node,
                   bytes_from_node=live.bytes_from_node)
        await self._audit_end(row, actor, reason, exit_code, status)

    async def _audit_end(self, row: Row, actor: str, reason: str, exit_code: int | None,
                         status: str = TERMINATED) -> None:
        with contextlib.suppress(Exception):
            await self.store.audit.append(
                actor=actor, action="session end", outcome="ok" if status != FAILED else "error",
                target=row["node_id"], detail={
                    "session_id": row["session_id"], "kind": row["kind"],
                    "operator": row["operator"], "reason": reason, "exit_code": exit_code,
                    "recording": row.get("recording"),
                    "bytes_to_node": row.get("bytes_to_node", 0),
                    "bytes_from_node": row.get("bytes_from_node", 0)})

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for live in list(self.live.values()):
                try:
                    if now - live.started > self.max_duration:
                        await self.end(live, TERMINATED, "reached the maximum duration of "
                                       f"{self.max_duration:g} s", actor="server")
                    elif now - live.last_activity > self.idle_timeout:
                        await self.end(live, TERMINATED,
                                       f"idle for {self.idle_timeout:g} s", actor="server")
                except Exception:
                    log.exception("could not end session %s", live.session_id)
