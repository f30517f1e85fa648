"""One error shape for every API failure: ``{"error": code, "message": text}``.

``error`` is a stable name scripts can switch on; ``message`` is for people. Every
refusal the server makes goes through ``error_body``: routes' ``ApiError``, request
validation, Starlette's own 400/404/405, the body limit (limits.py), the HTTP head
and body timeouts and the bytes that are not HTTP at all (http_guard.py) and, last,
any exception nothing else caught (500, details in the server's log only). So no
answer is ever text/plain or FastAPI's ``{"detail": ...}``, and none repeats more of
the request than a short excerpt: a 422 once echoed a whole 1 MiB body back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

# What an error message may quote of the request, and how long a message may be at
# all (a refusal naming 20 nodes fits).
MAX_EXCERPT = 200
MAX_MESSAGE = 2000
# Problems a 422 names; the first few are what a person fixes first.
MAX_PROBLEMS = 5
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large",
                414: "uri_too_long", 415: "unsupported_media_type", 422: "invalid_request",
                426: "upgrade_required",
                429: "too_many_requests", 431: "head_too_large", 500: "internal_error",
                503: "unavailable"}

# Every ``error`` an answer may carry, and what it means: one set, named the same way
# (``THING_not_found`` for a 404 about one thing), listed in the OpenAPI document as
# ErrorBody.error's enum. A code raised in src/tether/server that is not here fails
# tests/unit/test_error_words_table.py. ``code`` of a stream's ``closed`` message
# (docs/protocol.md) is from the same set.
CODES: dict[str, str] = {
    **{code: f"HTTP {status}" for status, code in STATUS_CODES.items()},
    "http_error": "another HTTP status",
    "activation_expired": "the activation is past its expiry",
    "activation_not_found": "no such activation",
    "activation_revoked": "the activation was revoked",
    "agent_too_old": "the node's agent speaks a protocol too old for this",
    "already_attached": "the shell already has a stream",
    "bad_host": "a forward's host is not allowed",
    "bad_policy": "the policy statements do not parse",
    "bad_session": "the session request does not fit its kind",
    "bad_tag": "a tag is not allowed",
    "bad_targets": "no node matches the targets, or a name is ambiguous",
    "cannot_disable_self": "an operator may not disable itself",
    "command_not_found": "no such command",
    "invalid_activation": "the activation id or code is wrong",
    "last_admin": "the change would leave no admin who can sign in (issue 12 #10)",
    "invocation_not_found": "the command did not run on that node",
    "no_agent_bundle": "the server has no agent bundle to serve",
    "no_private_ca": "the server does not run on its own CA",
    "node_not_found": "no such node (or one outside the operator's reach)",
    "node_offline": "the node's agent is not connected",
    "operator_disabled": "the operator is disabled",
    "operator_exists": "there is already an operator of that name",
    "operator_not_found": "no such operator",
    "recording_not_found": "the session has no recording",
    "recover_denied": "the operator's own statements deny recovering it",
    "session_ended": "the session is over",
    "session_not_found": "no such session (or not a live one of this operator)",
    "stream_not_found": "a stream is stdout or stderr",
    "token_not_found": "no such token",
    "too_many_failed_registrations": "too many failed registrations from this address",
    "too_many_failed_tokens": "too many failed tokens from this address",
    "wheel_not_found": "no such wheel in the agent bundle",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        super().__init__(message)


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    """At most ``limit`` characters of ``text``, saying when there was more."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_body(code: str, message: str) -> bytes:
    """The JSON of an ErrorBody; ASCII-escaped, so even a lone surrogate is encodable."""
    return json.dumps({"error": code, "message": excerpt(message, MAX_MESSAGE)}).encode()


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status,
                    media_type="application/json", headers=headers)


def code_for(status: int) -> str:
    return STATUS_CODES.get(status, "http_error")


# What a value of a field must be, in words: a 422 says this where pydantic would
# quote the field's regular expression ("String should match pattern '^(all|mi-...'").
# Keyed by the field's name (the last name in the problem's location), so one entry
# serves a body field, a query parameter and a path parameter alike.
TARGET_FORM = ("a target is all, a node id (mi- and 17 hex digits), a node name "
               "(name:NAME when it holds a colon), or tag:KEY=VALUE (tags joined by a "
               "comma, tag:site=a,tag:role=gw, select the nodes with all of them)")
FORMS = {
    "targets": TARGET_FORM,
    "target": TARGET_FORM,
    "resources": "a resource is *, a node id (mi- and 17 hex digits), or tag:KEY=VALUE",
    "node_id": "a node id is mi- and 17 hex digits (tether nodes list shows them)",
    "actions": "an action is *, PREFIX:* or an action name (docs/security.md lists them)",
    "name": "an operator name is up to 100 letters, digits and . _ @ -, starting with a "
            "letter or digit",
    "operator": "an operator name is up to 100 letters, digits and . _ @ -, starting "
                "with a letter or digit",
    "user": "a user is a Unix account name (lowercase letters, digits, _ . -, up to 32)",
    "term": "a terminal type is up to 64 letters, digits and . _ + -",
    "host": "a host is a name or address (letters, digits and . : _ -)",
    "path": "a path on the device is absolute (it starts with /)",
    "sha256": "a SHA-256 digest is 64 lowercase hex digits",
    "tag": "a tag filter is KEY=VALUE",
    "python": "a Python version is 3.N (e.g. 3.11)",
    "checkpoint": "a checkpoint is SEQ:DIGEST:TIME, as tether audit export wrote it",
}
# Problems whose pydantic message is not what a person needs ("String should have at
# least 1 character"): (field, type) -> what follows the field's name.
WORDS = {
    ("script", "string_too_short"): "is empty: give the commands to run",
    ("targets", "too_short"): "is empty: give at least one target (all, a node id, or "
                              "tag:KEY=VALUE)",
    ("actions", "too_short"): "is empty: give at least one action (* for every action)",
    ("resources", "too_short"): "is empty: give at least one resource (* for every node)",
}
# Pydantic's types whose own message may quote the constraint's text (a pattern, a
# literal's spelling is fine), answered in words when the field has none above.
PATTERN_TYPES = frozenset({"string_pattern_mismatch"})


