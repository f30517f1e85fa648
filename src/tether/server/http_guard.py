"""Deadlines for the unauthenticated part of an HTTP connection, and a cap per address.

A client that sends one header line every few seconds ("slowloris") or a body a
byte at a time holds a file descriptor without ever showing a token; enough of them
and the server can accept nobody (at 20,000, ``whoami`` failed). uvicorn bounds
only the idle time between requests (``timeout_keep_alive``) and, with
``limit_concurrency``, answers everyone 503 once the whole server is busy, which
the attacker would trigger for all. So each connection is followed through
``Phase``:

- ``HEAD``: from the connection (or the first byte of a kept-alive connection's
  next request) until its request line and headers are whole. Deadline
  ``header_timeout``; counts against ``heads_per_address`` (one address, or one
  IPv6 /64: access/throttle.py ``AddressCount``, the count the agents' handshakes
  use too). Over the cap, the connection is closed at once.
- ``BODY``: from the head to the body's end; deadline ``body_timeout``.
- ``HANDLING``: the request is whole (or became a WebSocket, whose own limits, the
  hello timeout, take over): the application's time, no deadline here.
- ``IDLE``: between requests; uvicorn's keep-alive timeout closes it.
- ``CLOSED``.

A deadline passed is answered 408 with an ErrorBody (when no response has started)
and the connection closed, but only after the loop has read once more: a loop may
run a due timer before it reads bytes that came in before the deadline (uvloop runs
timers first in every turn; a process held up for a moment, as on a loaded machine,
wakes with both due), and a request in on time was answered 408 (3 of 3, the server
held up 0.6 s across the deadline). ``Watch`` is the pure bookkeeping; ``guarded_h11`` is
the thin adapter on uvicorn's h11 protocol (server/runner.py). Trusted proxies are
not capped: every client comes through them, and they buffer heads themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import http
import sys
from collections.abc import Callable
from typing import ClassVar

import h11
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from tether.server.access.client_address import UNKNOWN
from tether.server.access.throttle import AddressCount
from tether.server.api.errors import code_for, error_body

__all__ = ["ErrorBodyWebSocketProtocol", "HttpGuard", "HttpLimits", "Phase", "Watch",
           "guarded_h11"]


class Phase(enum.Enum):
    NEW = "new"
    HEAD = "head"
    BODY = "body"
    HANDLING = "handling"
    IDLE = "idle"
    CLOSED = "closed"


# Where a connection may go from each phase; anything else is a bug, said loudly.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.HEAD, Phase.CLOSED}),
    Phase.HEAD: frozenset({Phase.BODY, Phase.HANDLING, Phase.CLOSED}),
    Phase.BODY: frozenset({Phase.HANDLING, Phase.CLOSED}),
    Phase.HANDLING: frozenset({Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.CLOSED}),
    Phase.IDLE: frozenset({Phase.HEAD, Phase.BODY, Phase.HANDLING, Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    header_timeout: float
    body_timeout: float
    heads_per_address: int
    send_timeout: float = 30.0

    def timeout(self, phase: Phase) -> float | None:
        return {Phase.HEAD: self.header_timeout, Phase.BODY: self.body_timeout}.get(phase)


class HttpGuard:
    """The server-wide part: the limits, and who is sending a head right now."""

    def __init__(self, limits: HttpLimits, exempt: Callable[[str], bool]) -> None:
        self.limits = limits
        self.exempt = exempt
        self.heads = AddressCount()

    def watch(self, address: str) -> Watch:
        return Watch(self, address)


class Watch:
    """One connection's phase and deadline (``loop.time()`` seconds, or None)."""

    def __init__(self, guard: HttpGuard, address: str) -> None:
        self.guard = guard
        self.address = address
        self.capped = not guard.exempt(address)
        self.phase = Phase.NEW
        self.deadline: float | None = None

    def move(self, phase: Phase, now: float) -> bool:
        """Go to ``phase``; False when that would pass the address's cap (close it then).

        Staying in a phase keeps its deadline: the whole head must arrive in time,
        not each piece of it.
        """
        if phase is self.phase:
            return True
        if phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"HTTP connection cannot go from {self.phase.value} to "
                               f"{phase.value}")
        limit = self.guard.limits.heads_per_address
        if phase is Phase.HEAD and self.capped and not self.guard.heads.take(self.address,
                                                                             limit):
            return False
        if self.phase is Phase.HEAD and self.capped:
            self.guard.heads.release(self.address)
        self.phase = phase
        timeout = self.guard.limits.timeout(phase)
        self.deadline = None if timeout is None else now + timeout
        return True

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def raw_error(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer with an ErrorBody, closing the connection.

    For the refusals made below the application (a deadline, bytes that are not
    HTTP), where no ASGI response exists; the same body as every other error.
    """
    body = error_body(code_for(status), message)
    reason = http.HTTPStatus(status).phrase.encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n"
            % (status, reason, len(body))) + body


def _timeout_response(phase: Phase, timeout: float) -> bytes:
    what = "request head" if phase is Phase.HEAD else "request body"
    return raw_error(408, f"the {what} did not arrive within {timeout:g} s")


def malformed_response(error: BaseException | None) -> bytes:
    """The answer to bytes h11 cannot parse (uvicorn's was a text/plain 400).

    h11's own reason is not repeated (some quote the request); 431 when the head
    grew past its limit, as h11 suggests, else 400.
    """
    if getattr(error, "error_status_hint", 400) == 431:
        return raw_error(431, "the request head is too large")
    return raw_error(400, "the request is not valid HTTP/1.1")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, following each connection's ``Phase`` after every event."""

    guard: ClassVar[HttpGuard]
    _watch: Watch
    _timer: asyncio.TimerHandle | None
    _stall: asyncio.TimerHandle | None
    _buffer_limits: tuple[int, int]
    _rechecked: bool  # the deadline passed once already: the loop has read since

    # How long after a deadline the verdict waits: a timer of its own, after the loop's
    # next read (uvloop ran a call_later(0) before it), short against any deadline.
    RECHECK: ClassVar[float] = 0.05

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = None
        self._rechecked = False
        self._stall = None
        self._watch = self.guard.watch(self.client[0] if self.client else UNKNOWN)
        # Writing "pauses" as soon as the kernel takes less than was written, and
        # resumes only once nothing waits: so pause_writing/resume_writing say exactly
        # when this connection holds bytes its client has not taken (the stall deadline).
        # (A plain transport pauses above ``high``, a TLS one from ``high`` on: 0 and 1,
        # or TLS would start paused, and nothing would ever resume it.)
        self._buffer_limits = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=1 if self.scheme == "https" else 0, low=0)
        self._follow(Phase.HEAD)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(self._observed())

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._follow(self._observed())

    def connection_lost(self, exc: Exception | None) -> None:
        self._follow(Phase.CLOSED)
        self._unstall()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Bytes h11 cannot parse: an ErrorBody instead of uvicorn's text/plain 400.

        uvicorn calls this inside its ``except h11.RemoteProtocolError``, so the error
        is the one being handled. ``cycle`` is the request before (the bad bytes
        followed its answer) or this one's (they came in its body): while its answer
        is under way, nothing more can be said, and the connection is just closed.
        """
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(malformed_response(sys.exc_info()[1]))
        if cycle is not None:
            cycle.disconnected = True  # the application's answer, if any, goes nowhere
        self.transport.close()

    def pause_writing(self) -> None:
        """The client has not taken all we wrote: it must, within ``send_timeout``."""
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.guard.limits.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstall()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        """A client that stopped reading: drop the connection and what it left unread.

        ``close()`` would wait for the buffer to drain, indefinitely (asyncio closes a
        transport only once its writes are out); ``abort()`` does not.
        """
        self._stall = None
        self.transport.abort()

    def _observed(self) -> Phase:
        """Where h11 says the request is (after uvicorn handled the latest bytes)."""
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            # Its own flow control from here on, with the usual buffer limits.
            self.transport.set_write_buffer_limits(*reversed(self._buffer_limits))
            return Phase.HANDLING
        state = self.conn.their_state
        if state is h11.IDLE:
            started = self._watch.phase is Phase.HEAD or bool(self.conn.trailing_data[0])
            return Phase.HEAD if started else Phase.IDLE
        return Phase.BODY if state is h11.SEND_BODY else Phase.HANDLING

    def _follow(self, phase: Phase) -> None:
        if self._watch.phase is Phase.CLOSED:
            return
        before = self._watch.deadline
        if not self._watch.move(phase, self.loop.time()):
            self.transport.close()  # over the cap: not a byte read, nothing answered
            return
        if self._watch.deadline != before:
            if self._timer is not None:
                self._timer.cancel()
            self._rechecked = False
            self._timer = (None if self._watch.deadline is None else
                           self.loop.call_at(self._watch.deadline, self._expire))

    def _expire(self) -> None:
        self._timer = None
        if not self._rechecked:  # bytes that came in before the deadline are read first
            self._rechecked = True
            self._timer = self.loop.call_later(self.RECHECK, self._expire)
            return
        phase = self._watch.phase
        timeout = self.guard.limits.timeout(phase)
        if timeout is None or self.transport.is_closing():
            return
        # In a head, the last response (if any) is complete; in a body, the application
        # may have started answering already, and a 408 would garble that answer.
        if phase is Phase.HEAD or self.cycle is None or not self.cycle.response_started:
            self.transport.write(_timeout_response(phase, timeout))
        self.transport.close()


def guarded_h11(guard: HttpGuard) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``http=``), bound to ``guard``."""

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.guard = guard
    return Guarded


class ErrorBodyWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, whose refused handshakes are ErrorBodies too.

    websockets refuses a bad upgrade (no or a malformed ``Sec-WebSocket-Key``, another
    version) in text/plain, quoting the header it disliked; the status and the headers
    it needs (``Upgrade``, ``Sec-WebSocket-Version`` on a 426) stay, the words go.
    """

    def handle_connect(self, event: Request) -> None:
        response = self.conn.accept(event)  # deciding only: nothing is sent yet
        if response.status_code == 101:
            super().handle_connect(event)
            return
        self.request, self.response = event, response
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        status = int(response.status_code)
        response.body = error_body(code_for(status), "the WebSocket handshake was refused "
                                   f"({status} {response.reason_phrase})")
        for name, value in (("Content-Type", "application/json"),
                            ("Content-Length", str(len(response.body)))):
            del response.headers[name]
            response.headers[name] = value
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        """uvicorn's, after which an accepted link forgets its handshake.

        The upgrade request and the 101 response (their parsed headers, about 1.7 KiB)
        were kept for the link's whole life, though nothing reads them once the 101
        is sent: at 10,000 idle agents that was 17 MB of the server's memory.
        """
        accepting = message["type"] == "websocket.accept" and not self.handshake_complete
        await super().send(message)
        if accepting and self.handshake_complete:
            self.request = self.response = None  # type: ignore[assignment]

    def handle_handshake_exception(self) -> None:
        """A handshake request websockets could not parse: 400, or its 414/431."""
        self.handshake_complete = self.close_sent = True
        queued = b"".join(self.conn.data_to_send())
        status = int(queued.split()[1]) if queued.startswith(b"HTTP/1.1 4") else 400
        status = status if status in (414, 431) else 400
        self.transport.write(raw_error(status, "the WebSocket handshake is not valid HTTP/1.1"))
        self.transport.close()
