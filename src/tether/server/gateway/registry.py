"""Live agent connections held by this process, and their outgoing queues.

Each connection has one writer task draining a queue, so any coroutine can
``send`` without awaiting the network and frames never interleave. The
registry holds at most one connection per node: a newer connection from the
same node replaces the older one (the older link is usually already dead on a
cellular network, which is why the device dialed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

from starlette.websockets import WebSocket

from tether.protocol.messages import Inventory, Message, encode
from tether.server.access.throttle import AddressCount, BytePacer, TokenBucket
from tether.server.gateway.channels import ChannelTable

log = logging.getLogger(__name__)
_CLOSE = object()
# The kept budgets are swept for full ones when their table passes this (or twice
# what the last sweep kept), so a sweep costs O(1) a disconnect, amortized.
SWEEP_BUDGETS_ABOVE = 1024


class AgentBudget:
    """What one node may still send: messages (``TokenBucket``) and bytes (``BytePacer``).

    Per node, not per connection: a connection shares its node's budget with any
    other link of the node and leaves it in the registry when it ends, so dialing
    again gets no fresh burst (an agent reconnecting after each 1.2 MB inventory
    was processed at 87 MiB/s against a 1 MiB/s budget: issue 12 #12, red team H2).
    A budget refilled to its bursts is the same as a new one, so only spent ones
    need keeping.
    """

    __slots__ = ("bytes", "messages")

    def __init__(self, messages: TokenBucket, bytes_: BytePacer) -> None:
        self.messages = messages
        self.bytes = bytes_

    def full(self, now: float) -> bool:
        return self.messages.full(now) and self.bytes.full(now)


class AgentConnection:
    """One agent's link: ``send`` never waits, and frames leave in order.

    A writer task, and its queue, exist only while something is queued: an idle
    link (most of a fleet, most of the time) holds no task, no coroutine and no
    queue (an empty deque is 600 bytes; slots save the instance dict's 350).
    """

    __slots__ = ("_channels", "_close_args", "_data", "_inventory", "_outbox", "_writer",
                 "budget", "closing", "last_received", "last_received_wall", "node_id",
                 "peer", "protocol", "ws")

    def __init__(self, node_id: str, peer: str | None, ws: WebSocket, protocol: int,
                 budget: AgentBudget) -> None:
        self.node_id = node_id
        self.budget = budget
        self.protocol = protocol
        self.peer = peer
        self.ws = ws
        self.last_received = time.monotonic()
        self.last_received_wall = time.time()
        self.closing = False
        self._outbox: deque[object] | None = None
        # Channel data waits behind control messages: a bulk copy never delays
        # a command or a close. Its size is bounded by the agent's windows. Both it
        # and the channel table exist only once a session uses this link: most of a
        # fleet never has one, and each idle link's memory is a measured target.
        self._data: deque[bytes | str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close_args: tuple[int, str] = (1000, "")
        self._channels: ChannelTable | None = None
        # The digest of the last inventory stored from this link (see inventory_changed).
        self._inventory: bytes | None = None

    @property
    def channels(self) -> ChannelTable:
        if self._channels is None:
            self._channels = ChannelTable(self)
        return self._channels

    def close_channels(self, reason: str) -> None:
        if self._channels is not None:
            self._channels.close_all(reason)

    def inventory_changed(self, inventory: Inventory) -> bytes | None:
        """Its digest if ``inventory`` differs from the last one stored from this link,
        else None: an unchanged one (an agent re-sending it, or flooding it) is not
        written again. Give the digest to ``inventory_stored`` once it is stored."""
        digest = hashlib.sha256(encode(inventory).encode("utf-8")).digest()
        return None if digest == self._inventory else digest

    def inventory_stored(self, digest: bytes) -> None:
        self._inventory = digest

    def received(self) -> None:
        self.last_received = time.monotonic()
        self.last_received_wall = time.time()

    def send(self, message: Message) -> bool:
        if self.closing:
            return False
        self._queue(encode(message))
        return True

    def send_data(self, frame: bytes | Message) -> bool:
        """A packed channel data frame (``tether.protocol.channels.pack_data``), or a
        channel message that must not overtake that channel's data (``eof``, ``close``)."""
        if self.closing:
            return False
        if self._data is None:
            self._data = deque()
        self._data.append(frame if isinstance(frame, bytes) else encode(frame))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self._close_args = (code, reason)
            self._queue(_CLOSE)

    def _queue(self, item: object) -> None:
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(item)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._outbox or self._data:
                if not self._outbox:
                    assert self._data is not None
                    data = self._data.popleft()
                    if isinstance(data, bytes):
                        await self.ws.send_bytes(data)
                    else:
                        await self.ws.send_text(data)
                    continue
                assert self._outbox is not None
                item = self._outbox.popleft()
                if item is _CLOSE:
                    code, reason = self._close_args
                    self._data = None
                    await self.ws.close(code, reason)
                    return
                assert isinstance(item, str)
                await self.ws.send_text(item)
            self._outbox = None  # all sent: an idle link keeps no queue
        except (RuntimeError, OSError) as exc:  # the peer is already gone
            log.debug("writer for %s stopped: %s", self.node_id, exc)
            self.closing = True
            self._outbox = None
            self._data = None

    async def drained(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for what is queued, the close included, to go out."""
        writer = self._writer
        if writer is None or writer.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout)
        except (asyncio.TimeoutError, Exception):
            writer.cancel()


class Registry:
    def __init__(self) -> None:
        self._by_node: dict[str, AgentConnection] = {}
        self._handshakes = AddressCount()  # per source address, not yet authenticated
        # Spent budgets of nodes, kept past their connection until full again. Only
        # authenticated nodes get an entry, so it never holds more than the fleet.
        self._budgets: dict[str, AgentBudget] = {}
        self._sweep_above = SWEEP_BUDGETS_ABOVE

    def budget(self, node_id: str, new: Callable[[], AgentBudget]) -> AgentBudget:
        """The node's budget: its current link's, else the one it left, else ``new()``."""
        current = self._by_node.get(node_id)
        if current is not None:
            return current.budget
        kept = self._budgets.get(node_id)
        return kept if kept is not None else new()

    def keep_budget(self, node_id: str, budget: AgentBudget, now: float) -> None:
        """A link of the node ended (or was refused): keep its budget while spent."""
        if budget.full(now):
            self._budgets.pop(node_id, None)
            return
        self._budgets[node_id] = budget
        if len(self._budgets) > self._sweep_above:
            self._budgets = {k: b for k, b in self._budgets.items() if not b.full(now)}
            self._sweep_above = max(SWEEP_BUDGETS_ABOVE, 2 * len(self._budgets))

    def kept_budgets(self) -> int:
        return len(self._budgets)

    def handshake_started(self, address: str, limit: int) -> bool:
        """Count one; False (not counted) when ``address`` already has ``limit`` going."""
        return self._handshakes.take(address, limit)

    def handshake_ended(self, address: str) -> None:
        self._handshakes.release(address)

    def add(self, conn: AgentConnection) -> AgentConnection | None:
        """Register ``conn``; return the connection it replaces, if any."""
        old = self._by_node.get(conn.node_id)
        self._by_node[conn.node_id] = conn
        return old

    def remove(self, conn: AgentConnection) -> bool:
        """Forget ``conn`` if it is still the node's current connection."""
        if self._by_node.get(conn.node_id) is conn:
            del self._by_node[conn.node_id]
            return True
        return False

    def get(self, node_id: str) -> AgentConnection | None:
        return self._by_node.get(node_id)

    def __iter__(self) -> Iterator[AgentConnection]:
        return iter(list(self._by_node.values()))

    def __len__(self) -> int:
        return len(self._by_node)

    def close_all(self, code: int, reason: str) -> None:
        for conn in self:
            with contextlib.suppress(Exception):
                conn.close(code, reason)
