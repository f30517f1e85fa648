"""Issue 13, "every day": what ran and where, in ``tether run`` / ``commands list`` /
``commands show``, and finding commands back (``commands list`` filters, paging,
``nodes history``). The CLI runs through its real entry point against a real server;
the store's filters, being SQL, run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Agent, Server, clean_env
from tether.cli.client import Client
from tether.protocol.statuses import CommandStatus


def named_agent(server: Server, state_dir: Path, name: str) -> Agent:
    """An Online agent registered under ``name`` (``tether-agent register --name``)."""
    agent = Agent(server, state_dir)
    act, code = server.activation()
    result = agent.register_raw(act, code, "--name", name)
    assert result.returncode == 0, result.stderr
    found = re.search(r"mi-[0-9a-f]{17}", result.stdout)
    assert found, result.stdout
    agent.node_id = found.group(0)
    return agent.start().connected()


@pytest.fixture
def gw(sqlite_server: Server, tmp_path: Path) -> Iterator[Agent]:
    agent = named_agent(sqlite_server, tmp_path / "gw", "gw-7")
    yield agent
    agent.stop()
    # The server is the module's: the next test's gw-7 must be the only one by that name.
    gone = sqlite_server.cli_raw("nodes", "deregister", agent.node_id)
    assert gone.returncode == 0, gone.stderr


def cid_of(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"command (\S+) on \d+ node\(s\)", result.stderr)
    assert found, result.stderr
    return found.group(1)


# -- what ran, and where ------------------------------------------------------------------

def test_list_and_show_say_what_ran_and_run_names_the_node(sqlite_server: Server,
                                                          gw: Agent) -> None:
    script = "#!/bin/sh\n\n  echo first-line\necho second\n"
    ran = sqlite_server.cli_raw("run", "--target", gw.node_id, stdin=script)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"=== {gw.node_id} (gw-7)  Success  exit 0\n"), ran.stdout
    assert f"  {gw.node_id} (gw-7)  Success" in ran.stderr
    cid = cid_of(ran)

    listed = sqlite_server.cli_raw("commands", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[-1] == "SCRIPT"
    (row,) = [r for r in rows if r.startswith(cid)]
    assert row.endswith("echo first-line …"), row

    shown = sqlite_server.cli_raw("commands", "show", cid)
    assert shown.returncode == 0, shown.stderr
    assert "script:   echo first-line …\n" in shown.stdout, shown.stdout
    assert re.search(rf"^{gw.node_id}\s+gw-7\s+Success\s+exit 0\b", shown.stdout, re.M), \
        shown.stdout
    detail = sqlite_server.cli("commands", "show", cid)
    assert detail["invocations"][0]["node_name"] == "gw-7"



def test_the_sessions_table_names_the_node(sqlite_server: Server, gw: Agent,
                                           tmp_path: Path) -> None:
    remote = tmp_path / "on-device.txt"
    remote.write_text("hello\n")
    copied = sqlite_server.cli_raw("cp", f"{gw.node_id}:{remote}", str(tmp_path / "back"))
    assert copied.returncode == 0, copied.stderr
    listed = sqlite_server.cli_raw("sessions", "list", "--node", gw.node_id)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["SESSION", "NODE", "NAME"]
    assert row.split()[1:4] == [gw.node_id, "gw-7", "admin"], row
    # ``--node`` takes the name too, and one session's page names its node as well.
    by_name = sqlite_server.cli_raw("sessions", "list", "--node", "gw-7")
    assert by_name.returncode == 0 and by_name.stdout == listed.stdout, by_name.stderr
    session_id = row.split()[0]
    assert sqlite_server.cli("sessions", "show", session_id)["node_name"] == "gw-7"
    shown = sqlite_server.cli_raw("sessions", "show", session_id)
    assert shown.stdout.splitlines()[1].split()[1:3] == [gw.node_id, "gw-7"], shown.stdout


# -- finding commands back: filters, pages, a node's history ------------------------------

def as_operator(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True, text=True,
                          env=clean_env(TETHER_SERVER=server.url, TETHER_TOKEN=token),
                          timeout=60)


def submit(server: Server, node: str, script: str, *opts: str, token: str | None = None
           ) -> str:
    """A command sent without waiting (``run --no-wait``): its id."""
    argv = ["run", "--no-wait", "--target", node, *opts, "--", script]
    ran = as_operator(server, token, *argv) if token else server.cli_raw(*argv)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def ids(server: Server, *args: str) -> list[str]:
    listed = server.cli_raw(*args, "--json")
    assert listed.returncode == 0, listed.stderr
    return [c["command_id"] for c in json.loads(listed.stdout)]


def wait_status(client: Client, cid: str, done: Callable[[str], bool]) -> None:
    deadline = time.monotonic() + 30
    cmd: dict[str, Any] = client.get(f"/commands/{cid}")
    while not done(cmd["status"]):
        assert time.monotonic() < deadline, cmd
        cmd = client.get(f"/commands/{cid}", after=cmd["version"], wait=5)


def test_commands_list_filters_and_pages_and_nodes_history(
        server: Server, make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    client = Client(server.url, server.token)
    a = named_agent(server, tmp_path / "a", "hist-a")
    b = named_agent(server, tmp_path / "b", "hist-b")
    try:
        server.cli("operators", "create", "bob-hist", "--role", "operator")
        bob = server.cli("tokens", "create", "--operator", "bob-hist")["token"]
        c1 = submit(server, a.node_id, "true")
        c2 = submit(server, b.node_id, "exit 3")
        c3 = submit(server, f"{a.node_id}", "echo from-bob", "--target", b.node_id,
                    token=bob)
        c4 = submit(server, a.node_id, "exit 1")
        for cid in (c1, c2, c3, c4):
            wait_status(client, cid, lambda s: CommandStatus(s).terminal)
    finally:
        a.stop()
        b.stop()

    assert ids(server, "commands", "list", "--node", a.node_id) == [c4, c3, c1]
    assert ids(server, "commands", "list", "--node", a.node_id, "--status", "Failed") == [c4]
    assert ids(server, "commands", "list", "--node", a.node_id,
               "--status", "Success") == [c3, c1]
    assert ids(server, "commands", "list", "--operator", "bob-hist") == [c3]
    assert ids(server, "commands", "list", "--node", b.node_id, "--since", "1h") == [c3, c2]
    since = client.get(f"/commands/{c3}")["created_at"]
    assert [c["command_id"] for c in client.get(
        "/commands", node_id=a.node_id, since=since)] == [c4, c3]

    # Paged: a full page says how to get the next, which goes on where it stopped.
    first = server.cli_raw("commands", "list", "--node", a.node_id, "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert [r.split()[0] for r in first.stdout.splitlines()[1:]] == [c4, c3]
    assert f"more: the same with --before {c3}" in first.stderr
    assert ids(server, "commands", "list", "--node", a.node_id, "--limit", "2",
               "--before", c3) == [c1]
    last = server.cli_raw("commands", "list", "--node", a.node_id, "--before", c3)
    assert last.returncode == 0 and "more:" not in last.stderr, last.stderr

    # One node's invocations across commands, with how each ended there.
    history = server.cli_raw("nodes", "history", b.node_id)
    assert history.returncode == 0, history.stderr
    header, *rows = history.stdout.splitlines()
    assert header.split() == ["COMMAND", "STATUS", "EXIT", "CREATED", "ENDED", "BY", "SCRIPT"]
    assert [r.split()[0] for r in rows] == [c3, c2]
    assert re.match(rf"{c3}\s+Success\s+exit 0\s.*\sbob-hist\s+echo from-bob$", rows[0]), rows
    assert re.match(rf"{c2}\s+Failed\s+exit 3\s", rows[1]), rows
    paged = server.cli_raw("nodes", "history", b.node_id, "--limit", "1", "--json")
    (only,) = json.loads(paged.stdout)
    assert only["invocation"]["node_id"] == b.node_id
    assert only["invocation"]["exit_code"] == 0
    assert ids(server, "nodes", "history", b.node_id, "--before", c3) == [c2]
    assert f"history of {b.node_id} (hist-b), newest first" in history.stderr
    assert ids(server, "nodes", "history", "hist-b") == [c3, c2]  # a name does too
    assert ids(server, "commands", "list", "--node", "hist-a") == [c4, c3, c1]

    # The policy's reach is decided before the limit too: carol reads node a only, so
    # c3 (on a and b) is not hers, and her one newest Success is c1, not an empty page.
    policy = tmp_path / "a-only.json"
    policy.write_text(json.dumps([{"effect": "allow", "actions": ["nodes:read",
                                   "commands:read"], "resources": [a.node_id]}]))
    server.cli("operators", "create", "carol-hist", "--policy", str(policy))
    carol = server.cli("tokens", "create", "--operator", "carol-hist")["token"]
    hers = as_operator(server, carol, "commands", "list", "--status", "Success", "--limit",
                       "1", "--json")
    assert [c["command_id"] for c in json.loads(hers.stdout)] == [c1], hers.stderr
    hidden = as_operator(server, carol, "nodes", "history", b.node_id)
    assert hidden.returncode == 3 and f"no node {b.node_id}" in hidden.stderr, hidden


def test_the_status_filter_agrees_with_every_status_shown(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    """A command's status is derived (``command_status``), and the filter says the same
    rule in SQL (``store/command_filter.status_is``): every command is listed under
    exactly the status it shows, whichever status that is."""
    client = Client(server.url, server.token)
    online = make_agent().register().start().connected()
    offline = make_agent().register()
    ended = [submit(server, online.node_id, "true"), submit(server, online.node_id, "exit 2"),
             submit(server, online.node_id, "sleep 30", "--timeout", "1s"),
             submit(server, offline.node_id, "true", "--delivery-timeout", "1s")]
    running = submit(server, online.node_id, "sleep 30")
    submit(server, offline.node_id, "true")  # Pending
    cancelled = submit(server, offline.node_id, "true")
    client.post(f"/commands/{cancelled}/cancel")
    # Nothing changes while the lists are read: each command has ended or stays as it is.
    wait_status(client, running, lambda s: s == "InProgress")
    for cid in ended:
        wait_status(client, cid, lambda s: CommandStatus(s).terminal)

    shown = {c["command_id"]: c["status"] for c in client.get("/commands", limit=1000)}
    listed: dict[str, str] = {}
    for status in CommandStatus:
        for c in client.get("/commands", status=status.value, limit=1000):
            assert c["command_id"] not in listed, (c, listed[c["command_id"]])
            listed[c["command_id"]] = status.value
    assert listed == shown
    assert {"Success", "Failed", "TimedOut", "InProgress", "Pending",
            "Cancelled"} <= set(shown.values())
    client.post(f"/commands/{running}/cancel")
