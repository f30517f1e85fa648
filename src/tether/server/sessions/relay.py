"""One operator stream relayed to one channel on a node, and back.

The operator's WebSocket (``/api/v1/sessions/{id}/stream``) speaks a small
protocol of its own: binary frames are the channel's bytes; text frames are
JSON control messages, from the operator ``resize`` and ``eof``, from the
server ``opened``, ``eof`` and ``closed`` (see docs/protocol.md). Nothing is
buffered beyond the channel's window: we read from the operator only when the
agent has credit, and credit the agent only once the operator's socket took
the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from starlette.websockets import WebSocket, WebSocketDisconnect

from tether.protocol.messages import Close, Eof, Opened
from tether.server.gateway.channels import ServerChannel
from tether.server.sessions.authority import SESSION_ENDED
from tether.server.sessions.manager import LiveSession

OPEN_TIMEOUT = 30.0


@dataclass
class Outcome:
    """How one stream ended, for the session's own ending."""

    clean: bool                  # the node ended it without an error
    exit_code: Optional[int]
    reason: str


async def _send_json(ws: WebSocket, body: dict[str, Any]) -> None:
    await ws.send_text(json.dumps({k: v for k, v in body.items() if v is not None}))


async def relay(ws: WebSocket, channel: ServerChannel, live: LiveSession) -> Outcome:
    try:
        first = await asyncio.wait_for(asyncio.shield(channel.opened), OPEN_TIMEOUT)
    except asyncio.TimeoutError:
        channel.close("the node did not open the channel in time")
        first = Close(channel.number, error="the node did not open the channel in time")
    try:
        if isinstance(first, Close):
            await _send_json(ws, {"t": "closed", "error": first.error,
                                  "code": SESSION_ENDED if live.ended else None})
            return Outcome(False, None, first.error or "closed")
        assert isinstance(first, Opened)
        await _send_json(ws, {"t": "opened", "size": first.size, "mode": first.mode})
    except (WebSocketDisconnect, RuntimeError, OSError):
        channel.close("the operator disconnected")
        return Outcome(False, None, "the operator disconnected")
    down = asyncio.ensure_future(_to_operator(ws, channel, live))
    up = asyncio.ensure_future(_to_node(ws, channel, live))
    done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    if down in done:
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await up
        if down.exception() is None:
            return down.result()
        reason = "the operator disconnected"  # our send to it failed
        channel.close(reason)
        return Outcome(False, None, reason)
    # The operator went away first: hang up the node's end.
    reason = "the operator disconnected"
    if not up.cancelled() and up.exception() is None:
        reason = up.result()
    channel.close(reason)
    down.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await down
    return Outcome(False, None, reason)


async def _to_operator(ws: WebSocket, channel: ServerChannel, live: LiveSession) -> Outcome:
    while True:
        item = await channel.inbox.get()
        if isinstance(item, bytes):
            if live.recorder is not None:
                live.recorder.output(item)
            await ws.send_bytes(item)
            live.active(from_node=len(item))
            channel.consumed(len(item))
        elif isinstance(item, Eof):
            await _send_json(ws, {"t": "eof", "sha256": item.sha256})
        else:
            assert isinstance(item, Close)
            with contextlib.suppress(Exception):
                await _send_json(ws, {"t": "closed", "exit_code": item.exit_code,
                                      "error": item.error,
                                      "code": SESSION_ENDED if live.ended else None})
            reason = item.error or (f"exited with {item.exit_code}"
                                    if item.exit_code is not None else "closed by the node")
            return Outcome(item.error is None, item.exit_code, reason)


async def _to_node(ws: WebSocket, channel: ServerChannel, live: LiveSession) -> str:
    """Returns why the operator's side stopped."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return "the operator disconnected"
            data: Optional[bytes] = message.get("bytes")
            if data:
                if live.recorder is not None:
                    live.recorder.input(data)
                live.active(to_node=len(data))
                await channel.send(data)
                continue
            text = message.get("text")
            if text is None:
                continue
            try:
                control = json.loads(text)
                kind = control["t"]
            except (ValueError, KeyError, TypeError):
                return "the operator sent a malformed control message"
            if kind == "eof":
                channel.send_eof()
            elif kind == "resize":
                rows, cols = control.get("rows"), control.get("cols")
                if isinstance(rows, int) and isinstance(cols, int) \
                        and 0 < rows < 65536 and 0 < cols < 65536:
                    channel.resize(rows, cols)
                    if live.recorder is not None:
                        live.recorder.resize(cols, rows)
    except WebSocketDisconnect:
        return "the operator disconnected"
