"""Live sessions end when what they rest on is taken away (issue 12, finding 6).

A session is allowed when it starts; these tests take the right away while it
runs and check it ends at once, with the reason on the operator's terminal, in
the session's row and in its ``session end`` audit record: the operator
disabled, the token revoked or expired, the node retagged out of the operator's
reach. Changes made behind the API's back (straight into the database, as
another replica or a restore would) are caught on the next stream: each new
connection of a forward is checked against the store as it is then.

Real server, real agent, the real ``tether shell`` (under pexpect) and ``tether
forward``, and the WebSocket stream endpoint as the CLI speaks it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_sessions_forward_copy import FORWARDING, tcp_service
from test_sessions_shell import (
    EXIT_SESSION_ERROR,
    Shell,
    ended_session,
    env_for,
    finish,
    new_operator,
    open_shell,
    ready,
    run_in,
    session_audit,
)
from websockets.sync.client import connect

from harness import PYTHON, Agent, Output, Server, spawn, stop

PROMPT = 5.0  # "at once": the API call that takes the right away ends the session itself


@pytest.fixture(scope="module")
def server(sqlite_server: Server) -> Server:
    """SQLite: the tests edit its file directly to play a change no hook saw. The store
    query the checks rest on runs on both backends in test_session_review.py."""
    return sqlite_server


@pytest.fixture
def shells() -> Iterator[list[Shell]]:
    children: list[Shell] = []
    yield children
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def operator_with(server: Server, tmp_path: Path, statements: list[dict[str, Any]],
                  *roles: str) -> tuple[str, str, str]:
    """A new operator with ``statements`` (and ``roles``); its name, a token and its id."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    policy = tmp_path / f"{name}.json"
    policy.write_text(json.dumps(statements))
    server.cli("operators", "create", name, "--policy", str(policy),
               *[a for r in roles for a in ("--role", r)])
    tok = server.cli("tokens", "create", "--operator", name)
    return name, tok["token"], tok["token_id"]


def allow(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"effect": "allow", "actions": actions, "resources": resources}