def field_of(loc: Sequence[object]) -> str:
    """The field a problem is about: the last name in its location (not a list index)."""
    names = [str(x) for x in loc if isinstance(x, str)]
    return names[-1] if names else ""


def problem_words(problem: Mapping[str, Any]) -> str:
    """What is wrong with one value and, where it helps, what would be right.

    Never the value itself (issue 12 #17): only the field, pydantic's type and its
    own message, which for the types here names the constraint, not the input.
    """
    kind = str(problem.get("type", ""))
    if kind == "json_invalid":
        return "the body is not valid JSON"
    loc = list(problem.get("loc", ()))
    field = field_of(loc)
    where = excerpt(".".join(str(x) for x in (loc[1:] if len(loc) > 1 else loc)), 100)
    words = WORDS.get((field, kind))
    if words is not None:
        return f"{where} {words}"
    if kind in PATTERN_TYPES:
        form = FORMS.get(field, "it does not have the form the API document "
                                "(/api/v1/openapi.json) gives for it")
        return f"{where} is not valid: {form}"
    return f"{where}: {excerpt(str(problem.get('msg', '')), 300)}"


def validation_message(problems: Sequence[Any]) -> str:
    """``field.path: what is wrong; ...`` for the first few problems, never their input."""
    parts = [problem_words(problem) for problem in problems[:MAX_PROBLEMS]
             if isinstance(problem, Mapping)]
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "") or "invalid request"


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def validation_error_handler(_request: Request, exc: Exception) -> Response:
    """422 for a body, query or path that does not fit the document (bad JSON included)."""
    assert isinstance(exc, RequestValidationError)
    return error_response(422, code_for(422), validation_message(exc.errors()))


def allowed_methods(request: Request) -> str | None:
    """The ``Allow`` of a 405: every method of the path the request's route serves.

    FastAPI makes one route per method, and Starlette's 405 names only the first
    route that matched the path (``Allow: POST`` on /activations, which has GET
    too). Here the routes sharing the matched one's path are joined; HEAD comes with
    GET (the front door answers it, app.py). None when no route matched (a mounted
    app's own 405 keeps its own ``Allow``).
    """
    route = request.scope.get("route")
    contexts = list(iter_route_contexts(request.app.routes))
    path = next((c.path for c in contexts if c.original_route is route), None)
    if path is None:
        return None
    methods = {m for c in contexts if c.path == path for m in (c.methods or ())}
    if not methods:
        return None
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals: no such route (404), wrong method (405), bad body (400)."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allow = allowed_methods(request)
        if allow is not None:
            headers["Allow"] = allow
    return error_response(exc.status_code, code_for(exc.status_code), excerpt(detail),
                          headers or None)


async def internal_error_handler(_request: Request, _exc: Exception) -> Response:
    """The last resort: a 500 that says nothing of the cause.

    Starlette re-raises the exception after this answer, so uvicorn logs its
    traceback on the server; the client learns nothing of the code.
    """
    return error_response(500, code_for(500), "the server failed on this request; its "
                          "log says why")


def install(app: FastAPI) -> None:
    """Every handler above on ``app``: the one place an API answer's error shape is set."""
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    document(app)


# Every operation may meet these, whatever its own code does: a malformed request
# (400, from the route or, for bytes that are not HTTP, http_guard.py), a path or
# method that is not there (404, 405), a head or body that came too slowly (408), a
# body or query that does not fit (422), a limit (429), a request head too large
# (431), and a fault (500). Bodies may also be too large (413).
DOCUMENTED = (400, 404, 405, 408, 422, 429, 431, 500)


def document(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document say so: ErrorBody for each of ``DOCUMENTED``.

    FastAPI would list its own ``HTTPValidationError`` for 422, a shape this API
    never sends; it is dropped from the document.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas.setdefault("ErrorBody", {
            "title": "ErrorBody", "type": "object", "required": ["error", "message"],
            "properties": {"error": {"title": "Error", "type": "string"},
                           "message": {"title": "Message", "type": "string"}}})
        # models.ErrorBody's ``error`` is a str; the document says which ones.
        schemas["ErrorBody"]["properties"]["error"].update(
            enum=sorted(CODES), description="what went wrong, for scripts to switch on: "
            + "; ".join(f"{code}: {what}" for code, what in sorted(CODES.items())))
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                statuses = DOCUMENTED + ((413,) if "requestBody" in operation else ())
                for status in statuses:
                    answer = operation["responses"].setdefault(
                        str(status), {"description": code_for(status).replace("_", " ")})
                    answer["content"] = body
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
