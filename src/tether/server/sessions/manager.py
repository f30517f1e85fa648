"""Live sessions: who opened what on which node, for how long, and how each ended.

A session is one operator's shell, port forward or file copy on one node. It
starts with a row and an audit record, carries one or more channels over the
node's link, and ends exactly once, with a second audit record naming why:
the shell exited, the operator or another one terminated it, it sat idle, it
reached its maximum duration, the link or the server went away, or what it
rested on was taken away: its operator disabled, its token revoked or expired,
the action no longer allowed on the node (``authority.py`` says which; the
manager asks on every new stream, when the bus reports a change, and every
``REVIEW_INTERVAL`` seconds as a safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tether.protocol.channels import CHANNELS_PROTOCOL
from tether.server.access.policy import Node
from tether.server.blobs import BlobStore
from tether.server.gateway.channels import ServerChannel
from tether.server.gateway.registry import Registry
from tether.server.sessions.authority import (
    EXPIRED,
    SESSION_ENDED,
    Grant,
    SessionFilter,
    actions_of,
    expiry_of,
    why_end,
)
from tether.server.sessions.recording import Recorder, recording_key
from tether.server.store import Store
from tether.server.store.sessions import FAILED, TERMINATED, Row, new_session_id

log = logging.getLogger(__name__)
WATCH_INTERVAL = 1.0
# The safety net under the hooks (disable, revoke, policy, retag): two small queries
# (the live sessions' tokens, their nodes' tags) this often while sessions are live.
REVIEW_INTERVAL = 10.0


class SessionError(Exception):
    """A session that cannot start or go on; ``code`` is the API's error name."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        self.code, self.status = code, status
        super().__init__(message)


@dataclass
class LiveSession:
    row: Row
    recorder: Recorder | None
    token_id: str                # the token it was opened with
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    # Each open channel, with the token of the stream carrying it.
    channels: dict[ServerChannel, str] = field(default_factory=dict)
    bytes_to_node: int = 0
    bytes_from_node: int = 0
    ended: bool = False
    end_reason: str | None = None
    expires_at: float | None = None  # when the first of its tokens expires (wall clock)

    @property
    def session_id(self) -> str:
        return str(self.row["session_id"])

    @property
    def kind(self) -> str:
        return str(self.row["kind"])

    @property
    def node_id(self) -> str:
        return str(self.row["node_id"])

    @property
    def operator(self) -> str:
        return str(self.row["operator"])

    @property
    def token_ids(self) -> set[str]:
        return {self.token_id, *self.channels.values()}

    def active(self, to_node: int = 0, from_node: int = 0) -> None:
        self.last_activity = time.monotonic()
        self.bytes_to_node += to_node
        self.bytes_from_node += from_node


class SessionManager:
    def __init__(self, store: Store, registry: Registry, blobs: BlobStore, *,
                 idle_timeout: float, max_duration: float, record_input: bool,
                 review_interval: float = REVIEW_INTERVAL) -> None:
        self.store, self.registry, self.blobs = store, registry, blobs
        self.idle_timeout, self.max_duration = idle_timeout, max_duration
        self.review_interval = review_interval
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

    async def start(self, *, node_id: str, operator: str, token_id: str, kind: str,
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
        live = LiveSession(row, recorder, token_id)
        self.live[live.session_id] = live
        # Also learns when its token expires; a revoke that raced the API's check ends it.
        reason = await self._recheck([live], actor="server")
        if reason:
            raise SessionError(SESSION_ENDED, reason[live.session_id], 403)
        return live

    async def channel(self, live: LiveSession, kind: str, token_id: str,
                      **params: Any) -> ServerChannel:
        """A new channel of the session on its node's current link, for a stream
        authenticated with ``token_id``: the one way to one, so every new stream (every
        connection of a forward) is checked against the store as it is now."""
        if not live.ended:
            await self._recheck([live], actor="server", extra_token=token_id)
        if live.ended:
            raise SessionError(SESSION_ENDED, f"session {live.session_id} ended: "
                               f"{live.end_reason}", 403)
        conn = self.registry.get(live.node_id)
        if conn is None:
            raise SessionError("node_offline", f"{live.node_id} is not connected")
        channel = conn.channels.open(kind, **params)
        live.channels[channel] = token_id
        return channel

    # -- what a session rests on -------------------------------------------------

    async def review(self, which: SessionFilter, actor: str) -> dict[str, str]:
        """End the live sessions ``which`` selects that may no longer go on.

        What the bus calls after a change that can take a right away (``actor`` made
        it), and the watchdog every ``review_interval``. Returns {session id: reason}
        of those ended. Never raises: the next review tries again.
        """
        concerned = [live for live in list(self.live.values()) if not live.ended
                     and which.matches(live.operator, live.node_id, live.token_ids)]
        try:
            return await self._recheck(concerned, actor=actor)
        except Exception:
            log.exception("could not review %d live sessions", len(concerned))
            return {}

    async def _recheck(self, concerned: list[LiveSession], *, actor: str,
                       extra_token: str | None = None) -> dict[str, str]:
        if not concerned:
            return {}
        tokens = {t for live in concerned for t in live.token_ids}
        if extra_token is not None:
            tokens.add(extra_token)
        rows = await self.store.sessions.grants(sorted(tokens))
        grants = {t: Grant.from_row(r) for t, r in rows.items()}
        tags = await self.store.tags_of(sorted({live.node_id for live in concerned}))
        now = time.time()
        ended: dict[str, str] = {}
        for live in concerned:
            mine = live.token_ids | ({extra_token} if extra_token else set())
            held = [grants.get(t) for t in sorted(mine)]
            live.expires_at = expiry_of(held)
            reason = why_end(live.operator, Node(live.node_id, tags.get(live.node_id, {})),
                             actions_of(live.kind, live.row["target"]), held, now)
            if reason is not None and not live.ended:
                await self.end(live, TERMINATED, reason, actor=actor)
                ended[live.session_id] = reason
        return ended

    async def end(self, live: LiveSession, status: str, reason: str, *, actor: str,
                  exit_code: int | None = None) -> None:
        """End a session once: close its channels, write its row, audit it."""
        if live.ended:
            return
        live.ended, live.end_reason = True, reason
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
        last_review = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now, wall = time.monotonic(), time.time()
            if now - last_review >= self.review_interval:
                last_review = now
                await self.review(SessionFilter(), actor="server")
            for live in list(self.live.values()):
                try:
                    if live.expires_at is not None and wall >= live.expires_at:
                        await self.end(live, TERMINATED, EXPIRED, actor="server")
                    elif now - live.started > self.max_duration:
                        await self.end(live, TERMINATED, "reached the maximum duration of "
                                       f"{self.max_duration:g} s", actor="server")
                    elif now - live.last_activity > self.idle_timeout:
                        await self.end(live, TERMINATED,
                                       f"idle for {self.idle_timeout:g} s", actor="server")
                except Exception:
                    log.exception("could not end session %s", live.session_id)
