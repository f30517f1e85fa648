"""The agent's one connection: dial, authenticate, serve, and dial again.

All I/O of the agent is here. The pure parts it leans on: the protocol's
messages and keepalive clock, the backoff, and the spool that makes every
invocation survive a dropped link or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import pwd
import socket
import time
from pathlib import Path
from typing import Optional, Union

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tether import __version__
from tether.agent.backoff import Backoff
from tether.agent.channels import Channels
from tether.agent.inventory import collect_inventory, inventory_fingerprint
from tether.agent.runner import Execution, ProcessMark, stop_leftover
from tether.agent.spool import DEFAULT_CAP as DEFAULT_SPOOL_CAP
from tether.agent.spool import STREAMS, Spool
from tether.agent.state import Identity, save_identity, tls_context
from tether.protocol.channels import unpack_data
from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.keepalive import Action, Keepalive
from tether.protocol.messages import (
    SERVER_MESSAGES,
    Accepted,
    Cancel,
    Close,
    Command,
    Eof,
    Hello,
    Message,
    Open,
    Output,
    Ping,
    Pong,
    Resize,
    Result,
    ResultAck,
    Rotate,
    Rotated,
    Welcome,
    Window,
    decode,
    encode,
)
from tether.protocol.versions import AGENT_WS_PATH, PROTOCOL_VERSION

log = logging.getLogger("tether.agent")
OPEN_TIMEOUT = 20.0
INVENTORY_CHECK_INTERVAL = 30.0
MAX_FRAME = 2 * 1024 * 1024
UPLOAD_CHUNK = 64 * 1024


class FatalLinkError(Exception):
    """The server refused us for a reason that retrying cannot fix."""


def websocket_url(server_url: str) -> str:
    scheme, rest = server_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/") + AGENT_WS_PATH


class Agent:
    def __init__(self, identity: Identity, state_dir: Path, backoff: Backoff,
                 run_as: Optional[pwd.struct_passwd] = None,
                 spool_cap: int = DEFAULT_SPOOL_CAP,
                 inventory_interval: float = INVENTORY_CHECK_INTERVAL) -> None:
        self.identity = identity
        self.state_dir = state_dir
        self.tls = tls_context(state_dir, identity.server_url)
        self.run_as = run_as
        self.inventory_interval = inventory_interval
        self.spool = Spool(state_dir / "spool", spool_cap)
        self.backoff = backoff
        self.running: dict[str, Execution] = {}
        self.ws: Optional[ClientConnection] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock: Optional[Keepalive] = None
        self._synced: set[str] = set()
        self._fingerprint = ""
        self._dialed = False  # whether the current attempt's WebSocket opened
        self.channels = Channels(self.send, identity.node_id,
                                 run_as or pwd.getpwuid(os.getuid()))

    # -- lifecycle ---------------------------------------------------------

    async def run_forever(self) -> None:
        await self._recover()
        while True:
            started = time.monotonic()
            self._dialed = False
            try:
                await self._connect_once()
            except FatalLinkError:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake,
                    ProtocolError) as exc:
                log.warning("link to %s lost: %s", self.identity.server_url, _describe(exc))
            # Only a dial that never opened counts against the wait: once the WebSocket
            # is up, the server is there, and a slow or refusing one gets full jitter.
            spent = 0.0 if self._dialed else time.monotonic() - started
            delay = self.backoff.next_delay(spent)
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _recover(self) -> None:
        """Invocations interrupted by an agent restart end as Failed, never rerun.

        A script the killed agent left running is stopped first, so what the
        operator reads (Failed) is what the device is doing (nothing).
        """
        for invocation_id in self.spool.unfinished():
            mark = ProcessMark.load(self.spool.folder(invocation_id))
            stopped = mark is not None and await stop_leftover(mark)
            size = {s: self.spool.stream_size(invocation_id, s) for s in STREAMS}
            self.spool.save_result(Result(
                invocation_id, "Failed", size["stdout"], size["stderr"],
                reason="agent restarted during execution" + (
                    "; the processes it left running were stopped" if stopped else "")))
            log.warning("invocation %s was interrupted by an agent restart%s", invocation_id,
                        f"; stopped its process group {mark.pgid}" if stopped and mark else "")

    async def _connect_once(self) -> None:
        url = websocket_url(self.identity.server_url)
        try:
            ws = await connect(url, open_timeout=OPEN_TIMEOUT, ping_interval=None,
                               close_timeout=5, max_size=MAX_FRAME, compression=None,
                               user_agent_header=f"tether-agent/{__version__}",
                               ssl=self.tls)
        except InvalidURI as exc:
            raise FatalLinkError(str(exc)) from None
        self._dialed = True
        async with ws:
            await ws.send(encode(Hello(_protocol_version(), self.identity.node_id,
                                       self.identity.credential, __version__)))
            try:
                welcome = decode(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT),
                                 SERVER_MESSAGES)
            except ConnectionClosed as exc:
                self._raise_if_fatal(exc)
                raise
            if not isinstance(welcome, Welcome):
                raise ProtocolError(CloseCode.UNEXPECTED, f"expected welcome, got {welcome.TYPE}")
            log.info("connected to %s as %s", self.identity.server_url, self.identity.node_id)
            self.backoff.reset()
            self.ws = ws
            try:
                await self._serve(ws, welcome)
            except ConnectionClosed as exc:
                self._raise_if_fatal(exc)
                raise
            finally:
                self.ws = None

    @staticmethod
    def _raise_if_fatal(exc: ConnectionClosed) -> None:
        rcvd = exc.rcvd
        if rcvd is None:
            return
        try:
            code = CloseCode(rcvd.code)
        except ValueError:
            return
        if not code.retryable:
            raise FatalLinkError(f"the server refused this agent: {rcvd.reason} "
                                 f"(close code {rcvd.code})") from None

    async def _serve(self, ws: ClientConnection, welcome: Welcome) -> None:
        answered = welcome.protocol < 2
        if not answered:
            # The server's TCP ACK of our ping is the answer: the kernel drops the
            # connection when anything we sent stays unacknowledged this long.
            sock = ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(welcome.keepalive_timeout * 1000))
        keepalive = Keepalive(welcome.keepalive_interval, welcome.keepalive_timeout,
                              time.monotonic(), probing=True, answered=answered)
        self._clock = keepalive
        self._fingerprint = ""
        self._synced = set()  # invocations whose spool this link has caught up
        await self._send_inventory_if_changed(ws)
        await self._resend_spool()
        watchers = [asyncio.ensure_future(self._keepalive(ws, keepalive)),
                    asyncio.ensure_future(self._watch_inventory(ws))]
        try:
            async for frame in ws:
                keepalive.received(time.monotonic())
                if isinstance(frame, bytes):
                    self.channels.data(*unpack_data(frame))
                else:
                    await self._handle(decode(frame, SERVER_MESSAGES))
        finally:
            for w in watchers:
                w.cancel()
            await self.channels.close_all()
        # The iterator ends on a normal close: surface it like any other close.
        raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)

    async def _keepalive(self, ws: ClientConnection, keepalive: Keepalive) -> None:
        while True:
            action = keepalive.poll(time.monotonic())
            if action is Action.SEND_PING:
                await self.send(Ping())
            elif action is Action.DEAD:
                log.warning("no answer from the server within %.0f s; dropping the link",
                            keepalive.interval + keepalive.timeout)
                ws.transport.abort()
                return
            await asyncio.sleep(max(0.01, keepalive.next_deadline() - time.monotonic()))

    async def _watch_inventory(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.inventory_interval)
            await self._send_inventory_if_changed(ws)

    async def _send_inventory_if_changed(self, ws: ClientConnection) -> None:
        local = ws.local_address
        inventory = await asyncio.get_running_loop().run_in_executor(
            None, collect_inventory, str(local[0]) if local else None)
        fingerprint = inventory_fingerprint(inventory)
        if fingerprint != self._fingerprint:
            await self.send(inventory)
            self._fingerprint = fingerprint

    async def send(self, message: Union[Message, bytes]) -> None:
        """Send if connected; a message lost with the link is re-sent from the spool.

        ``bytes`` is a channel data frame, already packed; channel data lost
        with the link is not re-sent (the channel ends with the link).
        """
        ws = self.ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message if isinstance(message, bytes) else encode(message))
            if self._clock is not None:
                self._clock.sent(time.monotonic())

    # -- messages ----------------------------------------------------------

    async def _handle(self, message: Message) -> None:
        if isinstance(message, Command):
            await self._start(message)
        elif isinstance(message, Cancel):
            execution = self.running.get(message.invocation_id)
            if execution is not None:
                execution.cancel()
        elif isinstance(message, ResultAck):
            if message.invocation_id not in self.running:
                self.spool.forget(message.invocation_id)
        elif isinstance(message, Rotate):
            # On disk (fsynced) before we say so: the server retires the old
            # credential on ``rotated``, and we must still be able to log in.
            self.identity = dataclasses.replace(self.identity, credential=message.credential)
            save_identity(self.state_dir, self.identity)
            log.info("credential rotated")
            await self.send(Rotated())
        elif isinstance(message, (Open, Window, Eof, Close, Resize)):
            await self.channels.handle(message)
        elif isinstance(message, Pong):
            pass
        else:
            raise ProtocolError(CloseCode.UNEXPECTED, f"unexpected {message.TYPE!r}")

    async def _start(self, command: Command) -> None:
        inv = command.invocation_id
        if self.spool.seen(inv):
            # Delivered again: never run twice. Re-send what we have if it is done.
            if inv not in self.running:
                await self._resend(inv)
            return
        folder = self.spool.record(command)
        self._synced.add(inv)  # nothing spooled yet: its output may go out live
        await self.send(Accepted(inv))
        execution = Execution(command, folder, self.identity.node_id, self._on_output,
                              self.run_as)
        self.running[inv] = execution
        task = asyncio.ensure_future(self._execute(execution))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, execution: Execution) -> None:
        inv = execution.command.invocation_id
        try:
            result = await execution.run()
        except Exception as exc:  # the agent must outlive any one script
            log.exception("invocation %s failed inside the agent", inv)
            size = {s: self.spool.stream_size(inv, s) for s in STREAMS}
            result = Result(inv, "Failed", size["stdout"], size["stderr"],
                            reason=f"agent error: {exc}")
        self.spool.save_result(result)
        del self.running[inv]
        await self._send_result(result)
        for evicted in self.spool.evict_over_cap(set(self.running)):
            log.warning("spool over its cap: output of %s evicted", evicted.invocation_id)
            await self._send_result(evicted)

    async def _on_output(self, invocation_id: str, stream: str, offset: int,
                         data: bytes) -> None:
        if invocation_id in self._synced:
            await self.send(Output.from_bytes(invocation_id, stream, offset, data))

    async def _send_result(self, result: Result) -> None:
        if result.invocation_id in self._synced:
            await self.send(result)

    async def _resend_spool(self) -> None:
        for invocation_id in self.spool.pending():
            await self._resend(invocation_id)

    async def _resend(self, invocation_id: str) -> None:
        """Upload everything spooled for one invocation, then its result if it has one.

        Until this catches up, live output and the result of this invocation are
        held back (they are in the spool, and this loop sends them): each stream
        then reaches the server in order, so a full-length output file on the
        server never hides a gap that a later slice would still fill.
        """
        offsets = dict.fromkeys(STREAMS, 0)
        progressed = True
        while progressed:
            progressed = False
            for stream in STREAMS:
                end = self.spool.stream_size(invocation_id, stream)
                while offsets[stream] < end:
                    data = self.spool.read_stream(invocation_id, stream, offsets[stream],
                                                  min(UPLOAD_CHUNK, end - offsets[stream]))
                    if not data:
                        break
                    await self.send(Output.from_bytes(invocation_id, stream,
                                                      offsets[stream], data))
                    offsets[stream] += len(data)
                    progressed = True
        # Caught up, with no await since the last size check: from here on the
        # runner's own sends carry this invocation.
        self._synced.add(invocation_id)
        result = self.spool.load_result(invocation_id)
        if result is not None:
            await self.send(result)


def _protocol_version() -> int:
    """Protocol 2 needs TCP_USER_TIMEOUT (Linux); elsewhere speak 1 (ping and pong)."""
    return PROTOCOL_VERSION if hasattr(socket, "TCP_USER_TIMEOUT") else 1


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ConnectionClosed) and exc.rcvd is None \
            and isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT:
        return "no answer from the server: what we sent stayed unacknowledged"
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is not None:
            return f"closed by the server: {frame.reason or 'no reason'} (code {frame.code})"
        return "connection closed without a close frame"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["Agent", "FatalLinkError", "websocket_url", "websockets"]
