"""Nothing lost, nothing run twice: a server killed with SIGKILL mid fan-out.

These tests own their server (they kill it), so they do not use the shared
module fixture; they run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Agent, Server, postgres_database

TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "Undeliverable"}


@pytest.fixture(params=["sqlite", "postgresql"])
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        srv = Server(tmp_path / "data").start()
        yield srv
        srv.stop()
    else:
        with postgres_database() as url:
            srv = Server(tmp_path / "data", database_url=url).start()
            yield srv
            srv.stop()


def wait_terminal(server: Server, command_id: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        cmd = server.cli("commands", "show", command_id)
        if all(i["status"] in TERMINAL for i in cmd["invocations"]):
            return cmd  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, cmd
        time.sleep(0.2)  # polling interval of a deadline-bound poll


def test_server_killed_mid_fan_out_loses_nothing_and_runs_nothing_twice(
        own_server: Server, tmp_path: Path) -> None:
    server = own_server
    act_id, code = server.activation("--limit", "8")
    agents = [Agent(server, tmp_path / f"a{i}").register(act_id, code).start()
              for i in range(8)]
    try:
        for a in agents:
            a.connected()
        runs = tmp_path / "runs"
        runs.mkdir()
        # Each run leaves one line in a file named after its invocation; a script
        # that ran twice would leave two. The sleeps spread the results over the kill.
        script = (f'echo started >> {runs}/$TETHER_INVOCATION_ID; '
                  f'sleep "0.$(( $(printf %d "0x${{TETHER_INVOCATION_ID%%%%-*}}") % 9 ))"; '
                  'echo "out $TETHER_NODE_ID"')
        targets = [x for a in agents for x in ("--target", a.node_id)]
        cmd = server.cli("run", *targets, "--no-wait", "--", script)
        # Kill while results are on their way: after the first script started.
        deadline = time.monotonic() + 20
        while not any(runs.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.stop(signal.SIGKILL)
        server.start()  # same data, same port: the agents find it again
        done = wait_terminal(server, cmd["command_id"])
        statuses = {i["node_id"]: i["status"] for i in done["invocations"]}
        assert set(statuses.values()) == {"Success"}, statuses
        assert len(statuses) == 8
        for inv in done["invocations"]:
            lines = (runs / inv["invocation_id"]).read_text().splitlines()
            assert lines == ["started"], (inv["node_id"], lines)
            out = server.cli_raw("commands", "output", cmd["command_id"], inv["node_id"],
                                 "--stream", "stdout")
            assert out.stdout == f"out {inv['node_id']}\n"
    finally:
        for a in agents:
            a.stop()


def test_an_invocation_whose_node_never_reports_ends_timed_out(own_server: Server,
                                                                tmp_path: Path) -> None:
    """A device that lost its disk mid-run cannot report; the server stops waiting."""
    server = own_server
    agent = Agent(server, tmp_path / "a").register().start().connected()
    cmd = server.cli("run", "--target", agent.node_id, "--no-wait", "--timeout", "1s",
                     "--delivery-timeout", "2s", "--", "echo partial; sleep 30")
    deadline = time.monotonic() + 20
    while server.cli("commands", "show", cmd["command_id"])["invocations"][0]["status"] \
            != "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while server.cli_raw("commands", "output", cmd["command_id"], agent.node_id,
                         "--stream", "stdout").stdout != "partial\n":  # readable while running
        assert time.monotonic() < deadline
        time.sleep(0.05)
    agent.stop(signal.SIGKILL)
    shutil.rmtree(agent.state_dir / "spool")
    done = wait_terminal(server, cmd["command_id"], timeout=30)
    inv = done["invocations"][0]
    assert inv["status"] == "TimedOut"
    assert "no result from the node" in inv["reason"]
    assert done["status"] == "TimedOut"
    # What arrived before the node went silent stays readable.
    out = server.cli_raw("commands", "output", cmd["command_id"], agent.node_id,
                         "--stream", "stdout")
    assert out.stdout == "partial\n"


def test_spool_over_its_cap_evicts_oldest_output_and_the_server_is_told(
        own_server: Server, tmp_path: Path) -> None:
    """A long outage with chatty commands: the device drops output, never the result."""
    server = own_server
    agent = Agent(server, tmp_path / "a").register().start("--spool-cap", "1000").connected()
    cmd = server.cli("run", "--target", agent.node_id, "--no-wait", "--workdir", str(tmp_path),
                     "--", "while [ ! -e go ]; do sleep 0.05; done; "
                     "head -c 5000 /dev/zero | tr '\\0' x")
    deadline = time.monotonic() + 20
    while server.cli("commands", "show", cmd["command_id"])["invocations"][0]["status"] \
            != "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop(signal.SIGKILL)  # the outage: nothing the agent sends now arrives
    assert agent.output is not None
    mark = len(agent.output.lines)
    (tmp_path / "go").touch()  # the script may finish now, with nobody to hear it
    agent.output.wait_for(r"output of \S+ evicted", start=mark)
    server.start()
    done = wait_terminal(server, cmd["command_id"])
    inv = done["invocations"][0]
    assert inv["status"] == "Success"
    assert inv["stdout_truncated"] is True
    assert inv["stdout_size"] < 5000
    assert "evicted from the device's spool" in inv["reason"]
    agent.stop()


def test_a_command_stored_but_not_yet_delivered_survives_a_server_kill(
        own_server: Server, tmp_path: Path) -> None:
    """Stored, then the server dies before any agent got it: delivered after restart."""
    server = own_server
    agent = Agent(server, tmp_path / "a").register()  # registered, not connected
    cmd = server.cli("run", "--target", agent.node_id, "--no-wait", "--", "echo delivered")
    server.stop(signal.SIGKILL)
    server.start()
    agent.start().connected()
    done = wait_terminal(server, cmd["command_id"])
    assert done["invocations"][0]["status"] == "Success"
    out = server.cli_raw("commands", "output", cmd["command_id"], agent.node_id,
                         "--stream", "stdout")
    assert out.stdout == "delivered\n"
    agent.stop()
