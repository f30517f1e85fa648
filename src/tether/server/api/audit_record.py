"""The audit record of an HTTP call: decided from the call, written before its answer.

See api/audit.py for what is recorded and why. Here: ``entry`` (the record a call
gets, or none), ``AuditMiddleware`` (writes it as the answer starts), ``written``
(a route that stored its record itself, with what it did).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.server.api.audit_note import REFUSED, noted
from tether.server.api.auth import Principal, authenticate
from tether.server.api.errors import ApiError
from tether.server.state import ServerState
from tether.server.store.audit import AuditEntry

__all__ = ["AuditMiddleware", "entry", "outcome_of", "written"]

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSAL_STATUSES = frozenset({401, 403, 429})
TARGET_PARAMS = ("node_id", "command_id", "name", "token_id", "activation_id")


def outcome_of(status: int, refused: bool = False) -> str:
    if refused or status in REFUSAL_STATUSES:
        return "denied"
    return "ok" if status < 400 else "failed"


class AuditMiddleware:
    """Record each call before its answer leaves: a plain ASGI middleware.

    Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``) ran every call,
    reads included, through a task and a pair of memory streams, and wrote the
    record after the route, where ``POST /commands`` to 10,000 nodes waited behind
    the results already arriving (3-4 s of its 4.5 s). Here the record is written
    when the answer's status is known, before its first byte is sent, so a client
    that has the answer can read the record; a route that wrote its record itself
    (``written``: a command, in the transaction that stores it) is not recorded twice.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        recorded = False

        async def send_after_record(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await _record(request, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_after_record)
        except Exception:
            # A route that crashed may still have changed something: record it, then let
            # the error take its course (a 500 to the client, the traceback in the log).
            if not recorded:
                recorded = True
                await _record(request, 500)
            raise


def written(request: Request) -> None:
    """This call's record is written already (``entry`` went in with what it did)."""
    request.state.audit_written = True


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


async def entry(request: Request, status: int) -> AuditEntry | None:
    """The record a call that ended with ``status`` gets, or None if it gets none (a
    read that nobody refused, anything outside the API)."""
    detail = noted(request)
    refused = REFUSED in detail
    if not request.url.path.startswith("/api/v1/") or (
            request.method in SAFE_METHODS and status not in REFUSAL_STATUSES
            and not refused):
        return None
    route = request.scope.get("route")
    action = f"{request.method} {getattr(route, 'path', request.url.path)}"
    principal = await _principal(request, status)
    actor = (principal.operator if principal is not None
             else getattr(request.state, "audit_actor", "anonymous"))
    params = request.path_params
    target = next((str(params[p]) for p in TARGET_PARAMS if p in params), None)
    detail = {"status": status, **detail}
    return AuditEntry(actor=actor, action=action, outcome=outcome_of(status, refused),
                      target=target or detail.get("target"),
                      source=request.client.host if request.client else None, detail=detail,
                      authenticated=principal is not None)


async def _record(request: Request, status: int) -> None:
    if getattr(request.state, "audit_written", False):
        return
    try:
        made = await entry(request, status)
        if made is not None:
            s: ServerState = request.app.state.tether
            await s.store.audit.append_entry(made)
    except Exception:  # the call already happened; say loudly that its record did not
        log.exception("audit record for %s %s could not be written", request.method,
                      request.url.path)
