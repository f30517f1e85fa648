"""Scripts run as the agent's configured user, and a node without addresses still lists."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect

from harness import Agent, Server
from tether.protocol.messages import SERVER_MESSAGES, Hello, Inventory, Welcome, decode, encode


@pytest.mark.skipif(os.getuid() != 0, reason="--run-as needs the agent to run as root")
def test_run_as_user_runs_scripts_as_that_user_who_cannot_read_the_spool(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent().register().start("--run-as", "nobody").connected()
    spool = agent.state_dir / "spool"
    out = server.cli("run", "--target", agent.node_id, "--",
                     f'id -un; echo "$HOME $USER $LOGNAME"; pwd; '
                     f'cat {agent.state_dir}/identity.json 2>/dev/null || echo identity-hidden; '
                     f'ls {spool} 2>/dev/null || echo spool-hidden')
    inv = out["invocations"][0]
    assert inv["status"] == "Success", inv
    lines = inv["stdout"].splitlines()
    assert lines[0] == "nobody"
    assert lines[1].split()[1:] == ["nobody", "nobody"]
    assert lines[2] == "/"  # nobody's home does not exist: the root directory instead
    assert lines[3] == "identity-hidden"
    assert lines[4] == "spool-hidden"


def test_a_node_reporting_no_address_at_all_is_online_and_listed(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent().register()  # registered, but we speak for it ourselves
    identity = json.loads((agent.state_dir / "identity.json").read_text())

    async def speak() -> None:
        url = server.url.replace("http://", "ws://") + "/agent/v1/connect"
        async with connect(url) as ws:
            await ws.send(encode(Hello(1, identity["node_id"], identity["credential"], "test")))
            assert isinstance(decode(await ws.recv(), SERVER_MESSAGES), Welcome)
            await ws.send(encode(Inventory("bare", "Linux", "1", "6.1", "armv7l", "test",
                                           "3.9.2", interfaces=[], primary_address=None)))
            node = await asyncio.to_thread(
                server.wait_node, agent.node_id, lambda n: bool(n["inventory"]))
            assert node["ping_status"] == "Online"
            assert node["primary_address"] is None
            assert node["inventory"]["interfaces"] == []
            listed = await asyncio.to_thread(server.cli, "nodes", "list", "--ping-status", "Online")
            assert agent.node_id in {n["node_id"] for n in listed}

    asyncio.run(speak())
