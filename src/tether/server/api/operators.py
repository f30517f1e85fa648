"""Operators and tokens: who can use the API, and with what policy.

All of it needs ``operators:manage``. A policy is validated in full before it is
stored (``access/policy.py``), so a stored policy always means one thing.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from tether.server.access.policy import PolicyError, effective_policy, parse_statements
from tether.server.api import models, params
from tether.server.api.audit_note import note
from tether.server.api.auth import Who
from tether.server.api.errors import ApiError
from tether.server.api.routes import ERRORS, State
from tether.server.sessions.authority import SessionFilter
from tether.server.store.operators import OperatorError

router = APIRouter(prefix="/api/v1", tags=["operators"])
CONFLICT = {**ERRORS, 409: {"model": models.ErrorBody}}


def _validated(roles: list[str], statements: list[models.PolicyStatement]
               ) -> list[dict[str, Any]]:
    raw = [st.model_dump() for st in statements]
    try:
        effective_policy(roles, parse_statements(raw))
    except PolicyError as exc:
        raise ApiError(400, "bad_policy", str(exc)) from None
    return raw


async def _operator(s: State, name: str) -> dict[str, Any]:
    row = await s.store.operators.get(name)
    if row is None:
        raise ApiError(404, "operator_not_found", f"no operator {name}")
    return row


@router.post("/operators", status_code=201, response_model=models.Operator, responses=CONFLICT)
async def create_operator(body: models.OperatorRequest, s: State, who: Who,
                          request: Request) -> dict[str, Any]:
    who.require("operators:manage")
    note(request, target=body.name, roles=body.roles,
         statements=[st.model_dump() for st in body.statements])
    roles: list[str] = list(body.roles)
    statements = _validated(roles, body.statements)
    try:
        return await s.store.operators.create(body.name, roles, statements, who.operator)
    except OperatorError as exc:
        raise ApiError(409, exc.code, str(exc)) from None


@router.get("/operators", response_model=list[models.Operator], responses=ERRORS)
async def list_operators(s: State, who: Who) -> list[dict[str, Any]]:
    who.require("operators:manage")
    return await s.store.operators.all()


@router.get("/operators/{name}", response_model=models.Operator, responses=ERRORS)
async def show_operator(name: params.NamePath, s: State, who: Who) -> dict[str, Any]:
    who.require("operators:manage")
    return await _operator(s, name)


@router.patch("/operators/{name}", response_model=models.Operator, responses=CONFLICT)
async def update_operator(name: params.NamePath, body: models.OperatorUpdate, s: State,
                          who: Who, request: Request) -> dict[str, Any]:
    """Replace the roles and/or the statements; the next request uses them."""
    who.require("operators:manage")
    note(request, roles=body.roles, statements=None if body.statements is None else
         [st.model_dump() for st in body.statements])
    current = await _operator(s, name)
    new_roles: list[str] | None = None if body.roles is None else list(body.roles)
    roles: list[str] = new_roles if new_roles is not None else current["roles"]
    statements = (_validated(roles, body.statements) if body.statements is not None
                  else _validated(roles, [models.PolicyStatement(**st)
                                          for st in current["statements"]]))
    try:
        row = await s.store.operators.update(name, new_roles, statements)
    except OperatorError as exc:  # last_admin: it would demote the last admin
        raise ApiError(409, exc.code, str(exc)) from None
    assert row is not None
    await s.bus.review_sessions(SessionFilter(operator=name), actor=who.operator)
    return row


@router.delete("/operators/{name}", response_model=models.Operator, responses=CONFLICT)
async def disable_operator(name: params.NamePath, s: State, who: Who) -> dict[str, Any]:
    """Disable the operator and revoke all its tokens at once (the record stays)."""
    who.require("operators:manage")
    await _operator(s, name)
    if name == who.operator:
        raise ApiError(409, "cannot_disable_self",
                       "an operator cannot disable itself (ask another admin)")
    try:
        row = await s.store.operators.disable(name)
    except OperatorError as exc:  # last_admin
        raise ApiError(409, exc.code, str(exc)) from None
    assert row is not None
    await s.bus.review_sessions(SessionFilter(operator=name), actor=who.operator)
    return row


@router.post("/tokens", status_code=201, response_model=models.CreatedToken,
             responses=CONFLICT)
async def create_token(body: models.TokenRequest, s: State, who: Who,
                       request: Request) -> dict[str, Any]:
    who.require("operators:manage")
    note(request, operator=body.operator, label=body.label)
    operator = await _operator(s, body.operator)
    if operator["disabled_at"] is not None:
        raise ApiError(409, "operator_disabled", f"operator {body.operator} is disabled")
    expires_at = time.time() + body.expires_in if body.expires_in is not None else None
    row, token = await s.store.operators.create_token(body.operator, body.label, expires_at)
    note(request, target=row["token_id"])  # never the token itself
    return {**row, "token": token}


@router.get("/tokens", response_model=list[models.Token], responses=ERRORS)
async def list_tokens(s: State, who: Who,
                      operator: params.NameQuery = None) -> list[dict[str, Any]]:
    who.require("operators:manage")
    return await s.store.operators.tokens(operator)


@router.delete("/tokens/{token_id}", response_model=models.Token, responses=CONFLICT)
async def revoke_token(token_id: params.IdPath, s: State, who: Who) -> dict[str, Any]:
    """Revoke at once: the next request with this token is refused. The last admin's
    last valid token is not revoked (409 ``last_admin``)."""
    who.require("operators:manage")
    try:
        row = await s.store.operators.revoke_token(token_id)
    except OperatorError as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    if row is None:
        raise ApiError(404, "token_not_found", f"no token {token_id}")
    await s.bus.review_sessions(SessionFilter(token_id=token_id), actor=who.operator)
    return row
