"""The agents' WebSocket endpoint: handshake, then a read loop.

Anything a peer sends that the protocol refuses closes *that* connection with
a close code and reason; no frame can raise past this function, so one bad
agent never disturbs another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.websockets import WebSocket

from tether import __version__
from tether.protocol.channels import CHANNELS_PROTOCOL, unpack_data
from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.messages import (
    AGENT_MESSAGES,
    Close,
    Eof,
    Hello,
    Inventory,
    Message,
    Opened,
    Welcome,
    Window,
    decode,
    encode,
)
from tether.protocol.versions import check_version
from tether.server.access.throttle import BytePacer, TokenBucket
from tether.server.config import Settings
from tether.server.dispatch.dispatcher import Dispatcher
from tether.server.gateway.registry import AgentBudget, AgentConnection, Registry
from tether.server.store import Store

log = logging.getLogger(__name__)


class Refused(ProtocolError):
    """An agent that is not let in; ``node_id`` is the one it claimed."""

    def __init__(self, code: CloseCode, reason: str, node_id: str) -> None:
        super().__init__(code, reason)
        self.node_id = node_id


async def _receive_frame(ws: WebSocket) -> str | bytes | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    text: str | None = msg.get("text")
    if text is not None:
        return text
    data: bytes = msg.get("bytes") or b""
    return data


async def _handshake(ws: WebSocket, store: Store, timeout: float) -> Hello:
    try:
        frame = await asyncio.wait_for(_receive_frame(ws), timeout)
    except asyncio.TimeoutError:
        raise ProtocolError(CloseCode.UNEXPECTED, f"no hello within {timeout:g} s") from None
    if frame is None:
        raise ProtocolError(CloseCode.GOING_AWAY, "closed before hello")
    hello = decode(frame, AGENT_MESSAGES)
    if not isinstance(hello, Hello):
        raise ProtocolError(CloseCode.UNEXPECTED, f"expected hello first, got {hello.TYPE!r}")
    check_version(hello.protocol)
    node = await store.authenticate_node(hello.node_id, hello.credential)
    if node is None:
        raise Refused(CloseCode.AUTH_FAILED, f"unknown node or wrong credential "
                      f"for {hello.node_id}", hello.node_id)
    if node["deregistered_at"] is not None:
        raise Refused(CloseCode.DEREGISTERED, f"{hello.node_id} is deregistered", hello.node_id)
    return hello


def _count(bucket: TokenBucket, conn: AgentConnection, settings: Settings) -> None:
    """One message against the agent's rate, or the close code for going over it."""
    if not bucket.take(conn.last_received):
        raise ProtocolError(CloseCode.RATE_LIMITED, "more messages than "
                            f"{settings.agent_message_rate:g} a second")


# What a byte of each message costs the agent's budget. An inventory's addresses each
# become a row written (about 0.1 s of CPU for one at every cap, 130 kB: docs/
# benchmarks.md, "Heavy agent messages"), far more per byte than an output slice, which
# is copied once. Unlisted types cost 1.
BYTE_WEIGHT: dict[str, int] = {Inventory.TYPE: 8}
# What a connection costs its node's byte budget: a link's presence written twice and
# its deliverable invocations queried, about what 64 KiB of inventory costs. So past
# the burst a node connects at most rate / cost times a second (16 at the defaults).
CONNECT_COST = 64 * 1024


async def _pace(pacer: BytePacer, frame: str | bytes, message: Message,
                conn: AgentConnection) -> None:
    """Charge a frame's bytes (times its type's weight) to the agent's budget; past
    it, stop reading from the agent for a while.

    Charged after decoding and before handling, so the wait covers both this frame's
    work and the next frame's arrival: an agent's CPU and database cost per second
    is bounded by the byte rate, and TCP holds the agent back meanwhile.
    """
    size = len(frame) if isinstance(frame, bytes) or frame.isascii() \
        else len(frame.encode("utf-8"))
    delay = pacer.charge(size * BYTE_WEIGHT.get(message.TYPE, 1), conn.last_received)
    while delay > 0:  # in slices: the silence is ours, not the agent's (keepalive)
        await asyncio.sleep(min(delay, 0.5))
        delay -= 0.5
        conn.received()


def _new_budget(settings: Settings) -> AgentBudget:
    now = time.monotonic()
    return AgentBudget(TokenBucket(settings.agent_message_rate, settings.agent_message_burst,
                                   now),
                       BytePacer(settings.agent_byte_rate, settings.agent_byte_burst, now))


