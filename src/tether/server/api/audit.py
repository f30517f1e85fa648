"""The audit trail: every state-changing API call and every refused token, recorded.

A middleware writes one record per call after the route ran, so the outcome is
known: who (the operator, ``activation:ID`` for a registration, ``anonymous``),
what (method and route), on what (the path's node, command, operator or token),
from which address, and how it ended. Routes add what the path does not say
(a command's script and targets) through ``note``. Reads are not recorded,
except a refused token on any route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from tether.server.api import models
from tether.server.api.auth import Who
from tether.server.api.routes import ERRORS, State
from tether.server.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["audit"])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TARGET_PARAMS = ("node_id", "command_id", "name", "token_id", "activation_id")


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403, 429) else "failed"


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


async def _record(request: Request, status: int) -> None:
    if not request.url.path.startswith("/api/v1/") or (
            request.method in SAFE_METHODS and status != 401):
        return
    route = request.scope.get("route")
    action = f"{request.method} {getattr(route, 'path', request.url.path)}"
    principal = getattr(request.state, "principal", None)
    actor = (principal.operator if principal is not None
             else getattr(request.state, "audit_actor", "anonymous"))
    params = request.path_params
    target = next((str(params[p]) for p in TARGET_PARAMS if p in params), None)
    detail = {"status": status, **getattr(request.state, "audit", {})}
    s: ServerState = request.app.state.tether
    try:
        await s.store.audit.append(actor=actor, action=action, outcome=outcome_of(status),
                                   target=target or detail.get("target"),
                                   source=request.client.host if request.client else None,
                                   detail=detail)
    except Exception:  # the call already happened; say loudly that its record did not
        log.exception("audit record for %s by %s could not be written", action, actor)


@router.get("/audit", response_model=list[models.AuditRecord], responses=ERRORS)
async def list_audit(s: State, who: Who, since: float | None = None,
                     actor: str | None = None, target: str | None = None,
                     action: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                     ) -> list[dict[str, Any]]:
    """The newest ``limit`` records matching, oldest first."""
    who.require("audit:read")
    return await s.store.audit.find(since=since, actor=actor, target=target, action=action,
                                    limit=limit)


@router.get("/audit/verify", response_model=models.AuditVerdict, responses=ERRORS)
async def verify_audit(s: State, who: Who) -> dict[str, Any]:
    """Recompute the whole hash chain; name the first record that does not fit."""
    who.require("audit:read")
    verdict = await s.store.audit.verify()
    return {"ok": verdict.ok, "records": verdict.records, "problem": verdict.problem,
            "seq": verdict.seq}
