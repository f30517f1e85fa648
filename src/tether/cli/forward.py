"""``tether forward NODE LOCAL_PORT:HOST:PORT``: a local port reaching HOST:PORT from the node.

Each accepted connection is its own stream (one channel on the node's link),
so many run at once and a slow one never holds up another. Half-closes pass
through both ways. If the node's link drops, connections in flight end and new
ones are refused with the reason until it is back; the forward itself stays
until Ctrl-C (or the session is ended on the server), which ends the session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from typing import Optional

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tether.cli.client import ApiFailure, Client
from tether.cli.node_arg import node_id_of
from tether.cli.output import out
from tether.cli.stream import (
    CHUNK,
    FINAL_CODES,
    StreamClosed,
    control_of,
    open_stream,
    start_session,
)

SPEC = re.compile(r"(\d{1,5}):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def parse_spec(spec: str) -> tuple[int, str, int]:
    """``LOCAL_PORT:HOST:PORT`` (HOST may be ``[v6]``); LOCAL_PORT 0 picks a free port."""
    m = SPEC.fullmatch(spec)
    if not m:
        raise ValueError(f"forward spec is LOCAL_PORT:HOST:PORT (e.g. 8080:localhost:80), "
                         f"not {spec!r}")
    local, host, port = int(m.group(1)), m.group(2).strip("[]"), int(m.group(3))
    if local > 65535 or not 0 < port <= 65535:
        raise ValueError(f"ports are 1..65535 (LOCAL_PORT may be 0): {spec!r}")
    return local, host, port


def run(client: Client, args: argparse.Namespace) -> int:
    local, host, port = parse_spec(args.spec)
    args.node_id = node_id_of(client, args.node_id)
    session = start_session(client, {"node_id": args.node_id, "kind": "forward",
                                     "host": host, "port": port})
    try:
        return asyncio.run(_serve(client, session["session_id"], args, local, host, port))
    finally:
        with contextlib.suppress(ApiFailure):
            client.post(f"/sessions/{session['session_id']}/terminate")


async def _serve(client: Client, session_id: str, args: argparse.Namespace, local: int,
                 host: str, port: int) -> int:
    stop = asyncio.Event()
    ended: list[str] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ws, _ = await open_stream(client, session_id)
        except StreamClosed as exc:
            out(f"tether: connection to {host}:{port} refused: {exc}", err=True, flush=True)
            writer.close()
            if exc.final:
                ended.append(str(exc))
                stop.set()
            return
        reason = await _pipe(reader, writer, ws)
        if reason is not None:  # the server ended the session: no new stream would open
            ended.append(reason)
            stop.set()

    server = await asyncio.start_server(accepted, args.bind, local)
    bound = server.sockets[0].getsockname()[1]
    out(f"tether: forwarding {args.bind}:{bound} -> {host}:{port} on {args.node_id} "
        f"(session {session_id}); Ctrl-C to stop", err=True, flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    if ended:
        out(f"tether: the forward ended: {ended[0]}", err=True)
        return 1
    return 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ws: ClientConnection) -> Optional[str]:
    """Relay one connection; returns the reason when it ended because the session did."""
    session_ended: list[str] = []

    async def up() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                await ws.send('{"t":"eof"}')
                return
            await ws.send(data)

    async def down() -> None:
        async for frame in ws:
            if isinstance(frame, bytes):
                writer.write(frame)
                await writer.drain()
                continue
            control = control_of(frame)
            if control.get("t") == "eof" and writer.can_write_eof():
                writer.write_eof()
            elif control.get("t") == "closed":
                if control.get("error"):
                    out(f"tether: forwarded connection ended: {control['error']}",
                        err=True, flush=True)
                if control.get("code") in FINAL_CODES:
                    session_ended.append(str(control.get("error") or "the session ended"))
                return

    sending = asyncio.ensure_future(up())
    try:
        await down()
    except (ConnectionClosed, OSError):
        pass
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
            await sending
        writer.close()
        await ws.close()
    return session_ended[0] if session_ended else None
