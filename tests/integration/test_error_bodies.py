"""Every API error is the documented ErrorBody, and quotes little of the request (issue 12 #17).

Real server for the answers; the app object itself for the structural checks (every
request body derives from RequestBody; the document names ErrorBody for every status
any route can meet) and for the last-resort 500, which no route reaches on purpose.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from harness import Server
from tether.server.api.errors import DOCUMENTED, MAX_MESSAGE
from tether.server.api.models import RequestBody
from tether.server.app import build_app
from tether.server.config import Settings

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
NODE = "mi-0123456789abcdef0"


def call(server: Server, method: str, path: str, body: bytes | None = None,
         token: bool = True) -> tuple[int, str, bytes, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {server.token}"
    req = urllib.request.Request(server.url + path, method=method, headers=headers, data=body)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read(), exc.headers


def assert_error_body(status: int, ctype: str, raw: bytes, expected: int, code: str) -> str:
    assert status == expected, raw[:300]
    assert ctype == "application/json", ctype
    body = json.loads(raw)
    assert set(body) == {"error", "message"} and body["error"] == code, body
    assert isinstance(body["message"], str) and len(raw) < MAX_MESSAGE + 200
    message: str = body["message"]
    return message


@pytest.mark.parametrize("raw", [
    b'{"targets": ["all"], "script": "true", "timeout": NaN}',
    b'{"targets": ["all"], "script": "true", "timeout": 1e999}',
    b'{"targets": ["all"], "script": "true", "delivery_timeout": -Infinity}',
])
def test_non_finite_numbers_are_a_422(sqlite_server: Server, raw: bytes) -> None:
    message = assert_error_body(*call(sqlite_server, "POST", "/api/v1/commands", raw)[:3],
                                422, "invalid_request")
    assert "finite" in message


@pytest.mark.parametrize(("method", "path", "raw"), [
    ("PATCH", f"/api/v1/nodes/{NODE}/tags", b'{"set": {"site": "\\ud800"}}'),
    ("PATCH", f"/api/v1/nodes/{NODE}/tags", b'{"set": {"\\udfff": "x"}}'),
    ("POST", "/api/v1/activations", b'{"tags": {"k": "a\\ud83dz"}}'),
    ("POST", "/api/v1/commands", b'{"targets": ["all"], "script": "echo \\udc00"}'),
])
def test_lone_surrogates_are_a_422(sqlite_server: Server, method: str, path: str,
                                   raw: bytes) -> None:
    message = assert_error_body(*call(sqlite_server, method, path, raw)[:3], 422,
                                "invalid_request")
    assert "not valid Unicode" in message


def test_a_huge_invalid_body_is_not_echoed(sqlite_server: Server) -> None:
    script = ["x" * 100] * 9000  # ~1 MiB of a list where a string belongs
    raw = json.dumps({"targets": ["all"], "script": script}).encode()
    status, ctype, answer, _ = call(sqlite_server, "POST", "/api/v1/commands", raw)
    assert_error_body(status, ctype, answer, 422, "invalid_request")
    assert len(answer) < 1000 and b"xxxxxxxxxx" not in answer


def test_many_problems_are_counted_not_listed(sqlite_server: Server) -> None:
    raw = json.dumps({"set": {f"k{i}": 1 for i in range(100)}}).encode()
    message = assert_error_body(*call(sqlite_server, "PATCH", f"/api/v1/nodes/{NODE}/tags",
                                      raw)[:3], 422, "invalid_request")
    assert "and 95 more" in message


def test_bad_json_is_a_422_that_says_so(sqlite_server: Server) -> None:
    message = assert_error_body(*call(sqlite_server, "POST", "/api/v1/commands", b"{bad")[:3],
                                422, "invalid_request")
    assert message == "the body is not valid JSON"


def test_starlettes_own_refusals_are_error_bodies(sqlite_server: Server) -> None:
    assert_error_body(*call(sqlite_server, "GET", "/api/v1/no-such-thing")[:3], 404,
                      "not_found")
    status, ctype, raw, headers = call(sqlite_server, "PUT", "/api/v1/whoami")
    assert_error_body(status, ctype, raw, 405, "method_not_allowed")
    assert "GET" in headers["allow"]


def test_an_echoed_path_is_an_excerpt(sqlite_server: Server) -> None:
    status, ctype, raw, _ = call(sqlite_server, "GET", "/api/v1/" + "a" * 20_000)
    message = assert_error_body(status, ctype, raw, 404, "not_found")
    assert len(message) < MAX_MESSAGE + 100
    # A path parameter past its bound (api/params.py) is refused before any route runs.
    status, ctype, raw, _ = call(sqlite_server, "DELETE", "/api/v1/activations/" + "a" * 20_000)
    message = assert_error_body(status, ctype, raw, 422, "invalid_request")
    assert "a" * 65 not in message


def request_models(annotation: Any) -> list[type[BaseModel]]:
    """Every model a body annotation holds (a model, Optional of one, a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        nested = [m for f in annotation.model_fields.values()
                  for m in request_models(f.annotation)]
        return [annotation, *nested]
    return [m for arg in getattr(annotation, "__args__", ()) for m in request_models(arg)]


def body_fields(routes: Any) -> Iterator[tuple[str, Any]]:
    """(path, body field) of every route with a body, through included routers."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # an included router (FastAPI >= 0.13x)
            yield from body_fields(contexts())
            continue
        if hasattr(route, "routes"):  # a mount
            yield from body_fields(route.routes)
        field = getattr(route, "body_field", None)
        if field is not None:
            yield getattr(route, "path", ""), field


def test_every_request_body_is_a_request_body(tmp_path: Path) -> None:
    """The guard for the class: a new body model that skips the base fails here."""
    seen = set()
    for path, field in body_fields(build_app(Settings.for_data_dir(tmp_path)).app.routes):
        for model in request_models(field.field_info.annotation):
            seen.add(model.__name__)
            assert issubclass(model, RequestBody), (path, model)
    assert {"CommandRequest", "TagsUpdate", "RegistrationRequest", "PolicyStatement",
            "SessionRequest", "ReplacedIdentity", "TerminateRequest"} <= seen


def test_the_document_names_error_body_for_every_error(sqlite_server: Server) -> None:
    status, _, raw, _ = call(sqlite_server, "GET", "/api/v1/openapi.json", token=False)
    assert status == 200
    doc = json.loads(raw)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = 0
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            operations += 1
            for code in DOCUMENTED:
                answer = operation["responses"][str(code)]
                assert answer["content"]["application/json"]["schema"] == error_ref, (
                    method, path, code)
            if "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)
    assert operations >= 30


def test_an_unexpected_exception_is_a_500_error_body_without_a_traceback(
        tmp_path: Path) -> None:
    app = build_app(Settings.for_data_dir(tmp_path)).app

    @app.get("/api/v1/test-only-boom")
    async def boom() -> None:
        raise RuntimeError("secret detail /etc/tether")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/api/v1/test-only-boom",
             "raw_path": b"/api/v1/test-only-boom", "query_string": b"", "root_path": "",
             "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    with pytest.raises(RuntimeError):  # re-raised after the answer, for the server's log
        asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 500
    assert dict(start["headers"])[b"content-type"] == b"application/json"
    assert json.loads(body)["error"] == "internal_error"
    assert b"secret" not in body and b"Traceback" not in body