def _admit(hello: Hello, registry: Registry, settings: Settings) -> AgentBudget:
    """The node's budget, charged for this connection; refused (4008) while in debt.

    Refused, not paced: holding the connection would hold a handshake slot of its
    address, and a refusal costs no more than a wrong credential does (one lookup,
    no write). It is not charged, so the agent's next dial after its backoff finds
    the debt paid.
    """
    budget = registry.budget(hello.node_id, lambda: _new_budget(settings))
    now = time.monotonic()
    wait = budget.bytes.charge(0, now)  # the debt left, in seconds
    if wait <= 0:
        budget.bytes.charge(CONNECT_COST, now)
    else:
        registry.keep_budget(hello.node_id, budget, now)
        # The same words every time: a refusal repeated is counted, not recorded anew.
        raise Refused(CloseCode.RATE_LIMITED, "this node sent more than its "
                      f"{settings.agent_byte_rate:,.0f} bytes a second; dial again later",
                      hello.node_id)
    return budget


def _welcome(hello: Hello, settings: Settings) -> Welcome:
    return Welcome(protocol=hello.protocol, server_version=__version__,
                   keepalive_interval=settings.keepalive_interval,
                   keepalive_timeout=settings.keepalive_timeout)


async def serve_agent(ws: WebSocket, settings: Settings, store: Store, registry: Registry,
                      dispatcher: Dispatcher) -> None:
    await ws.accept()
    peer = ws.client.host if ws.client else None
    if not registry.handshake_started(peer or "", settings.handshakes_per_address):
        with contextlib.suppress(Exception):
            await ws.close(CloseCode.RATE_LIMITED, "too many handshakes in progress from "
                           "this address; try again")
        return
    try:
        hello = await _handshake(ws, store, settings.hello_timeout)
        budget = None if hello.probe else _admit(hello, registry, settings)
    except ProtocolError as exc:
        log.info("agent from %s refused: %s", peer, exc)
        if isinstance(exc, Refused):
            await store.audit.refused(actor="agent", action="agent connect", reason=exc.reason,
                                      source=peer, target=exc.node_id)
        with contextlib.suppress(Exception):
            await ws.close(exc.code, exc.reason)
        return
    finally:
        registry.handshake_ended(peer or "")
    if hello.probe:
        with contextlib.suppress(Exception):
            await ws.send_text(encode(_welcome(hello, settings)))
            await ws.close(CloseCode.NORMAL, "probe answered")
        return
    assert budget is not None
    conn = AgentConnection(hello.node_id, peer, ws, hello.protocol, budget)
    old = registry.add(conn)
    if old is not None:
        old.close(CloseCode.REPLACED, "replaced by a newer connection from the same node")
    conn.send(_welcome(hello, settings))
    bucket, pacer = budget.messages, budget.bytes
    try:
        await dispatcher.node_connected(conn)
        while not conn.closing:
            frame = await _receive_frame(ws)
            if frame is None:
                break
            conn.received()
            try:
                if isinstance(frame, bytes) and conn.protocol >= CHANNELS_PROTOCOL:
                    # Channel data is paced by its windows, not by the message rate;
                    # only frames for a channel already closed count against it.
                    if not conn.channels.data(*unpack_data(frame)):
                        _count(bucket, conn, settings)
                    continue
                _count(bucket, conn, settings)
                message = decode(frame, AGENT_MESSAGES)
                await _pace(pacer, frame, message, conn)
                if isinstance(message, (Opened, Window, Eof, Close)):
                    conn.channels.handle(message)
                else:
                    await dispatcher.handle(conn, message)
            except ProtocolError as exc:
                log.warning("closing %s: %s", conn.node_id, exc)
                conn.close(exc.code, exc.reason)
                # A node breaking the protocol (another node's invocation, a flood) is
                # a refusal of that node: audited, repeats counted (store/audit.py).
                await store.audit.refused(actor="agent", action="agent closed",
                                          reason=exc.reason, source=peer, target=conn.node_id,
                                          detail={"close": int(exc.code)},
                                          authenticated=True)
    except Exception:
        log.exception("agent connection %s failed", conn.node_id)
        conn.close(1011, "internal server error")
    finally:
        conn.close_channels("the node's link was lost")
        registry.keep_budget(conn.node_id, budget, time.monotonic())
        if registry.remove(conn):
            await dispatcher.node_disconnected(conn)
        conn.close(CloseCode.NORMAL, "")
        await conn.drained(5)
