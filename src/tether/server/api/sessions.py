"""Session endpoints: start, list, show, replay, terminate, and the stream itself.

A session is started with ``POST /api/v1/sessions`` (policy checked, audited)
and carried by one or more WebSocket streams on
``/api/v1/sessions/{id}/stream``, each one channel on the node's link: a
shell has one, a forward one per tunnelled connection, a copy one per
attempt (a resumed copy opens another). Only the operator who started a
session may stream on it, and only while the session may go on: every new
stream is checked against the store as it is now (``sessions/authority.py``),
and a session that may no longer go on is ended with its reason.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import PlainTextResponse

from tether.server.api import models, params
from tether.server.api.audit import refuse_stream
from tether.server.api.audit_note import note
from tether.server.api.auth import Principal, Who, authenticate
from tether.server.api.errors import ApiError
from tether.server.api.visibility import can_read, hidden, reach_of, visible_node
from tether.server.sessions.authority import ACTION_OF_KIND, SESSION_ENDED
from tether.server.sessions.manager import LiveSession, SessionError
from tether.server.sessions.relay import relay
from tether.server.state import ServerState
from tether.server.store.sessions import FAILED, TERMINATED

router = APIRouter(prefix="/api/v1", tags=["sessions"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": models.ErrorBody} for s in (400, 401, 403, 404, 409)}


def state(request: Request) -> ServerState:
    s: ServerState = request.app.state.tether
    return s


State = Annotated[ServerState, Depends(state)]


def _target(body: models.SessionRequest) -> dict[str, Any]:
    """What the session reaches, checked for its kind; stored and audited as is."""
    if body.kind == "shell":
        return {"user": body.user, "rows": body.rows, "cols": body.cols, "term": body.term}
    if body.kind == "forward":
        if body.host is None or body.port is None:
            raise ApiError(400, "bad_session", "a forward needs host and port")
        return {"host": body.host, "port": body.port}
    if body.direction is None or body.path is None:
        raise ApiError(400, "bad_session", "a copy needs direction and path")
    if body.direction == "to_node" and (body.size is None or body.sha256 is None):
        raise ApiError(400, "bad_session", "a copy to the node needs size and sha256")
    return {"direction": body.direction, "path": body.path, "size": body.size,
            "sha256": body.sha256, "mode": body.mode, "force": body.force}


async def _node_for(request: Request, s: ServerState, who: Principal, node_id: str,
                    action: str) -> None:
    """A node the operator may not read is answered as a missing one (visibility.py)."""
    node = await visible_node(request, s, who, node_id, action, registered=True)
    who.require_node(action, node)


def _no_session(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"no session {session_id[:100]}")


async def _session_node_allows(request: Request, s: ServerState, who: Principal,
                               row: dict[str, Any], action: str) -> None:
    """``action`` on another operator's session is checked on its node; a session on a
    node ``who`` may not read is answered as a missing session."""
    node = await s.store.get_node(row["node_id"])
    if node is None or not can_read(who, node):
        raise hidden(request, who, action, [row["node_id"]], _no_session(row["session_id"]))
    who.require_node(action, node)


def _shape(row: dict[str, Any], live: LiveSession | None) -> dict[str, Any]:
    out = dict(row)
    if live is not None:
        out["bytes_to_node"], out["bytes_from_node"] = live.bytes_to_node, live.bytes_from_node
    return out


@router.post("/sessions", status_code=201, response_model=models.Session, responses=ERRORS)
async def start_session(body: models.SessionRequest, s: State, who: Who,
                        request: Request) -> dict[str, Any]:
    """Start a shell, forward or copy on a node (it must be connected)."""
    await _node_for(request, s, who, body.node_id, ACTION_OF_KIND[body.kind])
    if body.user is not None:
        await _node_for(request, s, who, body.node_id, "sessions:choose-user")
    target = _target(body)
    try:
        live = await s.sessions.start(node_id=body.node_id, operator=who.operator,
                                      token_id=who.token_id, kind=body.kind, target=target)
    except SessionError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    # This call's audit record is the session's start record.
    note(request, session_id=live.session_id, kind=body.kind, target=body.node_id,
         reaches=target, recording=live.row["recording"])
    return _shape(live.row, live)


@router.get("/sessions", response_model=list[models.Session], responses=ERRORS)
async def list_sessions(s: State, who: Who,
                        node_id: params.NodeIdQuery = None,
                        operator: params.NameQuery = None,
                        active: bool | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        ) -> list[dict[str, Any]]:
    """Recent sessions, newest first, on the nodes this operator may read, and read
    sessions of."""
    rows = await s.store.sessions.find(
        node_ids=[node_id] if node_id else None, operator=operator, active=active,
        limit=limit, reach=reach_of(who, "sessions:read"))
    return [_shape(r, s.sessions.live.get(r["session_id"])) for r in rows]


async def _readable_session(request: Request, s: ServerState, who: Principal, session_id: str,
                            action: str = "sessions:read") -> dict[str, Any]:
    """The session, if it is ``who``'s own or ``action`` is allowed on its node."""
    row = await s.store.sessions.get(session_id)
    if row is None:
        raise _no_session(session_id)
    if row["operator"] != who.operator:
        await _session_node_allows(request, s, who, row, action)
    return row


@router.get("/sessions/{session_id}", response_model=models.Session, responses=ERRORS)
async def show_session(session_id: params.IdPath, s: State, who: Who,
                       request: Request) -> dict[str, Any]:
    row = await _readable_session(request, s, who, session_id)
    return _shape(row, s.sessions.live.get(session_id))


