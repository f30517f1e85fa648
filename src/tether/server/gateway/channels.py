"""The server's side of the channels in one agent connection (protocol 4).

A ``ServerChannel`` is the agent half of a relay: ``send`` goes to the agent
no faster than its credit allows, and what the agent sends waits in
``inbox`` (at most one window, by the protocol) until the operator side has
passed it on and calls ``consumed``, which is when the agent gets its credit
back. A slow operator therefore slows its own channel and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Union

from tether.protocol.channels import ReceiveWindow, SendWindow, pack_data, window_for
from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.messages import Close, Eof, Message, Open, Opened, Resize, Window

if TYPE_CHECKING:
    from tether.server.gateway.registry import AgentConnection

Incoming = Union[bytes, Eof, Close]


class ServerChannel:
    def __init__(self, table: ChannelTable, number: int, kind: str) -> None:
        self.table, self.number, self.kind = table, number, kind
        self.opened: asyncio.Future[Union[Opened, Close]] = \
            asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        self.receive_window = ReceiveWindow(window_for(kind))
        self.send_window = SendWindow(0)
        self._credit = asyncio.Event()
        self.closed = False

    async def send(self, data: bytes) -> None:
        """To the agent, in frames, each only once the agent has room for it."""
        view = memoryview(data)
        while view:
            if self.closed:
                return
            n = self.send_window.take(len(view))
            if n == 0:
                self._credit.clear()
                await self._credit.wait()
                continue
            self.table.conn.send_data(pack_data(self.number, bytes(view[:n])))
            view = view[n:]

    def send_eof(self) -> None:
        if not self.closed:  # behind this channel's data, never ahead of it
            self.table.conn.send_data(Eof(self.number))

    def resize(self, rows: int, cols: int) -> None:
        if not self.closed:
            self.table.conn.send(Resize(self.number, rows, cols))

    def consumed(self, n: int) -> None:
        credit = self.receive_window.consumed(n)
        if credit and not self.closed:
            self.table.conn.send(Window(self.number, credit))

    def close(self, reason: str) -> None:
        """End it from this side: the agent hangs up; our reader sees ``reason``."""
        if self.closed:
            return
        self.table.conn.send_data(Close(self.number))
        self._ended(Close(self.number, error=reason))

    # -- from the agent ----------------------------------------------------

    def _ended(self, close: Close) -> None:
        self.closed = True
        self.table.forget(self.number)
        if not self.opened.done():
            self.opened.set_result(close)
        self.inbox.put_nowait(close)
        self._credit.set()

    def _handle(self, message: Message) -> None:
        if isinstance(message, Opened):
            if not self.opened.done():
                self.send_window.grant(message.window)
                self._credit.set()
                self.opened.set_result(message)
        elif isinstance(message, Window):
            self.send_window.grant(message.credit)
            self._credit.set()
        elif isinstance(message, Eof):
            self.inbox.put_nowait(message)
        elif isinstance(message, Close):
            self._ended(message)

    def _data(self, data: bytes) -> None:
        if not self.opened.done():
            raise ProtocolError(CloseCode.UNEXPECTED, f"data on channel {self.number} "
                                "before it was opened")
        self.receive_window.received(len(data))
        self.inbox.put_nowait(data)


class ChannelTable:
    """The channels of one agent connection, numbered by the server."""

    def __init__(self, conn: AgentConnection) -> None:
        self.conn = conn
        self._open: dict[int, ServerChannel] = {}
        self._last = 0

    def __len__(self) -> int:
        return len(self._open)

    def open(self, kind: str, **params: Any) -> ServerChannel:
        self._last += 1
        channel = ServerChannel(self, self._last, kind)
        self._open[self._last] = channel
        self.conn.send(Open(self._last, kind, window_for(kind), **params))
        return channel

    def forget(self, number: int) -> None:
        self._open.pop(number, None)

    def handle(self, message: Message) -> None:
        number: int = getattr(message, "channel", 0)
        channel = self._open.get(number)
        if channel is not None:
            channel._handle(message)
        elif number > self._last:
            raise ProtocolError(CloseCode.UNEXPECTED, f"no channel {number} was opened")
        # else: a channel we closed; the agent's message crossed our close

    def data(self, number: int, data: bytes) -> bool:
        """Deliver; False when the channel is gone (the sender pays for such frames)."""
        channel = self._open.get(number)
        if channel is not None:
            channel._data(data)
            return True
        if number > self._last:
            raise ProtocolError(CloseCode.UNEXPECTED, f"no channel {number} was opened")
        return False

    def close_all(self, reason: str) -> None:
        """The link is gone: every channel on it ends with ``reason``."""
        for channel in list(self._open.values()):
            with contextlib.suppress(Exception):
                channel._ended(Close(channel.number, error=reason))
