"""The agent's side of the channels in its connection (protocol 4).

One ``Channels`` object per link. Each open channel has two pumps: out (the
endpoint to the server, only as far as the server's credit goes) and in (the
server's data to the endpoint, crediting back what was written). Either side's
``close`` ends the channel and hangs up its endpoint; so does the loss of the
link, because a session never outlives the connection that carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pwd
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from tether.agent.endpoints import Endpoint, EndpointError, FileReader, FileWriter, TcpEndpoint
from tether.agent.shell import Shell, session_user
from tether.protocol.channels import ReceiveWindow, SendWindow, pack_data, window_for
from tether.protocol.messages import Close, Eof, Message, Open, Opened, Resize, Window

log = logging.getLogger("tether.agent.channels")

Send = Callable[[Union[Message, bytes]], Awaitable[None]]
_EOF = object()  # in an inbox: the server's eof (with the digest it carried, if any)
# Bounds a channel's hang-up (a shell gets 3 s between SIGHUP and SIGKILL), so a stuck
# endpoint can never keep the agent from dialing again.
HANG_UP_TIMEOUT = 10.0


@dataclass
class _Channel:
    number: int
    kind: str
    endpoint: Endpoint
    send_window: SendWindow
    receive_window: ReceiveWindow
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class Channels:
    def __init__(self, send: Send, node_id: str, default_user: pwd.struct_passwd) -> None:
        self._send = send
        self.node_id = node_id
        self.default_user = default_user
        self._open: dict[int, _Channel] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def handle(self, message: Message) -> None:
        if isinstance(message, Open):
            await self._opening(message)
            return
        channel = self._open.get(getattr(message, "channel", 0))
        if channel is None:
            return  # already closed here; the peer's message crossed ours
        if isinstance(message, Window):
            channel.send_window.grant(message.credit)
            channel.credit.set()
        elif isinstance(message, Eof):
            channel.inbox.put_nowait((_EOF, message.sha256))
        elif isinstance(message, Resize):
            with contextlib.suppress(OSError):
                channel.endpoint.resize(message.rows, message.cols)
        elif isinstance(message, Close):
            await self._end(channel)

    def data(self, number: int, data: bytes) -> None:
        """Bytes from the server; over the window is a protocol error."""
        channel = self._open.get(number)
        if channel is None:
            return
        channel.receive_window.received(len(data))
        channel.inbox.put_nowait(data)

    async def close_all(self) -> None:
        """The link is gone: every channel with it, hung up side by side (a shell's
        hang-up takes seconds, and the agent dials again only after this)."""
        await asyncio.gather(*(self._end(channel)
                               for channel in list(self._open.values())))

    # -- one channel ----------------------------------------------------------

    async def _opening(self, request: Open) -> None:
        if request.channel in self._open:
            return  # an open that was re-sent; the first one stands
        try:
            endpoint = await self._endpoint(request)
        except EndpointError as exc:
            await self._send(Close(request.channel, error=str(exc)))
            return
        except Exception as exc:  # the agent must outlive any one channel
            log.exception("channel %d (%s) could not open", request.channel, request.kind)
            await self._send(Close(request.channel, error=f"agent error: {exc}"))
            return
        window = window_for(request.kind)
        channel = _Channel(request.channel, request.kind, endpoint, SendWindow(request.window),
                           ReceiveWindow(window))
        if request.window:
            channel.credit.set()
        self._open[request.channel] = channel
        await self._send(Opened(request.channel, window, size=endpoint.size,
                                mode=endpoint.mode))
        channel.tasks = [asyncio.ensure_future(self._pump_out(channel)),
                         asyncio.ensure_future(self._pump_in(channel))]

    async def _endpoint(self, request: Open) -> Endpoint:
        if request.kind == "shell":
            user = session_user(request.user, self.default_user)
            return await Shell.start(user, request.rows or 24, request.cols or 80,
                                     request.term or "", self.node_id)
        if request.kind == "tcp":
            if not request.host or request.port is None:
                raise EndpointError("a tcp channel needs host and port")
            return await TcpEndpoint.connect(request.host, request.port)
        # A copy runs with the rights of the account a shell would get, never the agent's.
        user = session_user(None, self.default_user)
        if request.kind == "file_read":
            if not request.path or not Path(request.path).is_absolute():
                raise EndpointError(f"{request.path!r} is not an absolute path")
            return await FileReader.open(user, request.path, request.offset or 0)
        return await FileWriter.open(user, request)

    async def _pump_out(self, channel: _Channel) -> None:
        try:
            while True:
                n = channel.send_window.take(1 << 30)
                if n == 0:
                    channel.credit.clear()
                    await channel.credit.wait()
                    continue
                data = await channel.endpoint.read(n)
                if len(data) < n:  # give back what the read did not use
                    channel.send_window.grant(n - len(data))
                if not data:
                    break
                await self._send(pack_data(channel.number, data))
            await self._send(Eof(channel.number, sha256=channel.endpoint.eof_digest()))
            exit_code, error = await channel.endpoint.finish()
        except EndpointError as exc:
            exit_code, error = None, str(exc)
        except Exception as exc:
            log.exception("channel %d failed", channel.number)
            exit_code, error = None, f"agent error: {exc}"
        if not channel.closed:
            await self._send(Close(channel.number, exit_code=exit_code, error=error))
            await self._end(channel, current=asyncio.current_task())

    async def _pump_in(self, channel: _Channel) -> None:
        try:
            while True:
                item = await channel.inbox.get()
                if isinstance(item, tuple):
                    await channel.endpoint.write_eof(item[1])
                    return
                assert isinstance(item, bytes)
                await channel.endpoint.write(item)
                credit = channel.receive_window.consumed(len(item))
                if credit:
                    await self._send(Window(channel.number, credit))
        except EndpointError as exc:
            if not channel.closed:
                await self._send(Close(channel.number, error=str(exc)))
                await self._end(channel, current=asyncio.current_task())

    async def _end(self, channel: _Channel,
                   current: Optional[asyncio.Task[object]] = None) -> None:
        """Drop the channel and hang up its endpoint. Sends nothing: ``close`` is not
        answered, and whoever ends a channel from this side has sent its own."""
        if channel.closed:
            return
        channel.closed = True
        self._open.pop(channel.number, None)
        for task in channel.tasks:
            if task is not current:
                task.cancel()
        try:
            await asyncio.wait_for(channel.endpoint.hang_up(), HANG_UP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("channel %d did not hang up within %g s", channel.number,
                        HANG_UP_TIMEOUT)
        except Exception:
            log.exception("channel %d did not hang up cleanly", channel.number)
