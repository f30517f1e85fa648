"""Operator endpoints. Each is thin: parse, call the store or dispatcher, shape.

Every route but registration needs an operator token; registration is
authenticated by the activation code instead.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from tether import __version__
from tether.protocol.ids import new_uuid
from tether.protocol.script_line import script_line
from tether.protocol.statuses import CommandStatus, InvocationStatus, command_status
from tether.server.access.client_address import client_host
from tether.server.access.policy import Node, RetagRefusal, new_node_refusal, retag_refusal
from tether.server.api import models, params
from tether.server.api.audit_note import note
from tether.server.api.audit_record import entry as audit_entry
from tether.server.api.audit_record import written as audit_written
from tether.server.api.auth import Principal, Who
from tether.server.api.errors import ApiError
from tether.server.api.visibility import (
    can_read,
    hidden,
    reach_of,
    readable_filter,
    require_nodes,
    resolve_targets,
    split_online,
    visible_node,
)
from tether.server.blobs import output_key
from tether.server.dispatch.dispatcher import CommandSpec, NoTargetsError
from tether.server.dispatch.targets import TargetError, parse_tag, parse_targets
from tether.server.sessions.authority import SessionFilter
from tether.server.state import ServerState
from tether.server.store import NodeFilter, RegistrationError
from tether.server.store.command_filter import CommandFilter

WRONG_CODE = "invalid_activation"

router = APIRouter(prefix="/api/v1")
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.ErrorBody}, 401: {"model": models.ErrorBody},
    403: {"model": models.ErrorBody}, 404: {"model": models.ErrorBody}}


def state(request: Request) -> ServerState:
    s: ServerState = request.app.state.tether
    return s


State = Annotated[ServerState, Depends(state)]


@router.post("/registrations", status_code=201, response_model=models.RegistrationResponse,
             responses={403: {"model": models.ErrorBody}, 429: {"model": models.ErrorBody}},
             tags=["agents"])
async def register(body: models.RegistrationRequest, s: State,
                   request: Request) -> dict[str, Any]:
    """Register a device with an activation id and code (called by tether-agent)."""
    request.state.audit_actor = f"activation:{body.activation_id}"
    source, now = client_host(request), time.monotonic()
    wait = s.registration_throttle.wait(source, body.activation_id, now)
    if wait is not None:
        raise ApiError(429, "too_many_failed_registrations",
                       f"too many failed registration attempts; try again in "
                       f"{wait:.0f} s", headers={"Retry-After": str(max(1, round(wait)))})
    note(request, computer_name=body.computer_name,
         replaces=body.replaces.node_id if body.replaces else None)
    replaces = (body.replaces.node_id, body.replaces.credential) if body.replaces else None
    try:
        node, credential = await s.store.register_node(
            activation_id=body.activation_id, code=body.activation_code,
            computer_name=body.computer_name, replaces=replaces)
    except RegistrationError as exc:
        if exc.code == WRONG_CODE:  # expired, revoked, used up: the code was right
            s.registration_throttle.guessed_wrong(source, body.activation_id, now)
        raise ApiError(403, exc.code, str(exc)) from None
    note(request, target=node["node_id"])
    if node["replaced"]:
        await s.dispatcher.disconnect_deregistered(node["replaced"])
    return {"node_id": node["node_id"], "credential": credential, "name": node["name"]}


@router.get("/whoami", response_model=models.WhoAmI, responses=ERRORS, tags=["operators"])
async def whoami(who: Who) -> dict[str, Any]:
    return {"operator": who.operator, "roles": list(who.roles),
            "statements": [st.as_dict() for st in who.policy.statements],
            "server_version": __version__}


@router.post("/activations", status_code=201, response_model=models.CreatedActivation,
             responses=ERRORS, tags=["activations"])
async def create_activation(body: models.ActivationRequest, s: State,
                            who: Who, request: Request) -> dict[str, Any]:
    who.require("activations:create")
    refusal = new_node_refusal(who.policy, body.tags)
    if refusal is not None:  # its nodes carry the tags from the start: as a retag would
        raise _retag_refused(who, "create an activation tagged " + _tags(body.tags), refusal)
    row, code = await s.store.create_activation(
        limit=body.registration_limit, expires_at=time.time() + body.expires_in,
        tags=body.tags, name_prefix=body.name_prefix)
    note(request, target=row["activation_id"], limit=body.registration_limit,
         tags=body.tags)
    tls = s.settings.tls  # how devices must dial: the CLI prints the line that works
    return {**row, "activation_code": code,
            "private_ca_fingerprint": tls.fingerprint() if tls else None}


@router.get("/activations", response_model=list[models.Activation], responses=ERRORS,
            tags=["activations"])
async def list_activations(s: State, who: Who) -> list[dict[str, Any]]:
    who.require("activations:read")
    return await s.store.list_activations()


@router.delete("/activations/{activation_id}", response_model=models.Activation,
               responses=ERRORS, tags=["activations"])
async def revoke_activation(activation_id: params.IdPath, s: State, who: Who) -> dict[str, Any]:
    """Refuse every later registration with this activation (registered nodes stay)."""
    who.require("activations:revoke")
    row = await s.store.revoke_activation(activation_id)
    if row is None:
        raise ApiError(404, "activation_not_found", f"no activation {activation_id}")
    return row


@router.get("/nodes", response_model=list[models.Node], responses=ERRORS, tags=["nodes"])
async def list_nodes(s: State, who: Who,
                     ping_status: Annotated[models.PingStatus | None, Query(description=(
                         "Deregistered lists the deregistered nodes, which are left "
                         "out otherwise"))] = None,
                     tag: Annotated[list[models.TagSelector] | None, Query(max_length=50)] = None,
                     name: params.TextQuery = None, activation_id: params.IdQuery = None,
                     ip: params.AddressQuery = None) -> list[dict[str, Any]]:
    try:
        tags = tuple(parse_tag(t) for t in tag or [])
    except TargetError as exc:
        raise ApiError(400, "bad_tag", str(exc)) from None
    return await s.store.list_nodes(readable_filter(who, NodeFilter(
        ping_status=ping_status, tags=tags, name=name, activation_id=activation_id, ip=ip)))


async def _node(s: ServerState, node_id: str) -> dict[str, Any]:
    """The node just changed, read back for the answer."""
    node = await s.store.get_node(node_id)
    assert node is not None  # nodes are never deleted, only deregistered
    return node


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "nothing"


def _retag_refused(who: Principal, what: str, refusal: RetagRefusal) -> ApiError:
    return ApiError(403, "forbidden", f"operator {who.operator} may not {what}: "
                    f"{refusal.reasons()} (a change of tags may not widen its own reach)")


@router.get("/nodes/{node_id}", response_model=models.Node, responses=ERRORS, tags=["nodes"])
async def show_node(node_id: params.NodeIdPath, s: State, who: Who,
                    request: Request) -> dict[str, Any]:
    return await visible_node(request, s, who, node_id)


@router.patch("/nodes/{node_id}/tags", response_model=models.Node, responses=ERRORS,
              tags=["nodes"])
async def tag_node(node_id: params.NodeIdPath, body: models.TagsUpdate, s: State,
                   who: Who, request: Request) -> dict[str, Any]:
    """Needs ``nodes:tag`` on the node as it is and as it would be, and may not allow this
    operator anything on the node it may not do now: tags grant access."""
    node = await visible_node(request, s, who, node_id, "nodes:tag")
    who.require_node("nodes:tag", node)

    def check(before: dict[str, str], after: dict[str, str]) -> None:
        """Run under the node's lock, on the tags the change really applies to."""
        refusal = retag_refusal(who.policy, Node(node_id, before), Node(node_id, after))
        if refusal is not None:
            raise _retag_refused(who, f"retag {node_id} to {_tags(after)}", refusal)

    note(request, set=body.set, remove=body.remove)
    await s.store.set_tags(node_id, body.set, body.remove, check)
    # Tags grant access: sessions on the node that no longer may go on end now.
    await s.bus.review_sessions(SessionFilter(node_id=node_id), actor=who.operator)
    return await _node(s, node_id)


