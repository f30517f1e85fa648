"""Every refusal is in the audit log, under the name of whoever was refused.

Table-driven over the authorization matrix (test_authorization.py's CASES, which
fails when a route is added without a row): every route, called by an operator
its policy refuses, leaves exactly one ``denied`` record naming that operator and
the route, reads included, and whether the answer is a 403 or a 404 that hides a
node outside the operator's reach. Beside the matrix: a call the router itself
refuses (405) names its real actor; refused session-stream attaches (WebSocket)
and an agent closed for reporting another node's invocation (4007) are recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_authorization
from test_authorization import API, CASES, DENIED, DENIED_ON_NODE, Case, Fleet, Grant, call
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Agent, Server
from tether.protocol.errors import CloseCode
from tether.protocol.messages import Accepted, Hello, encode
from tether.protocol.versions import AGENT_WS_PATH, PROTOCOL_VERSION
from tether.server.access.policy import NODE_ACTIONS, ROLES

Record = dict[str, Any]
fleet = test_authorization.fleet  # the matrix's fleet fixture, on this module's server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--registrations-per-activation", "10000"]
    srv = Server(tmp_path_factory.mktemp("refusals") / "data", extra=extra).start()
    yield srv
    srv.stop()


def records_of(f: Fleet, actor: str) -> list[Record]:
    records: list[Record] = f.admin.ok("GET", f"/audit?actor={actor}&limit=1000")
    return records


def _refusals() -> Iterator[Any]:
    """(case, grant) for every route but the filtered lists (they answer 200)."""
    for case in CASES:
        if case.listing:
            continue
        grants = {"no-policy": DENIED["no-policy"]}
        if case.action in NODE_ACTIONS:
            grants["other-node-only"] = DENIED_ON_NODE["other-node-only"]
        if not ROLES["viewer"].allows_everywhere(case.action):  # a viewer reading the log...
            grants["viewer"] = lambda a, n, f: (["viewer"], [])
        for name, grant in grants.items():
            yield pytest.param(case, grant, id=f"{case}-{name}")


@pytest.mark.parametrize(("case", "grant"), list(_refusals()))
def test_every_routes_refusal_is_audited(fleet: Fleet, case: Case, grant: Grant) -> None:
    c = case.prepare(fleet)
    roles, statements = grant(case.action, c.node, fleet)
    name, api = fleet.operator(roles, statements)
    reply = api(case.method, c.path, c.body)
    assert reply.status in (403, 404), reply
    records = records_of(fleet, name)
    assert [(r["action"], r["outcome"], r["detail"]["status"]) for r in records] == [
        (f"{case.method} {API}{case.route}", "denied", reply.status)], records
    record = records[0]
    assert record["source"] == "127.0.0.1"
    assert "refused" in record["detail"], record  # what was refused, even behind a 404


def test_a_call_the_router_refuses_names_its_real_actor(fleet: Fleet) -> None:
    """DELETE /api/v1/audit is no route (405): no route resolved the token, the record did."""
    reply = fleet.admin("DELETE", "/audit")
    assert reply.status == 405, reply
    [record] = [r for r in records_of(fleet, "admin") if r["action"] == "DELETE /api/v1/audit"]
    assert (record["outcome"], record["detail"]["status"]) == ("failed", 405)
    bad = call(fleet.server.url, "DELETE", "/audit", authorization="Bearer tth_not-a-token")
    assert bad.status == 405
    anonymous = [r for r in records_of(fleet, "anonymous")
                 if r["action"] == "DELETE /api/v1/audit"]
    assert len(anonymous) == 1


def _stream(server: Server, session_id: str, token: str) -> tuple[dict[str, Any], int | None]:
    """Attach to a session's stream: the server's refusal message and close code."""
    url = server.url.replace("http://", "ws://") + f"{API}/sessions/{session_id}/stream"
    with connect(url, subprotocols=["tether", f"tether.bearer.{token}"],  # type: ignore[list-item]
                 compression=None) as ws:
        message = json.loads(ws.recv(timeout=30))
        try:
            ws.recv(timeout=30)
        except ConnectionClosed as exc:
            return message, exc.rcvd.code if exc.rcvd else None
    raise AssertionError("the stream stayed open")


def test_refused_stream_attaches_are_audited(fleet: Fleet) -> None:
    action = f"WS {API}/sessions/{{session_id}}/stream"
    # Another operator, allowed sessions everywhere, on the admin's live shell.
    name, api = fleet.operator(["operator"], [])
    message, code = _stream(fleet.server, fleet.lab_session, api.token)
    assert (message["t"], code) == ("closed", 1008), message
    [record] = records_of(fleet, name)
    assert (record["action"], record["outcome"]) == (action, "denied"), record
    assert record["detail"]["session_id"] == fleet.lab_session
    assert record["detail"]["error"] == "session_not_found"
    assert "no open session" in record["detail"]["reason"]
    # A token that is no token: anonymous.
    before = {r["seq"] for r in records_of(fleet, "anonymous")}
    message, code = _stream(fleet.server, fleet.lab_session, "tth_not-a-token")
    assert code == 1008 and message["code"] == "unauthorized", message
    new = [r for r in records_of(fleet, "anonymous") if r["seq"] not in before]
    assert [(r["action"], r["outcome"]) for r in new] == [(action, "denied")]


def test_an_agent_reporting_another_nodes_invocation_is_closed_and_audited(
        fleet: Fleet, tmp_path: Path) -> None:
    """A node's credential reports "accepted" for an invocation of another node: 4007."""
    forger = Agent(fleet.server, tmp_path / "forger").register()
    victim = Agent(fleet.server, tmp_path / "victim").register()
    cmd = fleet.admin.ok("POST", "/commands", {"targets": [victim.node_id], "script": "true",
                                               "delivery_timeout": 3600})
    [inv] = cmd["invocations"]
    ident = json.loads((forger.state_dir / "identity.json").read_text())
    url = fleet.server.url.replace("http://", "ws://") + AGENT_WS_PATH
    with connect(url, compression=None) as ws:
        ws.send(encode(Hello(PROTOCOL_VERSION, ident["node_id"], ident["credential"], "x")))
        ws.recv(timeout=30)  # welcome
        ws.send(encode(Accepted(inv["invocation_id"])))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.UNEXPECTED
    [record] = [r for r in records_of(fleet, "agent") if r["target"] == forger.node_id]
    assert (record["action"], record["outcome"], record["source"]) == (
        "agent closed", "denied", "127.0.0.1")
    assert record["detail"]["close"] == CloseCode.UNEXPECTED
    assert "is not this node's" in record["detail"]["reason"]
    assert fleet.server.cli("audit", "list", "--node", forger.node_id)[-1]["seq"] == record["seq"]