def post_session(server: Server, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v1/sessions, as the CLI does before it opens a stream."""
    req = urllib.request.Request(f"{server.url}/api/v1/sessions", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def attach(server: Server, token: str, session_id: str) -> dict[str, Any]:
    """Open a stream as ``tether forward``/``shell`` do; the server's first control message."""
    url = f"{server.url.replace('http', 'ws', 1)}/api/v1/sessions/{session_id}/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=30) as ws:
        first = ws.recv(timeout=30)
    assert isinstance(first, str), first
    control: dict[str, Any] = json.loads(first)
    return control


def db_execute(server: Server, sql: str, *params: Any) -> None:
    """A change behind the API's back: no hook runs, as with another replica or a restore."""
    path = server.data_dir / "tether.db"
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db, db:
        assert db.execute(sql, params).rowcount >= 1, sql


def end_record(server: Server, session_id: str) -> dict[str, Any]:
    end: dict[str, Any] = session_audit(server, session_id)["end"]
    return end


# -- a shell ends when its operator is disabled or its token revoked or expired --------


def test_disabling_the_operator_ends_its_shell_at_once(server: Server, online_agent: Agent,
                                                      shells: list[Shell]) -> None:
    name, token = new_operator(server, "operator")
    admin = server.cli("whoami")["operator"]
    child, sid = open_shell(server, online_agent.node_id, token=token)
    shells.append(child)
    ready(child)

    started = time.monotonic()
    server.cli("operators", "disable", name)
    child.expect(f"tether: session {re.escape(sid)} ended: operator disabled", timeout=PROMPT)
    assert time.monotonic() - started < PROMPT
    assert finish(child) == EXIT_SESSION_ERROR

    row = server.cli("sessions", "show", sid)
    assert (row["status"], row["end_reason"]) == ("Terminated", "operator disabled")
    end = end_record(server, sid)
    assert end["actor"] == admin and end["detail"]["reason"] == "operator disabled"
    assert end["detail"]["operator"] == name


def test_revoking_the_token_ends_the_shell_and_only_its_own(
        server: Server, online_agent: Agent, shells: list[Shell], tmp_path: Path) -> None:
    name, token, token_id = operator_with(server, tmp_path, [], "operator")
    other = server.cli("tokens", "create", "--operator", name)
    child, sid = open_shell(server, online_agent.node_id, token=token)
    shells.append(child)
    ready(child)

    # Another token of the same operator going away leaves this shell alone.
    server.cli("tokens", "revoke", other["token_id"])
    run_in(child, "echo STILL-$((4*4))", "STILL-16")
    assert server.cli("sessions", "show", sid)["status"] == "Connected"

    server.cli("tokens", "revoke", token_id)
    child.expect(f"tether: session {re.escape(sid)} ended: token revoked", timeout=PROMPT)
    assert finish(child) == EXIT_SESSION_ERROR
    assert ended_session(server, sid)["end_reason"] == "token revoked"
    assert end_record(server, sid)["detail"]["reason"] == "token revoked"


def test_an_expiring_token_ends_the_shell_when_it_expires(
        server: Server, online_agent: Agent, shells: list[Shell], tmp_path: Path) -> None:
    name, _, _ = operator_with(server, tmp_path,
                               [allow(["nodes:read", "sessions:start"], ["*"])])
    token = server.cli("tokens", "create", "--operator", name, "--expires", "4s")
    child, sid = open_shell(server, online_agent.node_id, token=token["token"])
    shells.append(child)
    ready(child)
    child.expect(f"tether: session {re.escape(sid)} ended: token expired", timeout=15)
    ended_at = ended_session(server, sid)["ended_at"]
    # Within the watchdog's second of the expiry, not at the next periodic review.
    assert token["expires_at"] <= ended_at < token["expires_at"] + 2.5
    assert end_record(server, sid)["actor"] == "server"


# -- a forward: the node leaves the operator's reach -----------------------------------


@dataclass
class Forward:
    proc: subprocess.Popen[str]
    output: Output
    port: int
    session_id: str


@contextlib.contextmanager
def forward_as(server: Server, token: str, node_id: str, port: int) -> Iterator[Forward]:
    proc, output = spawn([PYTHON, "-m", "tether.cli", "forward", node_id,
                          f"0:127.0.0.1:{port}"], env=env_for(server, token))
    try:
        m = output.wait_for(FORWARDING, timeout=30)
        yield Forward(proc, output, int(m.group(1)), m.group(4))
    finally:
        stop(proc)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def echoes(port: int, data: bytes) -> socket.socket:
    """A connection through the forward that relays; left open for the caller."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {got!r}"
        got += chunk
    assert got == data
    return sock


def test_retag_out_of_reach_ends_the_forward_and_refuses_new_connections(
        server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    server.cli("nodes", "tag", node, "team=me")
    name, token, _ = operator_with(server, tmp_path,
                                   [allow(["nodes:read", "sessions:forward"], ["tag:team=me"])])
    admin = server.cli("whoami")["operator"]
    with tcp_service(echo) as port, forward_as(server, token, node, port) as fw:
        held = echoes(fw.port, b"before the retag")
        with held:
            server.cli("nodes", "tag", node, "team=other")
            reason = f"operator {name} may no longer sessions:forward on {node}"
            # The open connection is hung up, with the reason on the forward's terminal...
            assert held.recv(65536) == b""
            fw.output.wait_for(f"forwarded connection ended: {re.escape(reason)}", PROMPT)
            # ...and the forward stops: no new connection gets through.
            fw.output.wait_for(f"the forward ended: {re.escape(reason)}", PROMPT)
            assert fw.proc.wait(PROMPT) == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", fw.port), timeout=5).close()
    row = server.cli("sessions", "show", fw.session_id)
    assert (row["status"], row["end_reason"]) == ("Terminated", reason)
    end = end_record(server, fw.session_id)
    assert end["actor"] == admin and end["detail"]["reason"] == reason


def test_each_new_forward_connection_is_checked_against_the_store(
        server: Server, online_agent: Agent, tmp_path: Path) -> None:
    """A retag no hook saw (made in the database): the next connection is refused with the
    reason and the session ends; the connection opened before is hung up with it."""
    node = online_agent.node_id
    server.cli("nodes", "tag", node, "team=us")
    name, token, _ = operator_with(server, tmp_path,
                                   [allow(["nodes:read", "sessions:forward"], ["tag:team=us"])])
    with tcp_service(echo) as port, forward_as(server, token, node, port) as fw:
        held = echoes(fw.port, b"first")
        with held:
            echoes(fw.port, b"second, while allowed").close()
            db_execute(server, "UPDATE node_tags SET value = 'them' WHERE node_id = ? "
                       "AND key = 'team'", node)
            refused = socket.create_connection(("127.0.0.1", fw.port), timeout=30)
            with refused:
                assert refused.recv(65536) == b""  # closed, nothing relayed
            reason = f"operator {name} may no longer sessions:forward on {node}"
            fw.output.wait_for(f"the forward ended: .*{re.escape(reason)}", PROMPT)
            assert held.recv(65536) == b""
            assert fw.proc.wait(PROMPT) == 1
    assert server.cli("sessions", "show", fw.session_id)["end_reason"] == reason


# -- stream attaches ---------------------------------------------------------------------


def test_attach_needs_the_sessions_own_operator_and_its_right(
        server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    name, token, _ = operator_with(server, tmp_path,
                                   [allow(["nodes:read", "sessions:forward"], ["*"])])
    _, viewer = new_operator(server, "viewer")
    with tcp_service(echo) as port:
        sid = post_session(server, token, {"node_id": node, "kind": "forward",
                                           "host": "127.0.0.1", "port": port})["session_id"]
        # Another operator (a viewer) cannot stream on it, nor learn how it is doing.
        refused = attach(server, viewer, sid)
        assert refused["t"] == "closed" and refused["code"] == "session_not_found", refused
        assert server.cli("sessions", "show", sid)["status"] == "Connected"
        # Its own operator can, while its policy allows it...
        assert attach(server, token, sid)["t"] == "opened"
        # ...and not once the right is gone (here behind the API's back: no hook ran).
        db_execute(server, "UPDATE operators SET statements = ? WHERE name = ?",
                   json.dumps([allow(["nodes:read", "sessions:start"], ["*"])]), name)
        refused = attach(server, token, sid)
        reason = f"operator {name} may no longer sessions:forward on {node}"
        assert refused == {"t": "closed", "code": "session_ended",
                           "error": f"session {sid} ended: {reason}"}, refused
    row = server.cli("sessions", "show", sid)
    assert (row["status"], row["end_reason"]) == ("Terminated", reason)
    # The stream of an ended session says how it ended (to its own operator only).
    again = attach(server, token, sid)
    assert (again["code"], again["error"]) == ("session_ended", f"session {sid} ended: {reason}")
    assert attach(server, viewer, sid)["code"] == "session_not_found"


def test_a_policy_change_ends_the_sessions_it_no_longer_allows(
        server: Server, online_agent: Agent, shells: list[Shell], tmp_path: Path) -> None:
    node = online_agent.node_id
    name, token, _ = operator_with(server, tmp_path, [allow(["nodes:read", "sessions:*"], ["*"])])
    child, sid = open_shell(server, node, token=token)
    shells.append(child)
    ready(child)
    keep = tmp_path / "still-allowed.json"
    keep.write_text(json.dumps([allow(["nodes:read", "sessions:start", "sessions:read"], ["*"])]))
    server.cli("operators", "update", name, "--policy", str(keep))
    run_in(child, "echo KEPT-$((5*5))", "KEPT-25")  # still allowed: untouched
    narrower = tmp_path / "narrower.json"
    narrower.write_text(json.dumps([allow(["nodes:read", "sessions:forward"], ["*"])]))
    server.cli("operators", "update", name, "--policy", str(narrower))
    reason = f"operator {name} may no longer sessions:start on {node}"
    child.expect(f"tether: session {re.escape(sid)} ended: {re.escape(reason)}",
                 timeout=PROMPT)
    assert finish(child) == EXIT_SESSION_ERROR
    assert ended_session(server, sid)["end_reason"] == reason
