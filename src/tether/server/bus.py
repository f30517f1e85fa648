"""How a message for a node reaches the process that holds its connection.

The embedded server is one process, so the in-process bus is a dictionary
lookup. Several replicas will put NATS behind this same interface; nothing
above it changes.
"""

from __future__ import annotations

from typing import Protocol

from tether.protocol.messages import Message
from tether.server.gateway.registry import Registry


class Bus(Protocol):
    async def send_to_node(self, node_id: str, message: Message) -> bool: ...
    async def disconnect_node(self, node_id: str, code: int, reason: str) -> None: ...


class InProcessBus:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def send_to_node(self, node_id: str, message: Message) -> bool:
        conn = self.registry.get(node_id)
        return conn is not None and conn.send(message)

    async def disconnect_node(self, node_id: str, code: int, reason: str) -> None:
        conn = self.registry.get(node_id)
        if conn is not None:
            conn.close(code, reason)
