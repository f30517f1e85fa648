"""Seeing and managing nodes: ``tether nodes ...``, API auth and ``tether login``.

Real server (SQLite and PostgreSQL), real agents, the real CLI. The server is
shared by the module and other tests' nodes are on it, so every assertion
looks only at the nodes the test created.
"""

from __future__ import annotations

import json
import platform
import stat
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from harness import PYTHON, Agent, Server, clean_env

EXIT_API = 3
# No proxy from the environment may sit between the tests and the loopback server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def listed(server: Server, *filters: str) -> dict[str, dict[str, Any]]:
    """``tether nodes list --json`` with filters, keyed by node id."""
    return {n["node_id"]: n for n in server.cli("nodes", "list", *filters)}


def register_named(server: Server, agent: Agent, activation_id: str, code: str,
                   name: str) -> Agent:
    result = agent.register_raw(activation_id, code, "--name", name)
    assert result.returncode == 0, result.stderr
    agent.node_id = json.loads((agent.state_dir / "identity.json").read_text())["node_id"]
    return agent


# -- nodes list ----------------------------------------------------------------


def test_list_filters(server: Server, make_agent: Callable[..., Agent]) -> None:
    u = uuid.uuid4().hex[:8]
    site = f"site={u}"
    act1, code1 = server.activation("--limit", "2", "--tag", site)
    act2, code2 = server.activation("--tag", site)
    alpha = register_named(server, make_agent(), act1, code1, f"f{u}-alpha")
    beta = register_named(server, make_agent(), act1, code1, f"f{u}-beta")
    gamma = register_named(server, make_agent(), act2, code2, f"f{u}-gamma")
    a, b, g = alpha.node_id, beta.node_id, gamma.node_id
    mine = {a, b, g}
    alpha.start().connected()
    server.cli("nodes", "tag", a, "role=gw")
    server.cli("nodes", "tag", b, "role=sensor")
    server.cli("nodes", "tag", g, "role=gw")

    everything = listed(server)
    assert mine <= set(everything)
    assert everything[a]["ping_status"] == "Online"
    # Registered but no agent ever ran: ConnectionLost, never connected.
    assert everything[b]["ping_status"] == "ConnectionLost"
    assert everything[b]["last_seen_at"] is None
    assert everything[g]["ping_status"] == "ConnectionLost"

    assert set(listed(server, "--ping-status", "Online")) & mine == {a}
    assert set(listed(server, "--ping-status", "ConnectionLost")) & mine == {b, g}

    # A tag unique to this test, so the results are exactly this test's nodes.
    assert set(listed(server, "--tag", site)) == mine
    assert set(listed(server, "--tag", site, "--tag", "role=gw")) == {a, g}
    assert set(listed(server, "--tag", site, "--tag", "role=sensor")) == {b}
    assert set(listed(server, "--tag", site, "--tag", "role=none")) == set()
    assert set(listed(server, "--tag", "role=gw", "--tag", site)) == {a, g}
    assert set(listed(server, "--tag", site, "--ping-status", "ConnectionLost")) == {b, g}

    assert set(listed(server, "--name", f"f{u}-")) == mine
    assert set(listed(server, "--name", f"{u}-al")) == {a}
    assert set(listed(server, "--name", f"f{u}_alpha")) == set()  # "_" is not a wildcard
    assert set(listed(server, "--name", f"f{u}%")) == set()  # nor is "%"

    assert set(listed(server, "--activation-id", act1)) == {a, b}
    assert set(listed(server, "--activation-id", act2)) == {g}
    assert set(listed(server, "--activation-id", str(uuid.uuid4()))) == set()

    assert set(listed(server, "--ip", "127.0.0.1")) & mine == {a}
    assert set(listed(server, "--ip", "127.0.0.1", "--tag", site)) == {a}
    assert set(listed(server, "--ip", "192.0.2.123", "--tag", site)) == set()

    bad = server.cli_raw("nodes", "list", "--tag", "novalue")
    assert bad.returncode == EXIT_API, bad
    assert "tag.0" in bad.stderr and "invalid_request" in bad.stderr  # refused as documented

    # The table for people shows the same nodes.
    table = server.cli_raw("nodes", "list", "--tag", site)
    assert table.returncode == 0, table.stderr
    assert all(n in table.stdout for n in mine)
    assert f"f{u}-alpha" in table.stdout and "127.0.0.1" in table.stdout

    # When the agent stops, its node is ConnectionLost but keeps its addresses.
    alpha.stop()
    server.wait_node(a, lambda n: n["ping_status"] == "ConnectionLost", timeout=15)
    assert set(listed(server, "--ping-status", "Online")) & mine == set()
    assert set(listed(server, "--ping-status", "ConnectionLost", "--tag", site)) == mine
    assert set(listed(server, "--ip", "127.0.0.1")) & mine == {a}