@router.delete("/nodes/{node_id}", response_model=models.Node, responses=ERRORS,
               tags=["nodes"])
async def deregister_node(node_id: params.NodeIdPath, s: State, who: Who,
                          request: Request) -> dict[str, Any]:
    """Revoke the node's credential and close its connection at once."""
    node = await visible_node(request, s, who, node_id, "nodes:deregister")
    who.require_node("nodes:deregister", node)
    if node["deregistered_at"] is not None:
        raise ApiError(404, "node_not_found", f"{node_id} is already deregistered")
    await s.dispatcher.deregister(node_id)
    return await _node(s, node_id)


def _command_not_found(command_id: str) -> ApiError:
    return ApiError(404, "command_not_found", f"no command {command_id}")


async def _require_command(request: Request, s: ServerState, who: Principal, action: str,
                           command_id: str) -> None:
    """A command on a node the operator may not read is answered as a missing command."""
    if reach_of(who, action):
        nodes = (await s.store.command_nodes([command_id]))[command_id]
        await require_nodes(request, s, who, action, nodes, _command_not_found(command_id))


@router.post("/nodes/{node_id}/rotate-credential", status_code=202,
             response_model=models.Node, responses={**ERRORS, 409: {"model": models.ErrorBody}},
             tags=["nodes"])