@router.get("/sessions/{session_id}/recording", response_class=PlainTextResponse,
            responses={**{s: {"model": models.ErrorBody, "content": {"application/json": {}}}
                          for s in (401, 403, 404)},
                       200: {"content": {"application/x-asciicast": {}}}})
async def session_recording(session_id: params.IdPath, s: State, who: Who,
                            request: Request) -> PlainTextResponse:
    """The shell's recording, asciicast v2 (replay it with ``tether sessions replay``).

    What the device printed, so an action of its own: ``sessions:read`` (the viewer's)
    shows who had which session, never its output. Its own operator saw it live."""
    row = await _readable_session(request, s, who, session_id, "sessions:read-recording")
    if not row["recording"]:
        raise ApiError(404, "recording_not_found", f"session {session_id} is a {row['kind']}; only "
                       "shells are recorded")
    data = s.blobs.read(row["recording"])
    return PlainTextResponse(data.decode("utf-8", "replace"),
                             media_type="application/x-asciicast")


@router.post("/sessions/{session_id}/terminate", response_model=models.Session,
             responses=ERRORS)
async def terminate_session(session_id: params.IdPath, s: State, who: Who, request: Request,
                            body: models.TerminateRequest | None = None) -> dict[str, Any]:
    """End a session: its own operator may, and so may whoever has sessions:terminate."""
    row = await _readable_session(request, s, who, session_id, "sessions:terminate")
    note(request, target=row["node_id"])
    live = s.sessions.live.get(session_id)
    if live is not None:
        failed = body is not None and body.failed
        if failed and row["operator"] == who.operator:
            # Its own client saw it fail (a copy that could not complete): the reason is
            # what failed ("copy failed: ..."), not that its operator chose to end it.
            reason = (body.reason if body is not None and body.reason else "failed")
        else:
            reason = ("ended by its operator" if row["operator"] == who.operator
                      else f"terminated by {who.operator}")
            if body is not None and body.reason:
                reason = f"{reason}: {body.reason}"
        status = FAILED if failed else TERMINATED
        await s.sessions.end(live, status, reason, actor=who.operator)
    updated = await s.store.sessions.get(session_id)
    assert updated is not None
    return updated


@router.websocket("/sessions/{session_id}/stream")
async def session_stream(websocket: WebSocket, session_id: params.IdPath,
                         offset: Annotated[int, params.number(0, params.MAX_INT)] = 0,
                         ) -> None:
    """One channel of the session. See docs/protocol.md, "Operator streams"."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    await websocket.accept(subprotocol="tether" if "tether" in offered else None)
    s: ServerState = websocket.app.state.tether
    try:
        who = await authenticate(websocket)
    except ApiError as exc:
        await _refuse(websocket, exc.code, exc.message)
        return
    live = s.sessions.live.get(session_id)
    if live is None or live.operator != who.operator:
        await _refuse(websocket, *await _not_open(s, who, session_id))
        return
    if live.kind == "shell" and live.channels:
        await _refuse(websocket, "already_attached", "this shell is already attached")
        return
    try:
        kind, params = _channel_of(live, offset)
        channel = await s.sessions.channel(live, kind, who.token_id, **params)
    except SessionError as exc:
        await _refuse(websocket, exc.code, str(exc))
        return
    try:
        outcome = await relay(websocket, channel, live)
    finally:
        live.channels.pop(channel, None)
    if live.kind == "shell" or (live.kind == "copy" and outcome.clean):
        await s.sessions.end(live, TERMINATED, outcome.reason if live.kind == "shell"
                             else "copy complete", actor=who.operator,
                             exit_code=outcome.exit_code)
    with contextlib.suppress(Exception):  # the operator may be gone already
        await websocket.close(1000)


def _channel_of(live: LiveSession, offset: int) -> tuple[str, dict[str, Any]]:
    """The channel kind a stream of this session opens, and its ``open`` fields."""
    t = live.row["target"]
    if live.kind == "shell":
        return "shell", {"user": t.get("user"), "rows": t.get("rows"), "cols": t.get("cols"),
                         "term": t.get("term")}
    if live.kind == "forward":
        return "tcp", {"host": t["host"], "port": t["port"]}
    if t["direction"] == "from_node":
        return "file_read", {"path": t["path"], "offset": offset}
    return "file_write", {"path": t["path"], "size": t["size"], "sha256": t["sha256"],
                          "mode": t.get("mode"), "force": bool(t.get("force"))}


async def _not_open(s: ServerState, who: Principal, session_id: str) -> tuple[str, str]:
    """Why there is no live session ``session_id`` of ``who`` to stream on: its own
    operator learns how it ended; anyone else learns nothing about it."""
    row = await s.store.sessions.get(session_id)
    if row is not None and row["operator"] == who.operator and row["ended_at"] is not None:
        return SESSION_ENDED, f"session {session_id} ended: {row['end_reason']}"
    return "session_not_found", f"no open session {session_id[:100]} of {who.operator}"


async def _refuse(websocket: WebSocket, code: str, message: str) -> None:
    """The stream does not open: ``code`` is the stable name a client switches on
    (``session_ended``: the session is over, so a forward stops listening)."""
    await refuse_stream(websocket, code, message)  # audited, as every refusal is
    await websocket.send_text(json.dumps({"t": "closed", "error": message, "code": code}))
    await websocket.close(1008)