# -- nodes show ----------------------------------------------------------------


def test_show_inventory(server: Server, online_agent: Agent) -> None:
    node = server.node(online_agent.node_id)
    assert node["node_id"] == online_agent.node_id
    assert node["ping_status"] == "Online"
    assert node["primary_address"] == "127.0.0.1"
    assert node["peer_address"] == "127.0.0.1"
    assert node["last_seen_at"] is not None
    assert abs(node["last_seen_at"] - time.time()) < 120
    assert node["registered_at"] <= node["last_seen_at"]
    assert node["deregistered_at"] is None
    assert node["agent_version"] == tether.__version__

    inv = node["inventory"]
    assert inv["os_name"] and inv["os_name"] != "unknown"
    assert inv["kernel"] == platform.release()
    assert inv["arch"] == platform.machine()
    assert inv["python_version"] == platform.python_version()
    assert inv["agent_version"] == tether.__version__
    assert inv["primary_address"] == "127.0.0.1"
    interfaces = {i["name"]: i for i in inv["interfaces"]}
    assert "lo" in interfaces, interfaces
    lo = interfaces["lo"]
    assert "loopback" in lo["flags"] and "up" in lo["flags"]
    assert {"address": "127.0.0.1", "prefixlen": 8, "family": "inet"}.items() <= next(
        a for a in lo["addresses"] if a["address"] == "127.0.0.1").items()

    text = server.cli_raw("nodes", "show", online_agent.node_id)
    assert text.returncode == 0, text.stderr
    assert online_agent.node_id in text.stdout
    assert "Online" in text.stdout
    assert "primary address: 127.0.0.1" in text.stdout
    assert "peer address:    127.0.0.1" in text.stdout
    assert inv["kernel"] in text.stdout and inv["python_version"] in text.stdout
    assert any(line.split()[:1] == ["lo"] and "127.0.0.1" in line
               for line in text.stdout.splitlines()), text.stdout


def test_show_unknown_node(server: Server) -> None:
    for node_id in ("mi-00000000000000000", "not-a-node-id"):
        result = server.cli_raw("nodes", "show", node_id)
        assert result.returncode == EXIT_API, result
        assert "node_not_found" in result.stderr
        assert node_id in result.stderr


# -- nodes tag -----------------------------------------------------------------


def test_tag_and_untag(server: Server, make_agent: Callable[..., Agent]) -> None:
    u = uuid.uuid4().hex[:8]
    activation_id, code = server.activation("--tag", f"batch={u}")
    agent = make_agent().register(activation_id, code)
    nid = agent.node_id

    node = server.cli("nodes", "tag", nid, "site=north", "rack=r1")
    assert node["tags"] == {"batch": u, "site": "north", "rack": "r1"}
    assert set(listed(server, "--tag", f"batch={u}", "--tag", "site=north")) == {nid}

    node = server.cli("nodes", "tag", nid, "site=south", "--remove", "rack")
    assert node["tags"] == {"batch": u, "site": "south"}
    assert server.node(nid)["tags"] == {"batch": u, "site": "south"}
    assert set(listed(server, "--tag", f"batch={u}", "--tag", "site=north")) == set()
    assert set(listed(server, "--tag", f"batch={u}", "--tag", "site=south")) == {nid}

    node = server.cli("nodes", "tag", nid, "--remove", "site", "--remove", "absent")
    assert node["tags"] == {"batch": u}

    text = server.cli_raw("nodes", "tag", nid, "empty=")
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == f"{nid}: batch={u},empty="
    assert server.node(nid)["tags"] == {"batch": u, "empty": ""}

    bad = server.cli_raw("nodes", "tag", nid, "novalue")
    assert bad.returncode == 2, bad
    assert "bad tag 'novalue'" in bad.stderr
    unknown = server.cli_raw("nodes", "tag", "mi-00000000000000000", "a=b")
    assert unknown.returncode == EXIT_API, unknown
    assert "node_not_found" in unknown.stderr


# -- nodes deregister ----------------------------------------------------------


