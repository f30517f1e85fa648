"""Hostile input: one abusive peer is closed alone; the limits hold; everyone else goes on.

A real server with low limits (so a test reaches them quickly), real agents,
and hand-made WebSocket and HTTP clients playing the abuser on loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness import Agent, Server
from tether.protocol.errors import CloseCode
from tether.protocol.messages import Hello, Ping, encode
from tether.protocol.versions import AGENT_WS_PATH, PROTOCOL_VERSION

RATE, BURST, HANDSHAKES = 50, 100, 5
# Short, to see a silent socket closed quickly; long enough that the handshakes the
# handshake-limit test holds open stay open for its few steps.
HELLO_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hostile") / "data", extra=[
        "--agent-message-rate", str(RATE), "--agent-message-burst", str(BURST),
        "--handshakes-per-address", str(HANDSHAKES),
        "--hello-timeout", str(HELLO_TIMEOUT)]).start()
    yield srv
    srv.stop()


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + AGENT_WS_PATH


def identity(agent: Agent) -> dict[str, Any]:
    ident: dict[str, Any] = json.loads((agent.state_dir / "identity.json").read_text())
    return ident


def hello_from(agent: Agent) -> str:
    ident = identity(agent)
    return encode(Hello(PROTOCOL_VERSION, ident["node_id"], ident["credential"], "hostile"))


def close_code(ws: ClientConnection, timeout: float = 30) -> int | None:
    """Read until the server closes; its close code."""
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def test_a_flooding_agent_is_closed_alone_while_others_run_commands(
        server: Server, tmp_path: Path) -> None:
    good = Agent(server, tmp_path / "good").register().start().connected()
    flooder = Agent(server, tmp_path / "flooder").register()  # its identity, not its process
    try:
        codes: list[int | None] = []

        def flood() -> None:
            with connect(ws_url(server), compression=None) as ws:
                ws.send(hello_from(flooder))
                ws.recv(timeout=30)  # welcome
                ping = encode(Ping())
                try:
                    for _ in range(BURST * 20):
                        ws.send(ping)
                except ConnectionClosed:
                    pass
                codes.append(close_code(ws))

        thread = threading.Thread(target=flood)
        thread.start()
        results = [server.cli("run", "--target", good.node_id, "--", f"echo run-{i}")
                   for i in range(3)]
        thread.join(60)
        assert not thread.is_alive()
        assert codes == [CloseCode.RATE_LIMITED], codes
        for i, cmd in enumerate(results):
            assert cmd["status"] == "Success", cmd
            assert cmd["invocations"][0]["stdout"] == f"run-{i}\n"
        nodes = {n["node_id"]: n for n in server.cli("nodes", "list")}
        assert nodes[good.node_id]["ping_status"] == "Online"
        server.wait_node(flooder.node_id, lambda n: n["ping_status"] == "ConnectionLost")
    finally:
        good.stop()


def test_handshakes_in_progress_per_address_are_bounded(server: Server,
                                                        tmp_path: Path) -> None:
    agent = Agent(server, tmp_path / "a").register()
    with contextlib.ExitStack() as stack:
        waiting = [stack.enter_context(connect(ws_url(server), compression=None))
                   for _ in range(HANDSHAKES)]
        with connect(ws_url(server), compression=None) as extra:
            assert close_code(extra) == CloseCode.RATE_LIMITED
        # One of the waiting handshakes completes: room for one more.
        waiting[0].send(hello_from(agent))
        assert json.loads(waiting[0].recv(timeout=30))["t"] == "welcome"
        with connect(ws_url(server), compression=None) as another:
            another.send(hello_from(agent))  # replaces the first connection: fine
            assert json.loads(another.recv(timeout=30))["t"] == "welcome"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def post_commands(server: Server, body: bytes, chunked: bool = False) -> tuple[int, bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    try:
        if chunked:
            conn.request("POST", "/api/v1/commands", body=iter([body]), headers=headers,
                         encode_chunked=True)
        else:
            # Headers first, then the body in a thread: the server may answer 413 on
            # Content-Length alone and close while a blocking send is still going,
            # which would hide its answer behind a reset on our side.
            conn.putrequest("POST", "/api/v1/commands")
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                conn.putheader(name, value)
            conn.endheaders()
            sock = conn.sock
            threading.Thread(target=_send_quietly, args=(sock, body), daemon=True).start()
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def test_request_bodies_are_bounded(server: Server, tmp_path: Path) -> None:
    node = Agent(server, tmp_path / "b").register().node_id
    before = len(server.cli("commands", "list"))
    script = "x" * (2 * 1024 * 1024)
    big = json.dumps({"targets": [node], "script": script}).encode()
    status, body = post_commands(server, big)
    assert status == 413 and json.loads(body)["error"] == "body_too_large"
    status, _ = post_commands(server, big, chunked=True)
    assert status != 201
    assert len(server.cli("commands", "list")) == before  # nothing was stored
    ok = json.dumps({"targets": [node], "script": "true"}).encode()
    status, body = post_commands(server, ok)
    assert status == 201, body  # the server is fine afterwards


def test_a_silent_connection_is_closed_before_it_authenticates(server: Server) -> None:
    with connect(ws_url(server), compression=None) as ws:
        assert close_code(ws, timeout=HELLO_TIMEOUT + 30) == CloseCode.UNEXPECTED
        assert ws.close_reason == f"no hello within {HELLO_TIMEOUT:g} s"


def test_request_headers_are_bounded(server: Server) -> None:
    """A header block larger than the bound is not buffered: the connection is dropped."""
    host, port = server.url.removeprefix("http://").split(":")

    def whoami(extra: str) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("GET", "/api/v1/whoami", headers={
                "Authorization": f"Bearer {server.token}", "X-Padding": extra})
            return conn.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    assert whoami("a" * 4000) == 200
    assert whoami("a" * 1_000_000) in (0, 400, 431)
    assert whoami("") == 200  # and the server is fine afterwards
