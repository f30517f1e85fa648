"""The operator end of a session stream: one WebSocket, one channel on the node.

Binary frames carry the channel's bytes; text frames carry JSON control
messages (docs/protocol.md, "Operator streams"). Shared by ``tether shell``,
``tether forward`` and ``tether cp``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake

from tether.cli.client import Client

MAX_FRAME = 2 * 1024 * 1024
CHUNK = 32 * 1024


# The codes of a ``closed`` message after which no stream of the session will open again.
# (no_such_session: what servers before issue 13 called session_not_found.)
FINAL_CODES = frozenset({"session_ended", "session_not_found", "no_such_session",
                         "unauthorized"})


class StreamClosed(Exception):
    """The stream could not open, or it ended with an error; the text says why, ``code``
    names it (docs/protocol.md, "Operator streams")."""

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def final(self) -> bool:
        """The session is over (or out of this token's reach): stop, do not retry."""
        return self.code in FINAL_CODES


def start_session(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    session: dict[str, Any] = client.post("/sessions", body)
    return session


async def open_stream(client: Client, session_id: str,
                      offset: int = 0) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect and wait for ``opened``; raises ``StreamClosed`` with the server's reason."""
    scheme, rest = client.base.split("://", 1)
    url = (f"{'wss' if scheme == 'https' else 'ws'}://{rest}/sessions/{session_id}/stream"
           f"?offset={offset}")
    try:
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {client.token}"},
                           ssl=client.context if scheme == "https" else None,
                           max_size=MAX_FRAME, compression=None, open_timeout=30)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise StreamClosed(f"could not reach the tether server: {exc}") from None
    first = await ws.recv()
    control = json.loads(first) if isinstance(first, str) else {}
    if control.get("t") != "opened":
        await ws.close()
        code = control.get("code")
        raise StreamClosed(control.get("error") or "the server closed the stream",
                           code if isinstance(code, str) else None)
    return ws, control


def control_of(frame: str) -> dict[str, Any]:
    value = json.loads(frame)
    return value if isinstance(value, dict) else {}


def closing_error(control: dict[str, Any]) -> Optional[str]:
    """The error of a ``closed`` message (None when the channel ended cleanly)."""
    error = control.get("error")
    return str(error) if error else None
