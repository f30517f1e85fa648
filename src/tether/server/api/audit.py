"""The audit trail: every state-changing API call and every refusal, recorded.

A middleware (api/audit_record.py) writes one record per call once the route has
answered, before the answer is sent, so the outcome is known: who (the operator,
``activation:ID`` for a registration, ``anonymous``), what (method and route), on
what (the path's node, command, operator or token), from which address, and how it
ended. ``POST /commands`` writes its record in the transaction that stores the
command, before delivery starts. Routes add what the path does not say
(a command's script and targets) through ``note``. Reads are not recorded, except
refused ones: every 401, 403 and 429 on any route, and any answer a route gave
through ``Principal.refuse`` (a 404 hiding what the operator may not see).
WebSocket refusals are recorded by ``refuse_stream``, agent links' by the gateway,
both through ``AuditLog.refused``. Refused and failed calls go through
``AuditLog.append_or_count``: identical repeats within a window are one record and
a count.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import HTTPConnection

from tether.server.access.audit_chain import CHECKPOINT_PARAM, Checkpoint
from tether.server.api import models, params
from tether.server.api.audit_note import REFUSED, noted
from tether.server.api.auth import Principal, Who
from tether.server.api.routes import ERRORS, State
from tether.server.state import ServerState

router = APIRouter(prefix="/api/v1", tags=["audit"])


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
