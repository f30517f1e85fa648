"""``tether shell NODE``: a terminal on the device, through the server.

The local terminal goes raw, so every key (Ctrl-C, Ctrl-Z, arrows) reaches the
remote PTY, whose line discipline decides what they mean. A window resize is
sent on SIGWINCH. The exit status is the remote shell's; 255 when the session
ended another way (the reason is printed), as ssh does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import termios
import threading
import tty
from typing import Optional

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tether.cli.client import Client
from tether.cli.node_arg import node_id_of
from tether.cli.output import out
from tether.cli.stream import StreamClosed, closing_error, control_of, open_stream, start_session

EXIT_SESSION_ERROR = 255


def terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


def run(client: Client, args: argparse.Namespace) -> int:
    rows, cols = terminal_size()
    args.node_id = node_id_of(client, args.node_id)
    body = {"node_id": args.node_id, "kind": "shell", "rows": rows, "cols": cols,
            "term": os.environ.get("TERM") or "xterm-256color"}
    if args.user:
        body["user"] = args.user
    session = start_session(client, body)
    out(f"tether: session {session['session_id']} on {args.node_id}", err=True, flush=True)
    code, reason = asyncio.run(_attach(client, session["session_id"]))
    if reason:
        out(err=True)  # the remote screen may have left the cursor mid-line
        out(f"tether: session {session['session_id']} ended: {reason}", err=True)
    return code


async def _attach(client: Client, session_id: str) -> tuple[int, Optional[str]]:
    try:
        ws, _ = await open_stream(client, session_id)
    except StreamClosed as exc:
        return EXIT_SESSION_ERROR, str(exc)
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    loop = asyncio.get_running_loop()
    if saved is not None:
        tty.setraw(stdin, termios.TCSANOW)  # keep keys typed ahead
        loop.add_signal_handler(signal.SIGWINCH, _send_size, ws, loop)
    reader = asyncio.ensure_future(_keys(ws, stdin))
    try:
        return await _screen(ws)
    finally:
        reader.cancel()
        if saved is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        await ws.close()


def _send_size(ws: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
    rows, cols = terminal_size()
    loop.create_task(ws.send(json.dumps({"t": "resize", "rows": rows, "cols": cols})))


async def _keys(ws: ClientConnection, stdin: int) -> None:
    """Local keys to the remote terminal, as they come (no line buffering).

    Read by a daemon thread: a blocking read of the terminal is the one way
    that neither loses typed-ahead keys nor flips the terminal (shared with
    stdout) to non-blocking, and the thread cannot hold the process open.
    """
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def read_keys() -> None:
        while True:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(keys.put_nowait, data)
            if not data:
                return

    threading.Thread(target=read_keys, name="keys", daemon=True).start()
    while True:
        data = await keys.get()
        if not data:
            return  # local input ended; the remote shell goes on until it exits
        await ws.send(data)


async def _screen(ws: ClientConnection) -> tuple[int, Optional[str]]:
    out = sys.stdout.fileno()
    try:
        async for frame in ws:
            if isinstance(frame, bytes):
                view = memoryview(frame)
                while view:
                    view = view[os.write(out, view):]
                continue
            control = control_of(frame)
            if control.get("t") == "closed":
                error = closing_error(control)
                if error:
                    return EXIT_SESSION_ERROR, error
                code = control.get("exit_code")
                return (int(code) if isinstance(code, int) else 0), None
    except ConnectionClosed:
        pass
    return EXIT_SESSION_ERROR, "the connection to the tether server was lost"
