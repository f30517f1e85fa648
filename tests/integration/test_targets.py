"""Targets through the real CLI against a real server: OR across ``--target``, AND
within one (``tag:a=1,tag:b=2``), and the preview counting what a run would reach.

Nodes are registered and never started: a run's invocations are created for
offline nodes too (they wait), so which nodes a target reached is read from the
command ``run --no-wait`` answers with.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import Agent, Server

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
