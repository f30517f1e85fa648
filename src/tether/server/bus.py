"""How a message for a node reaches the process that holds its connection.

The embedded server is one process, so the in-process bus is a dictionary
lookup. Several replicas will put NATS behind this same interface; nothing
above it changes.
"""

from __future__ import annotations

from typing import Protocol

from tether.protocol.messages import Message
from tether.server.gateway.registry import Registry
from tether.server.sessions.authority import SessionFilter


class SessionReviewer(Protocol):
    """A replica's live sessions (``sessions.manager.SessionManager``)."""

    async def review(self, which: SessionFilter, actor: str) -> dict[str, str]: ...


class Bus(Protocol):
    async def send_to_node(self, node_id: str, message: Message) -> bool: ...
    async def disconnect_node(self, node_id: str, code: int, reason: str) -> None: ...

    async def review_sessions(self, which: SessionFilter, actor: str) -> None:
        """After a change that can take a right away (an operator disabled or its policy
        changed, a token revoked, a node retagged): every replica re-checks its live
        sessions that ``which`` selects and ends those that may no longer go on, each
        with its reason and a ``session end`` audit record naming ``actor``. Over NATS
        this is one message to every replica; each reviews only what it holds."""
        ...


class InProcessBus:
    def __init__(self, registry: Registry, sessions: SessionReviewer | None = None) -> None:
        self.registry, self.sessions = registry, sessions

    async def review_sessions(self, which: SessionFilter, actor: str) -> None:
        if self.sessions is not None:
            await self.sessions.review(which, actor)

    async def send_to_node(self, node_id: str, message: Message) -> bool:
        conn = self.registry.get(node_id)
        return conn is not None and conn.send(message)

    async def disconnect_node(self, node_id: str, code: int, reason: str) -> None:
        conn = self.registry.get(node_id)
        if conn is not None:
            conn.close(code, reason)
