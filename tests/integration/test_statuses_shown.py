"""How states are shown to people (issue 13): a deregistered node reads Deregistered,
a session's ending says its exit code once (and never "None"), and a copy that failed
says what failed instead of "ended by its operator".

Real server, real agents, the CLI through its real entry point (``python -m tether.cli``).
The deregistered node is checked on SQLite and PostgreSQL (its status is one SQL
expression, used in the filter too); the sessions on SQLite only, like
test_sessions_forward_copy.py (sessions keep nothing in the database while they run).
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from harness import PYTHON, Agent, Server, clean_env

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SESSION_LINE = r"tether: session (\S+) on (mi-[0-9a-f]{17})"


def api(server: Server, path: str, **query: str) -> Any:
    url = f"{server.url}/api/v1{path}?{urllib.parse.urlencode(query)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {server.token}"})
    with _OPENER.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["node_id"] for r in rows}


def test_a_deregistered_node_reads_deregistered_wherever_it_is_shown(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    gone = make_agent().register().node_id
    kept = make_agent().register().node_id  # registered, never connected: ConnectionLost
    server.cli("nodes", "deregister", gone)

    # nodes show, as JSON and for people.
    assert server.node(gone)["ping_status"] == "Deregistered"
    assert server.node(kept)["ping_status"] == "ConnectionLost"
    text = server.cli_raw("nodes", "show", gone)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^ping status: +Deregistered ", text.stdout, re.M), text.stdout
    assert "ConnectionLost" not in text.stdout

    # nodes list: left out unless asked for by its status, and then shown as such.
    assert gone not in ids(server.cli("nodes", "list"))
    assert gone not in ids(server.cli("nodes", "list", "--ping-status", "ConnectionLost"))
    assert kept in ids(server.cli("nodes", "list", "--ping-status", "ConnectionLost"))
    listed = server.cli("nodes", "list", "--ping-status", "Deregistered")
    assert gone in ids(listed) and kept not in ids(listed)
    assert {r["ping_status"] for r in listed} == {"Deregistered"}
    table = server.cli_raw("nodes", "list", "--ping-status", "Deregistered")
    (row,) = [line for line in table.stdout.splitlines() if gone in line]
    assert "Deregistered" in row.split() and "ConnectionLost" not in row

    # The API's fleet search (the console's fleet table) says the same.
    found = api(server, "/nodes/search", q=gone, ping_status="Deregistered")["nodes"]
    assert [(n["node_id"], n["ping_status"]) for n in found] == [(gone, "Deregistered")]
    assert api(server, "/nodes/search", q=gone)["nodes"] == []

    # An unknown status is refused, naming the ones there are (it matched nothing before).
    bad = server.cli_raw("nodes", "list", "--ping-status", "Gone")
    assert bad.returncode == 2 and "Deregistered" in bad.stderr, bad.stderr


# -- sessions show ------------------------------------------------------------


@pytest.fixture
def agent(sqlite_server: Server, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(sqlite_server, tmp_path / "agent").register().start().connected()
    yield a
    a.stop()


def shown(server: Server, session_id: str) -> str:
    """The ``ended: ...`` line of ``tether sessions show``."""
    result = server.cli_raw("sessions", "show", session_id)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith(("ended:", "still open"))]
    return line


def test_sessions_show_says_the_exit_code_once_and_never_none(
        sqlite_server: Server, agent: Agent, tmp_path: Path) -> None:
    server, node = sqlite_server, agent.node_id
    child = pexpect.spawn(PYTHON, ["-m", "tether.cli", "shell", node],
                          env=clean_env(TETHER_SERVER=server.url, TETHER_TOKEN=server.token,
                                        TERM="xterm"),
                          encoding="utf-8", codec_errors="replace", timeout=30)
    child.expect(SESSION_LINE)
    session_id = child.match.group(1)
    child.sendline("echo READY-$((20+22))")
    child.expect("READY-42")
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    row = server.cli("sessions", "show", session_id)
    assert row["exit_code"] == 3 and row["end_reason"] == "exited with 3", row
    line = shown(server, session_id)
    assert line.split("; ")[0] == "ended: exited with 3", line  # not "...; exit code 3"
    assert "exit code" not in line, line

    # A copy has no exit code: none is printed (it printed "exit code None").
    remote = tmp_path / "remote.txt"
    remote.write_bytes(b"x" * 1000)
    done = server.cli_raw("cp", f"{node}:{remote}", str(tmp_path / "back.txt"))
    assert done.returncode == 0, done.stderr
    (copy,) = [r for r in server.cli("sessions", "list", "--node", node) if r["kind"] == "copy"]
    line = shown(server, copy["session_id"])
    assert line.startswith("ended: copy complete; "), line
    assert "None" not in line and "exit code" not in line, line


def test_a_failed_copy_says_what_failed_not_that_its_operator_ended_it(
        sqlite_server: Server, agent: Agent, tmp_path: Path) -> None:
    server, node = sqlite_server, agent.node_id
    missing = tmp_path / "missing.bin"
    failed = server.cli_raw("cp", f"{node}:{missing}", str(tmp_path / "y"))
    assert failed.returncode == 1, failed.stderr
    (row,) = [r for r in server.cli("sessions", "list", "--node", node) if r["kind"] == "copy"]
    assert row["status"] == "Failed", row
    reason = row["end_reason"]
    assert reason.startswith("copy failed: ") and "No such file or directory" in reason, row
    assert "operator" not in reason, row
    line = shown(server, row["session_id"])
    assert line.startswith(f"ended: {reason}; "), line
