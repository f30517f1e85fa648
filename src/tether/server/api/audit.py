"""The audit trail: every state-changing API call and every refusal, recorded.

A middleware writes one record per call after the route ran, so the outcome is
known: who (the operator, ``activation:ID`` for a registration, ``anonymous``),
what (method and route), on what (the path's node, command, operator or token),
from which address, and how it ended. Routes add what the path does not say
(a command's script and targets) through ``note``. Reads are not recorded, except
refused ones: every 401, 403 and 429 on any route, and any answer a route gave
through ``Principal.refuse`` (a 404 hiding what the operator may not see).
WebSocket refusals are recorded by ``refuse_stream``, agent links' by the gateway,
both through ``AuditLog.refused``. Refused and failed calls go through
``AuditLog.append_or_count``: identical repeats within a window are one record and
a count.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.requests import HTTPConnection

from tether.server.access.audit_chain import CHECKPOINT_PARAM, Checkpoint
from tether.server.api import models, params
from tether.server.api.audit_note import REFUSED, noted
from tether.server.api.auth import Principal, Who, authenticate
from tether.server.api.errors import ApiError
from tether.server.api.routes import ERRORS, State
from tether.server.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["audit"])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSAL_STATUSES = frozenset({401, 403, 429})
TARGET_PARAMS = ("node_id", "command_id", "name", "token_id", "activation_id")


def outcome_of(status: int, refused: bool = False) -> str:
    if refused or status in REFUSAL_STATUSES:
        return "denied"
    return "ok" if status < 400 else "failed"


async def record_call(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    try:
        response = await call_next(request)
    except Exception:
        # A route that crashed may still have changed something: record it, then let
        # the error take its course (a 500 to the client, the traceback in the log).
        await _record(request, 500)
        raise
    await _record(request, response.status_code)
    return response


async def _principal(request: Request, status: int) -> Principal | None:
    """Who made the call; resolved here when no route did (a 405, an unknown path)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if (principal is None and status not in (401, 429) and request.headers.get("authorization")
            and not hasattr(request.state, "audit_actor")):
        try:
            principal = await authenticate(request)
        except ApiError:
            return None
    return principal


async def _record(request: Request, status: int) -> None:
    detail = noted(request)
    refused = REFUSED in detail
    if not request.url.path.startswith("/api/v1/") or (
            request.method in SAFE_METHODS and status not in REFUSAL_STATUSES
            and not refused):
        return
    route = request.scope.get("route")
    action = f"{request.method} {getattr(route, 'path', request.url.path)}"
    s: ServerState = request.app.state.tether
    try:
        principal = await _principal(request, status)
        actor = (principal.operator if principal is not None
                 else getattr(request.state, "audit_actor", "anonymous"))
        params = request.path_params
        target = next((str(params[p]) for p in TARGET_PARAMS if p in params), None)
        detail = {"status": status, **detail}
        await s.store.audit.append_or_count(
            actor=actor, action=action, outcome=outcome_of(status, refused),
            target=target or detail.get("target"),
            source=request.client.host if request.client else None, detail=detail,
            authenticated=principal is not None)
    except Exception:  # the call already happened; say loudly that its record did not
        log.exception("audit record for %s could not be written", action)


async def refuse_stream(conn: HTTPConnection, code: str, reason: str) -> None:
    """Record a refused WebSocket (a session stream): the middleware never sees one.

    The actor is the operator whose token the stream carried (``anonymous`` if none
    was valid); repeats are counted like any refusal's.
    """
    s: ServerState = conn.app.state.tether
    principal: Principal | None = getattr(conn.state, "principal", None)
    route = getattr(conn.scope.get("route"), "path", conn.url.path)
    await s.store.audit.refused(
        actor=principal.operator if principal is not None else "anonymous",
        action=f"WS {route}", reason=noted(conn).get(REFUSED, reason),
        source=conn.client.host if conn.client else None,
        detail={"error": code, **{k: str(v)[:100] for k, v in conn.path_params.items()}},
        authenticated=principal is not None)


@router.get("/audit", response_model=list[models.AuditRecord], responses=ERRORS)
async def list_audit(s: State, who: Who, since: params.TimeQuery = None,
                     actor: params.AuditQuery = None, target: params.AuditQuery = None,
                     action: params.AuditQuery = None,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                     ) -> list[dict[str, Any]]:
    """The newest ``limit`` records matching, oldest first."""
    who.require("audit:read")
    return await s.store.audit.find(since=since, actor=actor, target=target, action=action,
                                    limit=limit)


@router.get("/audit/verify", response_model=models.AuditVerdict, responses=ERRORS)
async def verify_audit(
        s: State, who: Who,
        checkpoint: Annotated[str | None, Query(
            pattern=CHECKPOINT_PARAM, max_length=200,
            description="a checkpoint `tether audit export` ended with, as SEQ:HASH:AT:MAC "
                        "(its seq, hash, at and mac, in that order): the log must still "
                        "hold that record, with that hash")] = None,
) -> dict[str, Any]:
    """Recompute the whole hash chain; name the first record that does not fit.

    Also compared: this server's anchor (DATA/audit-anchor: the newest record it
    wrote) and, if given, a checkpoint from ``tether audit export``: a log that ends
    before either is *truncated*. When intact, the answer carries a new checkpoint.
    The checkpoint is one parameter, so it is given whole or not at all.
    """
    who.require("audit:read")
    verdict = await s.store.audit.verify(
        Checkpoint.from_param(checkpoint) if checkpoint is not None else None)
    signed = s.store.audit.checkpoint(verdict)
    return {"ok": verdict.ok, "records": verdict.records, "problem": verdict.problem,
            "seq": verdict.seq, "state": verdict.state, "anchored": verdict.anchored,
            "checkpoint": signed.as_dict() if signed else None}
