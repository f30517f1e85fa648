"""What the server does with commands and with the messages agents send.

The order is the durability rule: a command and its invocations are stored
before the first byte goes to an agent; a result is acknowledged to the agent
only after its output and status are stored. Everything an agent reports is
checked against the invocation's owner, so a node can only write its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Any

from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.ids import new_uuid
from tether.protocol.limits import REASON, truncate_text
from tether.protocol.messages import (
    Accepted,
    Cancel,
    Command,
    Hello,
    Inventory,
    Message,
    Output,
    Ping,
    Pong,
    Result,
    ResultAck,
    Rotate,
    Rotated,
)
from tether.protocol.statuses import InvocationStatus
from tether.server.blobs import BlobStore, output_key
from tether.server.bus import Bus
from tether.server.dispatch.small_outputs import SmallOutputs
from tether.server.dispatch.watch import CommandWatch
from tether.server.gateway.registry import AgentConnection
from tether.server.store import Store
from tether.server.store.audit import AuditEntry
from tether.server.store.store import CONNECTION_LOST, ONLINE, Row
from tether.server.store.writer import GroupWriter, Written

log = logging.getLogger(__name__)


ROTATION_PROTOCOL = 3


class NoTargetsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Owner:
    """Whose an invocation is, and how much output it may store."""

    command_id: str
    node_id: str
    output_cap: int


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    script: str
    targets: list[str]
    timeout: float
    delivery_timeout: float
    output_cap: int
    workdir: str | None = None
    comment: str | None = None


class Dispatcher:
    def __init__(self, store: Store, blobs: BlobStore, bus: Bus, watch: CommandWatch,
                 writer: GroupWriter) -> None:
        self.store = store
        self.writer = writer
        self.blobs = blobs
        self.outputs = SmallOutputs(blobs)
        self.bus = bus
        self.watch = watch
        # invocation id -> (command id, node id), so hot paths skip a query.
        self._owners: dict[str, Owner] = {}

    # -- operator side -----------------------------------------------------

    async def submit(self, spec: CommandSpec, node_ids: list[str], operator: str,
                     command_id: str | None = None,
                     record: AuditEntry | None = None) -> tuple[Row, int]:
        """Store the command, send it to its nodes online here; the command and its count.

        ``node_ids`` come from ``api.visibility.resolve_targets`` (the nodes the operator
        may read); the caller checks them against policy between. ``record``, the
        call's audit record, is stored with the command, so nothing waits on it
        between the command's commit and its delivery.
        """
        if not node_ids:
            raise NoTargetsError("no registered node matches the targets")
        now = time.time()
        command: Row = dict(command_id=command_id or new_uuid(), script=spec.script,
                            comment=spec.comment,
                            targets=spec.targets, timeout=spec.timeout,
                            delivery_timeout=spec.delivery_timeout, workdir=spec.workdir,
                            output_cap=spec.output_cap, created_at=now, created_by=operator,
                            cancel_requested=False)
        rows = await self.store.create_command(command, node_ids, record)
        for inv in rows:
            self._owners[inv["invocation_id"]] = Owner(command["command_id"], inv["node_id"],
                                                       command["output_cap"])
            await self.bus.send_to_node(inv["node_id"], self._command_message(inv, command))
        return command, len(rows)

    async def cancel(self, command_id: str) -> None:
        running = await self.store.request_cancel(command_id)
        for inv in running:
            await self.bus.send_to_node(inv["node_id"], Cancel(inv["invocation_id"]))
        await self.watch.bump(command_id)

    async def deregister(self, node_id: str) -> bool:
        done = await self.store.deregister(node_id)
        if done:
            await self.disconnect_deregistered(node_id)
        return done

    async def disconnect_deregistered(self, node_id: str) -> None:
        """A revoked credential must not keep a link that was opened with it."""
        await self.bus.disconnect_node(node_id, CloseCode.DEREGISTERED,
                                       f"{node_id} was deregistered")

    @staticmethod
    def _command_message(inv: Row, command: Row) -> Command:
        return Command(invocation_id=inv["invocation_id"], command_id=command["command_id"],
                       script=command["script"], timeout=command["timeout"],
                       output_cap=command["output_cap"], workdir=command["workdir"])

    # -- agent side --------------------------------------------------------

    async def node_connected(self, conn: AgentConnection) -> None:
        await self._presence(conn.node_id, ONLINE, time.time(), conn.peer)
        for row in await self.store.deliverable(conn.node_id):
            self._owners[row["invocation_id"]] = Owner(row["command_id"], conn.node_id,
                                                       row["output_cap"])
            if row["status"] == InvocationStatus.PENDING.value:
                conn.send(self._command_message(row, row))
            elif row["cancel_requested"]:
                conn.send(Cancel(row["invocation_id"]))

    async def node_disconnected(self, conn: AgentConnection) -> None:
        await self._presence(conn.node_id, CONNECTION_LOST, conn.last_received_wall, None)

    async def _presence(self, node_id: str, status: str, seen: float,
                        peer: str | None) -> None:
        await self.writer.write("presence", dict(b_node=node_id, b_status=status,
                                                 b_seen=seen, b_peer=peer))

    async def handle(self, conn: AgentConnection, message: Message) -> None:
        if isinstance(message, Ping):
            if conn.protocol < 2:  # protocol 2 agents take the TCP ACK as the answer
                conn.send(Pong())
        elif isinstance(message, Inventory):
            # Unchanged since the last one stored from this link: not even queued. The
            # store compares with the node's stored digest too (a new link's first one).
            digest = conn.inventory_changed(message)
            if digest is None:
                return
            body: dict[str, Any] = dataclasses.asdict(message)
            written = await self.writer.write("inventories", dict(
                b_node=conn.node_id, b_inventory=body, b_primary=message.primary_address,
                b_agent_version=message.agent_version, b_name=message.computer_name,
                b_digest=digest.hex()))
            if written is Written.STORED:
                conn.inventory_stored(digest)
        elif isinstance(message, Accepted):
            # Not waited for: the link's next message (often this invocation's result)
            # is read at once instead of one group commit later. Queued before that
            # result, it is written before it (writer.py), so the order holds.
            command_id = (await self._owned(conn, message.invocation_id)).command_id
            stored = self.writer.queue("accepted", dict(b_inv=message.invocation_id,
                                                        b_at=time.time()))
            stored.add_done_callback(functools.partial(self._accepted_stored, command_id))
        elif isinstance(message, Output):
            await self._output(conn, message)
        elif isinstance(message, Result):
            await self._result(conn, message)
        elif isinstance(message, Rotated):
            if await self.store.complete_rotation(conn.node_id):
                log.info("%s: credential rotated", conn.node_id)
        elif isinstance(message, Hello):
            raise ProtocolError(CloseCode.UNEXPECTED, "hello sent twice")
        else:  # pragma: no cover - decode only yields agent messages
            raise ProtocolError(CloseCode.UNEXPECTED, f"unexpected {message.TYPE!r}")

    def _accepted_stored(self, command_id: str, stored: asyncio.Future[Written]) -> None:
        if stored.cancelled():
            return
        error = stored.exception()
        if error is not None:  # the result that follows ends the invocation anyway
            log.error("an accepted status of command %s could not be stored: %s",
                      command_id, error)
            return
        self.watch.changed(command_id)

    async def _owner(self, invocation_id: str) -> Owner | None:
        owner = self._owners.get(invocation_id)
        if owner is None:
            inv = await self.store.get_invocation(invocation_id)
            command = await self.store.get_command(inv["command_id"]) if inv else None
            if inv is not None and command is not None:
                owner = self._owners[invocation_id] = Owner(
                    inv["command_id"], inv["node_id"], command["output_cap"])
        return owner

    async def _owned(self, conn: AgentConnection, invocation_id: str) -> Owner:
        owner = await self._owner(invocation_id)
        if owner is None or owner.node_id != conn.node_id:
            raise ProtocolError(CloseCode.UNEXPECTED,
                                f"invocation {invocation_id[:40]} is not this node's")
        return owner

    async def _output(self, conn: AgentConnection, message: Output) -> None:
        owner = await self._owned(conn, message.invocation_id)
        data = message.payload()
        if message.offset + len(data) > owner.output_cap:
            raise ProtocolError(CloseCode.UNEXPECTED,
                                f"output beyond the {owner.output_cap}-byte cap")
        self.outputs.write_at(output_key(owner.command_id, conn.node_id, message.stream),
                              message.offset, data)

    async def _result(self, conn: AgentConnection, message: Result) -> None:
        owner = await self._owned(conn, message.invocation_id)
        command_id = owner.command_id
        keys = {s: output_key(command_id, conn.node_id, s) for s in ("stdout", "stderr")}
        have = {s: self.outputs.size(key) for s, key in keys.items()}
        size = {"stdout": message.stdout_size, "stderr": message.stderr_size}
        truncated = {"stdout": message.stdout_truncated, "stderr": message.stderr_truncated}
        status, exit_code, reason = message.status, message.exit_code, message.reason
        beyond = [s for s in size if size[s] > owner.output_cap]
        if beyond:
            # Output past the cap is refused (_output), so these bytes can never arrive:
            # waiting for them left the invocation InProgress until its expiry. It ends
            # now, Failed, with what did arrive.
            stream = beyond[0]
            status, exit_code = InvocationStatus.FAILED.value, None
            reason = truncate_text(
                f"the node reported {size[stream]} bytes of {stream}, more than the "
                f"{owner.output_cap}-byte output cap; it reported {message.status}, exit "
                f"code {message.exit_code}", REASON)
            log.warning("result for %s: %s", message.invocation_id, reason)
            for s in size:
                truncated[s] = truncated[s] or have[s] < size[s]
                size[s] = min(size[s], have[s])
        elif message.output_evicted:
            # The device lost part of the output; keep what did arrive, say it is cut.
            for s in size:
                truncated[s] = truncated[s] or have[s] < size[s]
                size[s] = min(size[s], have[s])
        elif have["stdout"] < size["stdout"] or have["stderr"] < size["stderr"]:
            # Not all output arrived; no ack, so the agent sends it all again next time.
            log.warning("result for %s before all output (have %s)", message.invocation_id, have)
            return
        inline = self._inline(keys, size)
        await self.writer.write("results", dict(
            b_inv=message.invocation_id, b_status=status, b_ended_at=time.time(),
            b_exit_code=exit_code, b_stdout_size=size["stdout"],
            b_stderr_size=size["stderr"], b_stdout_truncated=truncated["stdout"],
            b_stderr_truncated=truncated["stderr"], b_reason=reason,
            b_stdout_inline=inline["stdout"], b_stderr_inline=inline["stderr"]))
        # Stored (or already terminal, then dropped): either way the agent may forget it.
        conn.send(ResultAck(message.invocation_id))
        self._owners.pop(message.invocation_id, None)
        await self.watch.bump(command_id)

    def _inline(self, keys: dict[str, str], size: dict[str, int]) -> dict[str, bytes | None]:
        """Held streams go into the row; a stream held only in part goes to the blob."""
        inline: dict[str, bytes | None] = {}
        for stream, key in keys.items():
            if self.outputs.holds(key) and self.outputs.size(key) == size[stream]:
                inline[stream] = self.outputs.take(key)
            else:
                self.outputs.spill(key)
                inline[stream] = None
        return inline

    async def start_rotation(self, conn: AgentConnection) -> bool:
        """Send the node a new credential; the old one works until it says it has it.

        Agents before protocol 3 do not know ``rotate``: they keep their credential.
        """
        if conn.protocol < ROTATION_PROTOCOL or conn.closing:
            return False
        conn.send(Rotate(await self.store.begin_rotation(conn.node_id)))
        return True

    # -- housekeeping ------------------------------------------------------

    async def expire(self, now: float) -> None:
        expired = await self.store.expire_deliveries(now)
        expired += await self.store.expire_executions(now)
        commands: set[str] = set()
        for inv_id in expired:
            owner = await self._owner(inv_id)
            self._owners.pop(inv_id, None)
            if owner:
                commands.add(owner.command_id)
                for stream in ("stdout", "stderr"):  # what did arrive stays readable
                    self.outputs.spill(output_key(owner.command_id, owner.node_id, stream))
        if commands:
            await self.watch.bump(*commands)
