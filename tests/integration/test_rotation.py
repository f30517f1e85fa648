"""Node credential rotation: on demand and on a schedule, with no downtime.

Real server, real agents; a hand-made WebSocket client plays an agent that
stores the new credential but never says so (a crash at the worst moment).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Agent, CliError, Server
from tether.protocol.errors import CloseCode
from tether.protocol.messages import Hello, encode
from tether.protocol.versions import AGENT_WS_PATH


def credential(agent: Agent) -> str:
    ident: dict[str, Any] = json.loads((agent.state_dir / "identity.json").read_text())
    return str(ident["credential"])


def wait_changed(agent: Agent, old: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (new := credential(agent)) == old:
        assert time.monotonic() < deadline, "the credential never changed"
        time.sleep(0.05)  # polling interval of a deadline-bound poll
    return new


def hello_answer(server: Server, node_id: str, secret: str, protocol: int = 3) -> Any:
    """Log in as ``node_id``: the first message back, or the close code."""
    url = server.url.replace("http://", "ws://") + AGENT_WS_PATH
    with connect(url, compression=None) as ws:
        ws.send(encode(Hello(protocol, node_id, secret, "test")))
        try:
            return json.loads(ws.recv(timeout=30))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


def test_on_demand_rotation_retires_the_old_credential_without_downtime(
        server: Server, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path / "a").register().start().connected()
    try:
        old = credential(agent)
        server.cli("nodes", "rotate-credential", agent.node_id)
        new = wait_changed(agent, old)
        assert new.startswith("tnc_") and new != old
        # The live link was never dropped: a command runs at once.
        done = server.cli("run", "--target", agent.node_id, "--", "echo still-here")
        assert done["invocations"][0]["stdout"] == "still-here\n"
        deadline = time.monotonic() + 30
        while hello_answer(server, agent.node_id, old) != CloseCode.AUTH_FAILED:
            assert time.monotonic() < deadline, "the old credential still works"
            time.sleep(0.05)  # the server retires it when the agent's 'rotated' lands
        audit = server.cli("audit", "list", "--node", agent.node_id)
        assert any(r["action"].endswith("/rotate-credential") and r["outcome"] == "ok"
                   for r in audit)
        # A restarted agent logs in with what it stored.
        agent.stop()
        agent.start().connected()
        assert credential(agent) == new
    finally:
        agent.stop()


def test_an_agent_that_stored_the_new_credential_but_never_said_so_gets_in(
        server: Server, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path / "b").register()  # its identity; we play its process
    old = credential(agent)
    url = server.url.replace("http://", "ws://") + AGENT_WS_PATH
    with connect(url, compression=None) as ws:
        ws.send(encode(Hello(3, agent.node_id, old, "test")))
        assert json.loads(ws.recv(timeout=30))["t"] == "welcome"
        server.wait_node(agent.node_id, lambda n: n["ping_status"] == "Online")
        server.cli("nodes", "rotate-credential", agent.node_id)
        while (message := json.loads(ws.recv(timeout=30)))["t"] != "rotate":
            pass
        new = message["credential"]
    # No 'rotated' was sent: both credentials still open the door...
    assert hello_answer(server, agent.node_id, old)["t"] == "welcome"
    # ...until the new one is used, which completes the rotation.
    assert hello_answer(server, agent.node_id, new)["t"] == "welcome"
    assert hello_answer(server, agent.node_id, old) == CloseCode.AUTH_FAILED
    assert hello_answer(server, agent.node_id, new)["t"] == "welcome"


def test_rotation_needs_a_connected_agent_of_protocol_3(server: Server,
                                                         tmp_path: Path) -> None:
    agent = Agent(server, tmp_path / "c").register()
    with pytest.raises(CliError) as offline:
        server.cli("nodes", "rotate-credential", agent.node_id)
    assert "node_offline" in offline.value.result.stderr
    url = server.url.replace("http://", "ws://") + AGENT_WS_PATH
    with connect(url, compression=None) as ws:
        ws.send(encode(Hello(2, agent.node_id, credential(agent), "old agent")))
        assert json.loads(ws.recv(timeout=30))["t"] == "welcome"
        server.wait_node(agent.node_id, lambda n: n["ping_status"] == "Online")
        with pytest.raises(CliError) as old_agent:
            server.cli("nodes", "rotate-credential", agent.node_id)
    assert "agent_too_old" in old_agent.value.result.stderr
    assert "protocol 2" in old_agent.value.result.stderr


def test_credentials_older_than_the_limit_are_rotated_on_schedule(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", extra=["--credential-max-age", "2"]).start()
    agent = Agent(server, tmp_path / "d").register().start().connected()
    try:
        first = credential(agent)
        second = wait_changed(agent, first)
        wait_changed(agent, second)  # and again, two seconds later
        done = server.cli("run", "--target", agent.node_id, "--", "echo scheduled")
        assert done["invocations"][0]["stdout"] == "scheduled\n"
        assert hello_answer(server, agent.node_id, first) == CloseCode.AUTH_FAILED
    finally:
        agent.stop()
        server.stop()
