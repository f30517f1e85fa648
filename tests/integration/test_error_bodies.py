"""Every API error is the documented ErrorBody, and quotes little of the request (issue 12 #17).

Real server for the answers; the app object itself for the structural checks (every
request body derives from RequestBody; the document names ErrorBody for every status
any route can meet) and for the last-resort 500, which no route reaches on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
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
    assert "lone surrogate" in message


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


# --- Methods: every 405 names all of its path's methods; HEAD is GET without a body ---

def allow_of(doc_methods: Any) -> str:
    """The Allow a path of the document must answer: its methods, HEAD with GET."""
    methods = {m.upper() for m in doc_methods}
    return ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))


def test_a_405_allows_every_method_of_its_path(sqlite_server: Server) -> None:
    """Starlette named only the first route's method (``Allow: POST`` on /activations,
    which has GET too): every path of the document, asked with a method none has."""
    doc = json.loads(call(sqlite_server, "GET", "/api/v1/openapi.json", token=False)[2])
    several = 0
    for path, item in doc["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        status, ctype, raw, headers = call(sqlite_server, "OPTIONS", concrete)
        assert_error_body(status, ctype, raw, 405, "method_not_allowed")
        assert headers["allow"] == allow_of(item), path
        several += len(item) > 1
    assert several >= 7  # /activations, /commands, /nodes/{node_id}, /operators, ...


def head(server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("HEAD", path, headers={"Authorization": f"Bearer {server.token}"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        # HEAD has no body: whatever follows on the connection would be one.
        conn.sock.settimeout(0.5)
        try:
            extra = conn.sock.recv(100)
        except TimeoutError:
            extra = b""
        return resp.status, headers, extra
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/api/v1/whoami", "/api/v1/openapi.json", "/console/",
                                  "/api/v1/operators"])
def test_head_is_get_without_a_body(sqlite_server: Server, path: str) -> None:
    status, ctype, raw, _ = call(sqlite_server, "GET", path)
    assert status == 200
    head_status, headers, extra = head(sqlite_server, path)
    assert (head_status, headers["content-type"]) == (200, ctype)
    assert int(headers["content-length"]) == len(raw) and extra == b""


def test_head_where_there_is_no_get_is_a_405(sqlite_server: Server) -> None:
    status, headers, extra = head(sqlite_server, "/api/v1/registrations")
    assert (status, headers["allow"], extra) == (405, "POST", b"")


def test_the_console_refuses_other_methods_with_allow(sqlite_server: Server) -> None:
    status, ctype, raw, headers = call(sqlite_server, "POST", "/console/", b"{}")
    assert_error_body(status, ctype, raw, 405, "method_not_allowed")
    assert headers["allow"] == "GET, HEAD"


def test_the_document_says_what_head_and_options_do(sqlite_server: Server) -> None:
    doc = json.loads(call(sqlite_server, "GET", "/api/v1/openapi.json", token=False)[2])
    assert "HEAD" in doc["info"]["description"] and "OPTIONS" in doc["info"]["description"]


# --- Bytes that are not HTTP: answered by the h11 protocol (http_guard.py), not a route ---

def raw_exchange(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a fresh connection; the last answer before the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # a reset once the answer is out is fine
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    rest = b"".join(chunks)
    while True:  # answers one after another, each with its Content-Length
        head_bytes, _, rest = rest.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        size = int(headers.get("content-length", len(rest)))
        body, rest = rest[:size], rest[size:]
        if not rest:
            return int(lines[0].split()[1]), headers, body


HOST = b"Host: x\r\n"
POST = b"POST /api/v1/commands HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"


@pytest.mark.parametrize(("data", "expected"), [
    (b"GET /api/v1/nodes/\xff HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /api/v1/whoami HTTP/1.1\r\n" + HOST + b"Authorization: Bearer a\x00b\r\n\r\n", 400),
    (POST + b"Content-Length: -1\r\n\r\n", 400),
    (POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET /api/v1/whoami?" + b"a" * 300_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 431),
], ids=["raw-ff-in-path", "nul-in-header", "negative-length", "bad-chunk-size",
        "garbage-line", "http2-preface", "head-too-large"])
def test_bytes_that_are_not_http_get_an_error_body(sqlite_server: Server, data: bytes,
                                                  expected: int) -> None:
    """uvicorn answered these itself, text/plain "Invalid HTTP request received."."""
    status, headers, body = raw_exchange(sqlite_server, data)  # (PRI * is a 404 first)
    code = {400: "bad_request", 431: "head_too_large"}[expected]
    assert_error_body(status, headers.get("content-type", ""), body, expected, code)
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)


UPGRADE = (b"GET /api/v1/agent/ws HTTP/1.1\r\n" + HOST
           + b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize(("data", "expected"), [
    (UPGRADE + b"Sec-WebSocket-Version: 13\r\n\r\n", 400),
    (UPGRADE + b"Sec-WebSocket-Key: \x1b[2Jzz\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
    (UPGRADE + KEY + b"Sec-WebSocket-Version: 99\r\n\r\n", 400),
    (UPGRADE + KEY + b"Sec-WebSocket-Version: 13\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
     431),
], ids=["no-key", "escape-in-key", "other-version", "header-too-long"])
def test_a_refused_websocket_handshake_is_an_error_body(sqlite_server: Server, data: bytes,
                                                        expected: int) -> None:
    """websockets refused these in text/plain, quoting the header it disliked."""
    status, headers, body = raw_exchange(sqlite_server, data)
    code = {400: "bad_request", 431: "head_too_large"}[expected]
    assert_error_body(status, headers.get("content-type", ""), body, expected, code)
    assert b"\x1b" not in body and b"zz" not in body
