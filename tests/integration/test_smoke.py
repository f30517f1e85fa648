from __future__ import annotations

from harness import Agent, Server


def test_command_round_trip(server: Server, online_agent: Agent) -> None:
    out = server.cli("run", "--target", online_agent.node_id, "--", "echo hello")
    assert out["status"] == "Success"
    assert out["invocations"][0]["stdout"] == "hello\n"
