"""Every query and path parameter of every route is bounded (issue 12, after #17).

``list_nodes``'s ``name``, ``activation_id`` and ``ip`` went to the database at any
length the request head allowed. The bounds live in ``api/params.py``; these tests are
the guard for the class: the document and the routes themselves (WebSocket routes are
not in the document) must give every string parameter a ``maxLength`` and every list a
``maxItems``, and a real server must answer one past each bound with the 422 ErrorBody,
quoting none of it.
"""

from __future__ import annotations

import json
import re
import typing
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIWebSocketRoute
from test_error_bodies import assert_error_body, call

from harness import Server
from tether.server.app import build_app
from tether.server.config import Settings


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = build_app(Settings.for_data_dir(tmp_path_factory.mktemp("doc"))).app
    doc: dict[str, Any] = app.openapi()
    return doc


def parameters(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                yield method.upper(), path, p


def unbounded(schema: dict[str, Any], where: str) -> Iterator[str]:
    """Where in ``schema`` a string has no maxLength, or a list no maxItems."""
    for branch in schema.get("anyOf", []):
        yield from unbounded(branch, where)
    if schema.get("type") == "string" and "maxLength" not in schema and "enum" not in schema:
        yield f"{where}: a string without maxLength"
    if schema.get("type") == "array":
        if "maxItems" not in schema:
            yield f"{where}: a list without maxItems"
        yield from unbounded(schema.get("items", {}), f"{where}[]")


def test_every_parameter_in_the_document_is_bounded(document: dict[str, Any]) -> None:
    problems = [problem for method, path, p in parameters(document)
                for problem in unbounded(p["schema"], f"{method} {path} {p['in']} {p['name']}")]
    assert problems == []
    assert sum(1 for _ in parameters(document)) > 30  # the walk reached the routes


def routes(within: Any) -> Iterator[Any]:
    """Every route with parameters (``path``, ``dependant``), HTTP and WebSocket, through
    included routers (newer FastAPI keeps them whole) and mounts."""
    for route in within:
        if hasattr(route, "original_router"):
            yield from routes(route.original_router.routes)
        elif getattr(route, "dependant", None) is not None:
            yield route
        elif hasattr(route, "routes"):
            yield from routes(route.routes)


def fields(dependant: Dependant) -> Iterator[Any]:
    """The path and query parameters of a route and of its dependencies."""
    yield from dependant.path_params
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from fields(sub)


def test_every_parameter_of_every_route_is_bounded(tmp_path: Path) -> None:
    """The routes themselves, so a WebSocket route (never in the document) is held too."""
    app = build_app(Settings.for_data_dir(tmp_path)).app
    problems, seen, websockets = [], 0, 0
    for route in routes(app.routes):
        websockets += isinstance(route, APIWebSocketRoute)
        for field in fields(route.dependant):
            seen += 1
            if "str" in str(field.field_info.annotation) and not any(
                    hasattr(m, "max_length") and m.max_length is not None
                    for m in field.field_info.metadata):
                problems.append(f"{route.path} {field.name}")
    assert problems == []
    assert seen > 30 and websockets >= 1


def too_long(schema: dict[str, Any]) -> str | list[str] | None:
    """A value one past the bound of this parameter's schema (None: not a string)."""
    for branch in schema.get("anyOf", []):
        value = too_long(branch)
        if value is not None:
            return value
    if schema.get("type") == "array":
        items = schema["items"]
        return ["x" * (items["maxLength"] + 1)] if "maxLength" in items else None
    if schema.get("type") == "string" and "enum" not in schema:  # an enum: no length
        return "x" * (schema["maxLength"] + 1)
    return None


def test_one_past_any_bound_is_a_422_error_body_quoting_none_of_it(
        sqlite_server: Server, document: dict[str, Any]) -> None:
    """Each string parameter of each operation in turn, on a real server, as the admin:
    the request is refused before the route runs, whatever it would have done."""
    tried = 0
    for method, path, p in parameters(document):
        value = too_long(p["schema"])
        if value is None:
            continue
        url, query = path, ""
        for name in re.findall(r"{(\w+)}", path):
            url = url.replace("{" + name + "}", value if name == p["name"] else "x")  # type: ignore[arg-type]
        if p["in"] == "query":
            query = "?" + urllib.parse.urlencode({p["name"]: value}, doseq=True)
        body = b"{}" if method in ("POST", "PATCH") else None
        status, ctype, raw, _ = call(sqlite_server, method, url + query, body)
        message = assert_error_body(status, ctype, raw, 422, "invalid_request")
        assert p["name"] in message and "xxxxxxxxxx" not in message, (method, path, message)
        tried += 1
    assert tried > 25


def test_the_reviews_node_filters_are_refused_past_their_columns(sqlite_server: Server) -> None:
    """H7's note: ``GET /nodes?name=`` (and activation_id, ip) took 60 KiB."""
    for name, bound in (("name", 255), ("activation_id", 64), ("ip", 64)):
        ok = call(sqlite_server, "GET", f"/api/v1/nodes?{name}={'a' * bound}")
        assert ok[0] == 200 and json.loads(ok[2]) == [], ok[2][:200]
        status, ctype, raw, _ = call(sqlite_server, "GET",
                                     f"/api/v1/nodes?{name}={'a' * 60_000}")
        assert_error_body(status, ctype, raw, 422, "invalid_request")


# --- Numbers: both bounds, and finite (the review: ?since=nan and ?since=1e999 were 200) ---

def numbers(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for branch in schema.get("anyOf", []):
        yield from numbers(branch)
    if schema.get("type") in ("number", "integer"):
        yield schema


def test_every_number_in_the_document_has_both_bounds(document: dict[str, Any]) -> None:
    found = [(method, path, p["name"], s) for method, path, p in parameters(document)
             for s in numbers(p["schema"])]
    assert [f[:3] for f in found if "minimum" not in f[3] or "maximum" not in f[3]] == []
    assert any(f[3]["type"] == "number" for f in found)  # since, wait


def test_every_number_a_route_takes_is_bounded_and_finite(tmp_path: Path) -> None:
    """The routes themselves (WebSocket ones too): a float without params.number's
    finiteness, or a number without both bounds, fails here."""
    app = build_app(Settings.for_data_dir(tmp_path)).app
    problems, floats = [], 0
    for route in routes(app.routes):
        for field in fields(route.dependant):
            kinds = set(typing.get_args(field.field_info.annotation)
                        or {field.field_info.annotation})
            if not kinds & {int, float}:
                continue
            meta = field.field_info.metadata
            if not (any(hasattr(m, "ge") or hasattr(m, "gt") for m in meta)
                    and any(hasattr(m, "le") or hasattr(m, "lt") for m in meta)):
                problems.append(f"{route.path} {field.name}: not bounded at both ends")
            if float in kinds:
                floats += 1
                if not any(getattr(m, "allow_inf_nan", True) is False for m in meta):
                    problems.append(f"{route.path} {field.name}: NaN and inf allowed")
    assert problems == []
    assert floats >= 2


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_a_non_finite_number_is_a_422_on_every_route(sqlite_server: Server,
                                                     document: dict[str, Any],
                                                     value: str) -> None:
    tried = 0
    for method, path, p in parameters(document):
        if p["in"] != "query" or not any(s["type"] == "number" for s in numbers(p["schema"])):
            continue
        url = re.sub(r"{\w+}", "x", path) + f"?{p['name']}={value}"
        body = b"{}" if method in ("POST", "PATCH") else None
        status, ctype, raw, _ = call(sqlite_server, method, url, body)
        message = assert_error_body(status, ctype, raw, 422, "invalid_request")
        assert message.startswith(p["name"] + ":"), (method, path, message)
        tried += 1
    assert tried >= 2  # GET /audit since, GET /commands/{command_id} wait
