"""One swarm process: N simulated agents, each with its own identity and its own WebSocket.

Each simulated agent speaks the real protocol (protocol 2) to a real server over
its own TCP connection: hello -> welcome, one small fixed inventory (with a fake
``ppp0``), a ``ping`` after ``keepalive_interval`` seconds of sending nothing, and
commands answered like the real agent answers them (accepted, output, result;
the result is re-sent after a reconnect until ``result_ack`` arrives; a command
id seen before never runs twice). Instead of a shell it runs a built-in action:

- script ``bytes:N``: N bytes of output (a fixed printable pattern, see
  ``expected_output``), streamed in 64 KiB output slices;
- any other script: ``ok\\n``.

A closed link is dialled again after a jittered, capped exponential backoff,
forever: a simulated agent never gives up, not even on the close codes that make
the real agent stop (those are counted as ``refused``).

Connections leave from ``--local-addr`` (127.0.0.2, 127.0.0.3, ...: each loopback
source address has its own ~28k ephemeral ports), bound with
IP_BIND_ADDRESS_NO_PORT so the port is picked at connect time per 4-tuple. The
process raises its RLIMIT_NOFILE soft limit to the hard limit.

Driven by ``run.py``: it prints ``{"ready": N}`` once the identities are loaded,
waits for a ``go`` line on stdin, then dials, and prints one JSON stats line at
most every ``--report-interval`` seconds while anything changes (``connected``
is the number of agents between welcome and close right now). SIGTERM ends it.

    .venv/bin/python benchmarks/swarm/swarm.py --identities ids.json --first 0 \\
        --count 2500 --server http://127.0.0.1:8720 --local-addr 127.0.0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tether.protocol.messages import (
    SERVER_MESSAGES,
    Accepted,
    Address,
    Cancel,
    Command,
    Hello,
    Interface,
    Inventory,
    Message,
    Output,
    Ping,
    Pong,
    Result,
    ResultAck,
    Welcome,
    decode,
    encode,
)

PROTOCOL = 2
AGENT_VERSION = "0.0.0-swarm"
WS_PATH = "/agent/v1/connect"
OPEN_TIMEOUT = 20.0
MAX_FRAME = 2 * 1024 * 1024
SLICE = 64 * 1024
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Printable, valid UTF-8, so an output slice travels as text (no base64).
_LINE = b"tether swarm bulk output 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOP\n"
BLOCK = (_LINE * (SLICE // len(_LINE) + 1))[:SLICE]
BLOCK_TEXT = BLOCK.decode("ascii")
OK = b"ok\n"


def output_size(script: str) -> int:
    if script.startswith("bytes:"):
        try:
            return max(0, int(script[len("bytes:"):]))
        except ValueError:
            return len(OK)
    return len(OK)


def expected_output(script: str) -> bytes:
    """The exact stdout a simulated agent returns for ``script``."""
    if not script.startswith("bytes:"):
        return OK
    size = output_size(script)
    return (BLOCK * (size // SLICE + 1))[:size]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fake_inventory(index: int, local_addr: str) -> Inventory:
    """Small and fixed: loopback, an Ethernet port and a cellular ppp0 with its peer."""
    octet = index % 250 + 2
    return Inventory(
        computer_name=f"swarm-{index:05d}", os_name="Linux", os_version="swarm",
        kernel="6.1.0-swarm", arch="aarch64", agent_version=AGENT_VERSION,
        python_version="3.11.7",
        interfaces=[
            Interface("lo", ["up", "loopback", "running"],
                      [Address("127.0.0.1", 8, "inet")]),
            Interface("eth0", ["up", "broadcast", "multicast"], []),
            Interface("ppp0", ["up", "pointopoint", "running", "lower_up"],
                      [Address(f"100.64.{index // 250 % 250}.{octet}", 32, "inet",
                               peer="10.64.64.64")]),
        ],
        primary_address=local_addr)


class Stats:
    def __init__(self) -> None:
        self.agents = 0
        self.connected = 0
        self.welcomes = 0  # successful handshakes, all links
        self.first_welcomes = 0  # agents that got their first welcome
        self.dial_failures = 0
        self.link_losses = 0  # links that ended after a welcome
        self.refused = 0  # closes the real agent would stop on (4002/4003/4004)
        self.commands = 0
        self.duplicates = 0
        self.results = 0
        self.resends = 0
        self.acks = 0
        self.pings = 0
        self.output_bytes = 0
        self.gave_up = 0
        self.errors: Counter[str] = Counter()
        self.all_connected_at: Optional[float] = None

    def snapshot(self, started: float) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("errors", "all_connected_at")}
        out["errors"] = dict(self.errors.most_common(8))
        out["t"] = round(time.monotonic() - started, 3)
        if self.all_connected_at is not None:
            out["all_connected_after"] = round(self.all_connected_at - started, 3)
        return out


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        scheme, rest = args.server.split("://", 1)
        host_port = rest.rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.url = ("wss" if scheme == "https" else "ws") + "://" + host_port + WS_PATH
        self.host = host
        self.port = int(port)
        self.local_addr: str = args.local_addr
        self.backoff_base: float = args.backoff_base
        self.backoff_cap: float = args.backoff_cap
        self.dial = asyncio.Semaphore(args.dial_concurrency) if args.dial_concurrency else None


class SimAgent:
    def __init__(self, ident: dict[str, Any], cfg: Config, stats: Stats,
                 live: set[SimAgent]) -> None:
        self.node_id: str = ident["node_id"]
        self.credential: str = ident["credential"]
        self.index: int = ident["index"]
        self.cfg = cfg
        self.stats = stats
        self.live = live
        self.ws: Optional[ClientConnection] = None
        self.last_sent = 0.0
        self.keepalive_interval = 150.0
        self.ledger: set[str] = set()
        self.unacked: dict[str, Command] = {}  # the 'spool': results not yet acknowledged
        self.attempt = 0
        self.ever_connected = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self._connect_once()
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                code = rcvd.code if rcvd else None
                if code in (4002, 4003, 4004):
                    self.stats.refused += 1
                self.stats.errors[f"close {code}"] += 1
            except (OSError, asyncio.TimeoutError) as exc:
                self.stats.errors[type(exc).__name__] += 1
            except Exception as exc:  # never give up: count it and dial again
                self.stats.errors[type(exc).__name__] += 1
            ceiling = min(self.cfg.backoff_cap, self.cfg.backoff_base * 2 ** min(self.attempt, 16))
            self.attempt += 1
            await asyncio.sleep(random.uniform(0.0, ceiling))

    async def _dial(self) -> tuple[ClientConnection, Welcome]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.cfg.local_addr, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (self.cfg.host, self.cfg.port)),
                                   OPEN_TIMEOUT)
        except BaseException:
            sock.close()
            self.stats.dial_failures += 1
            raise
        try:
            ws = await connect(self.cfg.url, sock=sock, open_timeout=OPEN_TIMEOUT,
                               ping_interval=None, close_timeout=5, max_size=MAX_FRAME,
                               compression=None, user_agent_header="tether-swarm")
        except BaseException:
            sock.close()
            self.stats.dial_failures += 1
            raise
        try:
            await ws.send(encode(Hello(PROTOCOL, self.node_id, self.credential,
                                       AGENT_VERSION)))
            welcome = decode(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT), SERVER_MESSAGES)
            if not isinstance(welcome, Welcome):
                raise RuntimeError(f"expected welcome, got {welcome.TYPE}")
        except BaseException:
            self.stats.dial_failures += 1
            ws.transport.abort()
            raise
        return ws, welcome

    async def _connect_once(self) -> None:
        if self.cfg.dial is not None:
            async with self.cfg.dial:
                ws, welcome = await self._dial()
        else:
            ws, welcome = await self._dial()
        stats = self.stats
        stats.welcomes += 1
        if not self.ever_connected:
            self.ever_connected = True
            stats.first_welcomes += 1
        self.attempt = 0
        self.keepalive_interval = welcome.keepalive_interval
        with contextlib.suppress(OSError):
            ws.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                int(welcome.keepalive_timeout * 1000))
        self.ws = ws
        stats.connected += 1
        if stats.connected == stats.agents and stats.all_connected_at is None:
            stats.all_connected_at = time.monotonic()
        self.live.add(self)
        try:
            await self.send(fake_inventory(self.index, self.cfg.local_addr))
            for cmd in list(self.unacked.values()):
                stats.resends += 1
                self._spawn(self._execute(ws, cmd))
            async for frame in ws:
                await self._handle(ws, decode(frame, SERVER_MESSAGES))
            raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)
        finally:
            self.live.discard(self)
            self.ws = None
            stats.connected -= 1
            stats.link_losses += 1
            ws.transport.abort()

    async def send(self, message: Message, ws: Optional[ClientConnection] = None) -> None:
        ws = ws or self.ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(message))
            self.last_sent = time.monotonic()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, ws: ClientConnection, message: Message) -> None:
        if isinstance(message, Command):
            self.stats.commands += 1
            inv = message.invocation_id
            if inv in self.ledger:
                self.stats.duplicates += 1
                return  # never run twice; an unacked result is re-sent on reconnect
            self.ledger.add(inv)
            self.unacked[inv] = message
            await self.send(Accepted(inv), ws)
            if output_size(message.script) <= SLICE:
                await self._execute(ws, message)
            else:
                self._spawn(self._execute(ws, message))
        elif isinstance(message, ResultAck):
            if self.unacked.pop(message.invocation_id, None) is not None:
                self.stats.acks += 1
        elif isinstance(message, (Cancel, Pong)):
            pass

    async def _execute(self, ws: ClientConnection, cmd: Command) -> None:
        """Send the whole output, then the result (also the re-send after a reconnect)."""
        size = min(output_size(cmd.script), cmd.output_cap)
        inv = cmd.invocation_id
        if cmd.script.startswith("bytes:"):
            for offset in range(0, size, SLICE):
                n = min(SLICE, size - offset)
                await self.send(Output(inv, "stdout", offset, BLOCK_TEXT[:n]), ws)
                self.stats.output_bytes += n
        elif size:
            await self.send(Output(inv, "stdout", 0, OK.decode()[:size]), ws)
            self.stats.output_bytes += size
        await self.send(Result(inv, "Success", size, 0, exit_code=0,
                               stdout_truncated=size < output_size(cmd.script)), ws)
        self.stats.results += 1


async def keepalive_ticker(live: set[SimAgent], stats: Stats) -> None:
    """One task for the whole process: ping every agent that sent nothing for an interval."""
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for agent in list(live):
            if now - agent.last_sent >= agent.keepalive_interval:
                stats.pings += 1
                agent.last_sent = now
                agent._spawn(agent.send(Ping()))


async def reporter(stats: Stats, started: float, interval: float) -> None:
    last = ""
    while True:
        snap = stats.snapshot(started)
        key = json.dumps({k: v for k, v in snap.items() if k != "t"}, sort_keys=True)
        if key != last:
            print(json.dumps(snap), flush=True)
            last = key
        await asyncio.sleep(interval)


async def amain(args: argparse.Namespace) -> None:
    idents = json.loads(Path(args.identities).read_text())[args.first:args.first + args.count]
    cfg = Config(args)
    stats = Stats()
    stats.agents = len(idents)
    live: set[SimAgent] = set()
    agents = [SimAgent(i, cfg, stats, live) for i in idents]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(json.dumps({"ready": len(agents), "nofile": raise_nofile()}), flush=True)
    if not args.no_wait:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
    started = time.monotonic()
    tasks = [asyncio.ensure_future(a.run_forever()) for a in agents]

    def ended(task: asyncio.Task[None]) -> None:
        if not stop.is_set():
            stats.gave_up += 1
            if not task.cancelled() and task.exception() is not None:
                stats.errors[f"gave up: {type(task.exception()).__name__}"] += 1

    for t in tasks:
        t.add_done_callback(ended)
    helpers = [asyncio.ensure_future(keepalive_ticker(live, stats)),
               asyncio.ensure_future(reporter(stats, started, args.report_interval))]
    await stop.wait()
    for t in helpers:
        t.cancel()
    print(json.dumps({**stats.snapshot(started), "final": True}), flush=True)
    for a in agents:
        if a.ws is not None:
            a.ws.transport.abort()
    for t in tasks:
        t.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", required=True, help="JSON file from identities.py")
    p.add_argument("--first", type=int, default=0, help="index of this process's first one")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--server", required=True, help="http://HOST:PORT of the tether server")
    p.add_argument("--local-addr", default="127.0.0.2", help="source address to dial from")
    p.add_argument("--dial-concurrency", type=int, default=128,
                   help="handshakes in flight at once in this process (0: no limit)")
    p.add_argument("--backoff-base", type=float, default=0.5)
    p.add_argument("--backoff-cap", type=float, default=5.0)
    p.add_argument("--report-interval", type=float, default=0.25)
    p.add_argument("--no-wait", action="store_true", help="dial at once, no 'go' line")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args()
    raise_nofile()
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(amain(args))


if __name__ == "__main__":
    main()
