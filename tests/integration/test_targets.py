"""Targets through the real CLI against a real server: OR across ``--target``, AND
within one (``tag:a=1,tag:b=2``), node names (refused when ambiguous, counted among
readable nodes only), and the preview counting what a run would reach.

Nodes are registered and never started: a run's invocations are created for
offline nodes too (they wait), so which nodes a target reached is read from the
command ``run --no-wait`` answers with.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Agent, Server

EXIT_API = 3
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def enrol(server: Server, make_agent: Callable[..., Agent], *tags: str,
          name: str | None = None) -> str:
    """A registered node with ``tags`` (and ``name``): its id."""
    act, code = server.activation(*[a for t in tags for a in ("--tag", t)])
    agent = make_agent()
    result = agent.register_raw(act, code, *(["--name", name] if name else []))
    assert result.returncode == 0, result.stderr
    node_id: str = json.loads((agent.state_dir / "identity.json").read_text())["node_id"]
    return node_id


def reached(server: Server, *targets: str) -> set[str]:
    """The nodes ``tether run --target ...`` made invocations for."""
    argv = [a for t in targets for a in ("--target", t)]
    command = server.cli("run", "--no-wait", *argv, "--", "true")
    server.cli("commands", "cancel", command["command_id"])
    return {inv["node_id"] for inv in command["invocations"]}


def preview(server: Server, *targets: str) -> tuple[int, dict[str, Any]]:
    query = urllib.parse.urlencode([("target", t) for t in targets])
    req = urllib.request.Request(f"{server.url}/api/v1/targets/preview?{query}",
                                 headers={"Authorization": f"Bearer {server.token}"})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def fleet(server: Server, make_agent: Callable[..., Agent], tmp_path: Path) -> dict[str, str]:
    u = uuid.uuid4().hex[:8]
    return {"u": u,
            "a_gw": enrol(server, make_agent, f"site=a{u}", "role=gw"),
            "a_db": enrol(server, make_agent, f"site=a{u}", "role=db"),
            "b_gw": enrol(server, make_agent, f"site=b{u}", "role=gw")}


def test_several_targets_are_or_and_comma_tag_is_and(server: Server,
                                                     fleet: dict[str, str]) -> None:
    u = fleet["u"]
    assert reached(server, f"tag:site=a{u}", f"tag:site=b{u}") == {
        fleet["a_gw"], fleet["a_db"], fleet["b_gw"]}
    assert reached(server, f"tag:site=a{u},tag:role=gw") == {fleet["a_gw"]}
    assert reached(server, f"tag:role=gw,tag:site=b{u}", f"tag:site=a{u},tag:role=db") == {
        fleet["b_gw"], fleet["a_db"]}
    status, body = preview(server, f"tag:site=a{u},tag:role=gw")
    assert (status, body["count"]) == (200, 1), body


def test_a_conjunction_no_node_satisfies_is_no_target(server: Server,
                                                      fleet: dict[str, str]) -> None:
    u = fleet["u"]
    run = server.cli_raw("run", "--target", f"tag:site=b{u},tag:role=db", "--", "true")
    assert run.returncode == EXIT_API, run
    assert "bad_targets" in run.stderr
    status, body = preview(server, f"tag:site=b{u},tag:role=db")
    assert (status, body["count"]) == (200, 0), body


# -- names ----------------------------------------------------------------------


def scoped(server: Server, tmp_path: Path, site: str) -> dict[str, str]:
    """The CLI's environment for an operator that may read and send to ``tag:site=SITE``
    only."""
    name = f"op-{uuid.uuid4().hex[:10]}"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps([{"effect": "allow", "actions": ["nodes:read",
                                                                  "commands:send"],
                                   "resources": [f"tag:site={site}"]}]))
    server.cli("operators", "create", name, "--policy", str(policy))
    token = server.cli("tokens", "create", "--operator", name)["token"]
    return {**server.env(), "TETHER_TOKEN": token}


def run_as(env: dict[str, str], *targets: str) -> subprocess.CompletedProcess[str]:
    argv = [a for t in targets for a in ("--target", t)]
    return subprocess.run([PYTHON, "-m", "tether.cli", "run", "--no-wait", "--json", *argv,
                           "--", "true"], capture_output=True, text=True, env=env, timeout=60)


def test_a_name_targets_its_node(server: Server, make_agent: Callable[..., Agent]) -> None:
    u = uuid.uuid4().hex[:8]
    web = enrol(server, make_agent, name=f"web-{u}")
    cam = enrol(server, make_agent, name=f"cam:{u}")
    assert reached(server, f"web-{u}") == {web}
    assert reached(server, f"name:web-{u}", f"name:cam:{u}") == {web, cam}
    status, body = preview(server, f"web-{u}")
    assert (status, body["count"], body["node_ids"]) == (200, 1, [web]), body


def test_a_name_several_nodes_share_is_refused_naming_them(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    u = uuid.uuid4().hex[:8]
    one = enrol(server, make_agent, name=f"gw-{u}")
    two = enrol(server, make_agent, name=f"gw-{u}")
    run = server.cli_raw("run", "--target", f"gw-{u}", "--", "true")
    assert run.returncode == EXIT_API, run
    assert f"2 nodes are named 'gw-{u}'" in run.stderr and one in run.stderr
    assert two in run.stderr, run.stderr
    status, body = preview(server, f"gw-{u}")
    assert status == 400 and one in body["message"] and two in body["message"], body
    assert reached(server, one) == {one}  # its id still names it


def test_names_count_among_readable_nodes_only(server: Server, tmp_path: Path,
                                               make_agent: Callable[..., Agent]) -> None:
    """A name only unreadable nodes have is no node, answered as a name nobody has; a
    name a readable and an unreadable node share is the readable one, not ambiguous."""
    u = uuid.uuid4().hex[:8]
    mine = enrol(server, make_agent, f"site=a{u}", name=f"gw-{u}")
    enrol(server, make_agent, f"site=b{u}", name=f"gw-{u}")
    enrol(server, make_agent, f"site=b{u}", name=f"db-{u}")
    env = scoped(server, tmp_path, f"a{u}")
    shared = run_as(env, f"gw-{u}")
    assert shared.returncode == 0, shared
    assert {i["node_id"] for i in json.loads(shared.stdout)["invocations"]} == {mine}
    hidden = run_as(env, f"db-{u}")
    nobody = run_as(env, f"xx-{u}")
    assert hidden.returncode == nobody.returncode == EXIT_API, (hidden, nobody)
    assert hidden.stderr.replace(f"db-{u}", "N") == nobody.stderr.replace(f"xx-{u}", "N")
    assert "no registered node named" in hidden.stderr


# -- names in shell, forward and cp ---------------------------------------------


def test_cp_takes_a_name_for_the_node(server: Server, make_agent: Callable[..., Agent],
                                      tmp_path: Path) -> None:
    u = uuid.uuid4().hex[:8]
    act, code = server.activation()
    agent = make_agent()
    assert agent.register_raw(act, code, "--name", f"box-{u}").returncode == 0
    agent.node_id = json.loads((agent.state_dir / "identity.json").read_text())["node_id"]
    agent.start().connected()
    local = tmp_path / "up.txt"
    local.write_text(f"hello {u}\n")
    remote = tmp_path / "on-node.txt"
    up = server.cli_raw("cp", str(local), f"box-{u}:{remote}")
    assert up.returncode == 0, up
    assert remote.read_text() == f"hello {u}\n"
    back = tmp_path / "back.txt"
    down = server.cli_raw("cp", f"box-{u}:{remote}", str(back))
    assert down.returncode == 0, down
    assert back.read_text() == f"hello {u}\n"
    sessions = server.cli("sessions", "list", "--node", agent.node_id)
    assert len(sessions) == 2, sessions  # both went to the node the name stands for


def test_shell_forward_and_cp_refuse_an_ambiguous_or_unknown_name(
        server: Server, make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    u = uuid.uuid4().hex[:8]
    one = enrol(server, make_agent, name=f"twin-{u}")
    two = enrol(server, make_agent, name=f"twin-{u}")
    for argv in (["shell", f"twin-{u}"], ["forward", f"twin-{u}", "0:localhost:22"],
                 ["cp", f"twin-{u}:/etc/hostname", str(tmp_path / "x")]):
        result = server.cli_raw(*argv)
        assert result.returncode == EXIT_API, (argv, result)
        assert one in result.stderr and two in result.stderr, (argv, result.stderr)
        assert "target one by its id" in result.stderr, result.stderr
    for argv in (["shell", f"none-{u}"], ["cp", str(tmp_path / "x"), f"none-{u}:/tmp/x"]):
        result = server.cli_raw(*argv)
        assert result.returncode == EXIT_API, (argv, result)
        assert f"no registered node named 'none-{u}'" in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()
