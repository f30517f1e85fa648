"""U+0000 from an operator is refused with an ErrorBody, never stored and never a 500.

PostgreSQL's text refuses U+0000 (SQLite would store it): a script, a comment or a
query filter holding one answered 500 with a traceback on PostgreSQL. Bodies are
refused by the one request-body base (``api/models.RequestBody``), paths and queries
at the front door (``app.AgentFront``), on both databases alike.
"""

from __future__ import annotations

import pytest
from test_error_bodies import assert_error_body, call

from harness import Server

NODE = "mi-0123456789abcdef0"


@pytest.mark.parametrize("raw", [
    b'{"targets": ["all"], "script": "echo a\\u0000b"}',
    b'{"targets": ["all"], "script": "true", "comment": "a\\u0000"}',
    b'{"targets": ["all"], "script": "true", "workdir": "/tmp\\u0000"}',
    b'{"registration_limit": 1, "tags": {"k\\u0000": "v"}}',
])
def test_nul_in_a_body_is_a_422_on_both_databases(server: Server, raw: bytes) -> None:
    path = "/api/v1/activations" if b"registration_limit" in raw else "/api/v1/commands"
    message = assert_error_body(*call(server, "POST", path, raw)[:3], 422, "invalid_request")
    assert "U+0000" in message


@pytest.mark.parametrize("path", [
    "/api/v1/nodes?name=a%00b",
    "/api/v1/nodes?activation_id=%00",
    "/api/v1/audit?actor=x%00",
    f"/api/v1/nodes/{NODE}%00",
])
def test_nul_in_a_path_or_query_is_a_400_on_both_databases(server: Server, path: str) -> None:
    message = assert_error_body(*call(server, "GET", path)[:3], 400, "invalid_request")
    assert "U+0000" in message
    assert call(server, "GET", "/api/v1/nodes?name=ab")[0] == 200  # the server is fine