def test_deregister(server: Server, online_agent: Agent) -> None:
    nid = online_agent.node_id
    assert online_agent.proc is not None and online_agent.output is not None

    node = server.cli("nodes", "deregister", nid)
    assert node["node_id"] == nid
    assert node["deregistered_at"] is not None

    try:
        code = online_agent.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the deregistered agent is still running:\n" + online_agent.output.text())
    assert code == EXIT_API, online_agent.output.text()
    online_agent.output.wait_for(rf"tether-agent: the server refused this agent: "
                                 rf".*{nid} was deregistered", timeout=5)

    assert nid not in listed(server)
    assert nid not in listed(server, "--ping-status", "ConnectionLost")
    shown = server.node(nid)
    assert shown["deregistered_at"] == node["deregistered_at"]
    assert shown["ping_status"] == "Deregistered"
    text = server.cli_raw("nodes", "show", nid)
    assert text.returncode == 0 and "deregistered:" in text.stdout

    run = server.cli_raw("run", "--target", nid, "--", "echo hi")
    assert run.returncode == EXIT_API, run
    assert "bad_targets" in run.stderr
    assert nid in run.stderr

    again = server.cli_raw("nodes", "deregister", nid)
    assert again.returncode == EXIT_API, again
    assert f"{nid} is already deregistered" in again.stderr

    # Started again with its revoked identity, the agent is refused at once.
    online_agent.start()
    assert online_agent.proc is not None and online_agent.output is not None
    try:
        code = online_agent.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the revoked agent kept running:\n" + online_agent.output.text())
    assert code == EXIT_API
    online_agent.output.wait_for(r"tether-agent: the server refused this agent", timeout=5)


def test_deregister_offline_node_and_tag_target(server: Server,
                                               make_agent: Callable[..., Agent]) -> None:
    u = uuid.uuid4().hex[:8]
    activation_id, code = server.activation("--tag", f"batch={u}")
    nid = make_agent().register(activation_id, code).node_id
    # Waiting for the offline node: deregistering it ends the wait as Undeliverable.
    queued = server.cli("run", "--target", nid, "--no-wait", "--", "echo never")
    text = server.cli_raw("nodes", "deregister", nid)
    assert text.returncode == 0, text.stderr
    assert f"deregistered {nid}" in text.stdout
    shown = server.cli("commands", "show", queued["command_id"], "--json")
    (invocation,) = shown["invocations"]
    assert invocation["status"] == "Undeliverable", invocation
    assert invocation["reason"] == "node deregistered", invocation
    assert invocation["ended_at"] is not None, invocation
    assert shown["status"] == "Failed", shown
    run = server.cli_raw("run", "--target", f"tag:batch={u}", "--", "echo hi")
    assert run.returncode == EXIT_API, run
    assert "bad_targets" in run.stderr
    unknown = server.cli_raw("nodes", "deregister", "mi-00000000000000000")
    assert unknown.returncode == EXIT_API, unknown
    assert "node_not_found" in unknown.stderr


# -- API authentication --------------------------------------------------------


def test_api_requires_operator_token(server: Server) -> None:
    url = server.url + "/api/v1/nodes"
    for headers in ({}, {"Authorization": "Bearer tth_not-a-real-token"},
                    {"Authorization": f"Basic {server.token}"},
                    {"Authorization": "Bearer "}):
        status, body = http_get(url, headers)
        assert status == 401, (headers, status, body)
        assert body["error"] == "unauthorized", body
        assert body["message"]
    status, body = http_get(url, {"Authorization": f"Bearer {server.token}"})
    assert status == 200 and isinstance(body, list)


def test_openapi_document(server: Server) -> None:
    status, doc = http_get(server.url + "/api/v1/openapi.json")  # no token needed
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == tether.__version__
    for path in ("/api/v1/commands", "/api/v1/nodes", "/api/v1/nodes/{node_id}",
                 "/api/v1/activations", "/api/v1/registrations"):
        assert path in doc["paths"], sorted(doc["paths"])


# -- CLI configuration ---------------------------------------------------------


def test_cli_without_server_then_login(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                              text=True, env=env, input=stdin, timeout=60)

    result = cli("nodes", "list")
    assert result.returncode == 2, result
    assert "TETHER_SERVER" in result.stderr
    assert "tether login" in result.stderr

    saved = home / ".config" / "tether" / "cli.json"
    wrong = cli("login", "--server", server.url, "--token", "tth_wrong")
    assert wrong.returncode == EXIT_API, wrong
    assert "unauthorized" in wrong.stderr
    assert not saved.exists()

    ok = cli("login", "--server", server.url, "--token", server.token)
    assert ok.returncode == 0, ok
    assert "logged in" in ok.stdout and "admin" in ok.stdout
    assert server.token not in ok.stdout + ok.stderr
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"server": server.url, "token": server.token}

    nodes = cli("nodes", "list", "--json")
    assert nodes.returncode == 0, nodes
    assert isinstance(json.loads(nodes.stdout), list)
    act = cli("activation", "create", "--json")
    assert act.returncode == 0, act
    assert json.loads(act.stdout)["activation_code"].startswith("tac_")

    # The token can come from standard input instead of the command line.
    saved.unlink()
    piped = cli("login", "--server", server.url, stdin=server.token + "\n")
    assert piped.returncode == 0, piped
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert cli("nodes", "list", "--json").returncode == 0