async def rotate_credential(node_id: params.NodeIdPath, s: State, who: Who,
                            request: Request) -> dict[str, Any]:
    """Give the connected node a new credential; the old one stops once the agent has it.

    Needs the node connected with an agent that speaks protocol 3 (409 otherwise).
    Scheduled rotation does the same for credentials older than
    ``tether server --credential-max-age``.
    """
    node = await visible_node(request, s, who, node_id, "nodes:rotate-credential")
    who.require_node("nodes:rotate-credential", node)
    conn = s.registry.get(node_id)
    if conn is None:
        raise ApiError(409, "node_offline", f"{node_id} is not connected; rotation needs it "
                       "online (its credential stays as it is)")
    if not await s.dispatcher.start_rotation(conn):
        raise ApiError(409, "agent_too_old", f"{node_id} speaks protocol {conn.protocol}; "
                       "credential rotation needs protocol 3 (a newer tether-agent)")
    return node


def _summary(command: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    typed = {InvocationStatus(k): v for k, v in counts.items()}
    return {**command, "counts": counts, "script_line": script_line(command["script"]),
            "status": command_status(typed, command["cancel_requested"]).value}


async def _detail(s: ServerState, command_id: str) -> dict[str, Any]:
    # Order matters: the version before the data (a waiter never misses a change),
    # and the invocations before the command, so a cancel landing in between reads
    # as Cancelling rather than as a Cancelled invocation of an uncancelled command.
    # Counts come from the same rows the response lists, so the two always agree.
    version = s.watch.version(command_id)
    invocations = await s.store.list_invocations(command_id)
    command = await s.store.get_command(command_id)
    if command is None:
        raise _command_not_found(command_id)
    counts: dict[str, int] = {}
    for inv in invocations:
        counts[inv["status"]] = counts.get(inv["status"], 0) + 1
    return {**_summary(command, counts), "version": version, "invocations": invocations}


@router.post("/commands", status_code=201, response_model=models.CreatedCommand,
             responses=ERRORS, tags=["commands"])
async def run_command(body: models.CommandRequest, s: State, who: Who, request: Request,
                      invocations: bool = True) -> dict[str, Any]:
    """Store a command and deliver it to every target now online (others wait).

    ``invocations=false`` answers with the counts alone, from what was just stored
    and without reading it back: to a fan-out to 10,000 nodes the full answer is
    2.7 MB, and reading it back let the first results queue ahead of the reply.
    Every target node must allow ``commands:send``, or nothing is sent. Targets reach
    only nodes this operator may read (``all`` is all of those): any other node id is
    answered as one that does not exist. ``online_only`` keeps the targets Online now;
    the answer counts the targets it left out, or (without it) those that wait offline.
    """
    note(request, script=body.script, targets=body.targets)
    try:
        targets = parse_targets(body.targets)
        spec = CommandSpec(script=body.script, targets=body.targets, timeout=body.timeout,
                           delivery_timeout=body.delivery_timeout,
                           output_cap=(s.settings.output_cap if body.output_cap is None
                                       else body.output_cap),
                           workdir=body.workdir, comment=body.comment)
        node_ids = await resolve_targets(request, s, who, targets, "commands:send")
        online, offline = await split_online(s, node_ids)
        left_out = offline if body.online_only else []
        if body.online_only:
            if not online:
                raise NoTargetsError(f"none of the {len(node_ids)} node(s) the targets match "
                                     "is Online (online_only)")
            node_ids, offline = online, []
        await require_nodes(request, s, who, "commands:send", node_ids,
                            NoTargetsError("no registered node matches the targets"))
        # The record of this call goes in with the command (the answer is 201 from
        # here on), so the command's delivery never waits for it.
        command_id = new_uuid()
        note(request, target=command_id, nodes=len(node_ids),
             **({"left_out": len(left_out)} if body.online_only else {}))
        record = await audit_entry(request, 201)
        command, count = await s.dispatcher.submit(spec, node_ids, who.operator,
                                                   command_id, record)
        audit_written(request)
    except TargetError as exc:
        raise ApiError(400, "bad_targets", str(exc)) from None
    except NoTargetsError as exc:  # well-formed targets that name no registered node
        raise ApiError(404, "bad_targets", str(exc)) from None
    waits = {"offline": len(offline), "left_out": len(left_out)}
    if not invocations:
        return {**_summary(command, {InvocationStatus.PENDING.value: count}), **waits,
                "version": s.watch.version(command["command_id"]), "invocations": []}
    return {**await _detail(s, command["command_id"]), **waits}


@router.get("/commands", response_model=list[models.CommandSummary], responses=ERRORS,
            tags=["commands"])
async def list_commands(s: State, who: Who,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                        node_id: params.NodeIdQuery = None,
                        status: CommandStatus | None = None,
                        since: params.TimeQuery = None,
                        operator: params.AuditQuery = None,
                        before: params.IdQuery = None,
                        ) -> list[dict[str, Any]]:
    """The newest commands, newest first, that match every filter given: on
    ``node_id``, with the status ``status``, created at or after ``since`` (Unix
    seconds), by ``operator``, listed after the command ``before`` (the last id of a
    page: the next page). Only commands whose every node allows ``commands:read`` and
    ``nodes:read`` (a node it may not read is not there). All decided before the
    limit, so a page is full when more match.

    With ``node_id``, each carries ``invocation``: the one on that node (its history).
    """
    f = CommandFilter(node_id=node_id, status=status, since=since, operator=operator,
                      before=before)
    rows = await s.store.list_commands(limit, f, reach_of(who, "commands:read"))
    ids = [r["command_id"] for r in rows]
    counts = await s.store.status_counts(ids)
    on = await s.store.invocations_on(node_id, ids) if node_id else {}
    return [{**_summary(r, counts[r["command_id"]]), "invocation": on.get(r["command_id"])}
            for r in rows]


@router.get("/commands/{command_id}", response_model=models.CommandDetail, responses=ERRORS,
            tags=["commands"])
async def show_command(command_id: params.IdPath, s: State, who: Who, request: Request,
                       after: params.VersionQuery = None,
                       wait: Annotated[float, params.number(0, 60)] = 0,
                       invocations: bool = True,
                       ) -> dict[str, Any]:
    """With ``after`` and ``wait``, answer once the command changed past version ``after``.

    ``invocations=false`` leaves the per-node list out (counts stay): what a client
    following a fan-out to thousands of nodes needs on every change.
    """
    await _require_command(request, s, who, "commands:read", command_id)
    if after is not None and wait > 0:
        await s.watch.wait(command_id, after, wait)
    if invocations:
        return await _detail(s, command_id)
    version = s.watch.version(command_id)
    command = await s.store.get_command(command_id)
    if command is None:
        raise _command_not_found(command_id)
    counts = (await s.store.status_counts([command_id]))[command_id]
    return {**_summary(command, counts), "version": version, "invocations": []}


@router.post("/commands/{command_id}/cancel", response_model=models.CommandDetail,
             responses=ERRORS, tags=["commands"])
async def cancel_command(command_id: params.IdPath, s: State, who: Who,
                         request: Request) -> dict[str, Any]:
    await _detail(s, command_id)
    await _require_command(request, s, who, "commands:cancel", command_id)
    await s.dispatcher.cancel(command_id)
    return await _detail(s, command_id)


@router.get("/commands/{command_id}/invocations/{node_id}/{stream}", responses=ERRORS,
            tags=["commands"], response_class=Response,
            response_description="the stream's bytes, whole")
async def invocation_output(command_id: params.IdPath, node_id: params.NodeIdPath,
                            stream: params.WordPath, s: State,
                            who: Who, request: Request) -> Response:
    if stream not in ("stdout", "stderr"):
        raise ApiError(404, "stream_not_found", "stream is stdout or stderr")
    inv = await s.store.find_invocation(command_id, node_id)
    missing = ApiError(404, "invocation_not_found",
                       f"command {command_id} has no invocation on {node_id}")
    if inv is None:
        raise missing
    node = await s.store.get_node(node_id)
    if node is None or not can_read(who, node):  # no invocation there that it may know of
        raise hidden(request, who, "commands:read-output", [node_id], missing)
    who.require_node("commands:read-output", node)
    key = output_key(command_id, node_id, stream)
    data = inv[f"{stream}_inline"]
    if data is None:
        data = s.dispatcher.outputs.peek(key)  # still running: held until its result
    if data is None:
        data = s.blobs.read(key)
    size = inv[f"{stream}_size"]
    if size is not None:
        data = data[:size]
    return Response(data, media_type="application/octet-stream")
