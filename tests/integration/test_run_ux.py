"""``tether run`` and ``tether commands`` in daily use (issue 13): the CLI through its real
entry point (``python -m tether.cli``) against a real server and real agents.

Most of this is the CLI's own behaviour, so one SQLite server serves the module; the
server-side part (``--online-only`` resolves targets in SQL) runs on both backends.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import PYTHON, Agent, Server
from tether.cli.client import Client

# Agents register under the machine's hostname; the CLI prints it beside the id.
HOST = socket.gethostname()


@pytest.fixture
def node(sqlite_server: Server, tmp_path: Path) -> Iterator[Agent]:
    """One Online agent on the module's SQLite server."""
    agent = Agent(sqlite_server, tmp_path / "agent").register().start().connected()
    yield agent
    agent.stop()


def cid_of(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"command (\S+) on \d+ node\(s\)", result.stderr)
    assert found, result.stderr
    return found.group(1)


def tether(server: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a shell runs it, its streams as bytes."""
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                          env=server.env(), timeout=60)


# -- item: commands output ---------------------------------------------------------------

def test_output_needs_no_node_when_the_command_ran_on_one(sqlite_server: Server,
                                                          node: Agent) -> None:
    ran = sqlite_server.cli_raw("run", "--target", node.node_id, "--",
                                "echo to-out; echo to-err >&2")
    assert ran.returncode == 0, ran.stderr
    cid = cid_of(ran)

    both = tether(sqlite_server, "commands", "output", cid)
    assert both.returncode == 0, both.stderr
    assert (both.stdout, both.stderr) == (b"to-out\n", b"to-err\n")

    # --stream stderr goes to standard output, where '> err.txt' takes it.
    err = tether(sqlite_server, "commands", "output", cid, "--stream", "stderr")
    assert (err.returncode, err.stdout, err.stderr) == (0, b"to-err\n", b"")
    named = tether(sqlite_server, "commands", "output", cid, node.node_id, "--stream",
                   "stdout")
    assert (named.returncode, named.stdout) == (0, b"to-out\n")


def test_output_of_a_command_on_several_nodes_asks_for_one(sqlite_server: Server,
                                                           node: Agent, tmp_path: Path) -> None:
    other = Agent(sqlite_server, tmp_path / "other").register().start().connected()
    try:
        ran = sqlite_server.cli_raw("run", "--target", node.node_id, "--target",
                                    other.node_id, "--", "true")
        assert ran.returncode == 0, ran.stderr
        cid = cid_of(ran)
        asked = tether(sqlite_server, "commands", "output", cid)
        assert asked.returncode == 2
        assert b"ran on 2 nodes: name one" in asked.stderr, asked.stderr
        assert asked.stdout == b""
    finally:
        other.stop()


def test_a_closed_pipe_ends_quietly(sqlite_server: Server, node: Agent) -> None:
    """``tether ... | head``: the reader goes, the CLI stops without a word."""
    ran = sqlite_server.cli_raw("run", "--target", node.node_id, "--",
                                "head -c 3000000 /dev/zero | tr '\\000' a")
    assert ran.returncode == 0, ran.stderr[-500:]
    cid = cid_of(ran)
    # 3 MB cannot all wait in the pipe: the writes after the close fail.
    proc = subprocess.Popen([PYTHON, "-m", "tether.cli", "commands", "output", cid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=sqlite_server.env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b"a" * 10
    proc.stdout.close()  # what head does once it has its lines
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert err == b"", err


# -- item: how an invocation ended, and what the cap cut ---------------------------------

def test_a_timeout_says_what_killed_the_script(sqlite_server: Server, node: Agent) -> None:
    ran = sqlite_server.cli_raw("run", "--timeout", "1s", "--target", node.node_id, "--",
                                "echo started; sleep 30")
    assert ran.returncode == 1, ran.stderr
    said = f"=== {node.node_id} ({HOST})  TimedOut  killed by SIGTERM after the 1 s timeout\n"
    assert ran.stdout == said + "started\n"
    shown = sqlite_server.cli_raw("commands", "show", cid_of(ran))
    assert shown.returncode == 0, shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if line.startswith(node.node_id)]
    assert "TimedOut  killed by SIGTERM after the 1 s timeout" in row
    assert "exit -15" not in shown.stdout and "ran longer" not in shown.stdout


def test_a_cut_output_is_said_in_show_and_output(sqlite_server: Server, node: Agent) -> None:
    ran = sqlite_server.cli_raw("run", "--output-cap", "100", "--target", node.node_id, "--",
                                "head -c 500 /dev/zero | tr '\\000' a; echo small >&2")
    assert ran.returncode == 0, ran.stderr
    cid = cid_of(ran)
    mark = "stdout was cut at the output cap (100 bytes)"

    shown = sqlite_server.cli_raw("commands", "show", cid)
    assert f"--- {node.node_id}: {mark}\n" in shown.stdout, shown.stdout
    assert "stderr was cut" not in shown.stdout

    got = tether(sqlite_server, "commands", "output", cid)
    assert got.stdout == b"a" * 100  # the bytes stay exact; the mark is on stderr
    assert got.stderr == b"small\n" + f"tether: {mark}\n".encode()
    only = tether(sqlite_server, "commands", "output", cid, "--stream", "stdout")
    assert (only.stdout, only.stderr) == (b"a" * 100, f"tether: {mark}\n".encode())
    uncut = tether(sqlite_server, "commands", "output", cid, "--stream", "stderr")
    assert (uncut.stdout, uncut.stderr) == (b"small\n", b"")


# -- item: run shows each node as it ends, says what waits, --online-only -----------------

@pytest.mark.parametrize("progress", ["auto", "counts"])
def test_run_prints_each_node_as_it_finishes(sqlite_server: Server, node: Agent,
                                             tmp_path: Path, progress: str) -> None:
    """The fast node's output is on standard output while the slow one still runs, also
    when progress is counted (as for a fan-out to more than 50 nodes), where it printed
    every output only once all had ended."""
    slow = Agent(sqlite_server, tmp_path / "slow").register().start().connected()
    flag = tmp_path / "go-on"
    script = (f'if [ "$TETHER_NODE_ID" = {node.node_id} ]; then echo fast; else '
              f'while [ ! -e {flag} ]; do sleep 0.05; done; echo slow; fi')
    proc = subprocess.Popen([PYTHON, "-m", "tether.cli", "run", "--progress", progress,
                             "--target", node.node_id, "--target", slow.node_id, "--",
                             script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=sqlite_server.env(), text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()],
                              daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # Bounded: printed only at the end, the fast node's lines would never come.
        assert lines.get(timeout=30) == f"=== {node.node_id} ({HOST})  Success  exit 0\n"
        assert lines.get(timeout=30) == "fast\n"
        assert proc.poll() is None  # the slow node has not ended: its script waits for us
        flag.touch()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        err = proc.stderr.read()
        rest = "".join(lines.get(timeout=10) for _ in range(2))
        assert rest == f"=== {slow.node_id} ({HOST})  Success  exit 0\nslow\n"
        assert "(2 Success)" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        slow.stop()


def test_run_says_what_waits_offline_and_until_when(server: Server,
                                                    make_agent: Callable[[], Agent]) -> None:
    online = make_agent().register().start().connected()
    offline = make_agent().register()  # registered, never connected
    ran = server.cli_raw("run", "--delivery-timeout", "1s", "--target", online.node_id,
                         "--target", offline.node_id, "--", "echo hi")
    assert ran.returncode == 1, ran.stderr
    waits = re.search(r"^  1 node\(s\) offline: delivery is attempted until "
                      r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \(--delivery-timeout\)", ran.stderr, re.M)
    assert waits, ran.stderr
    # The output is on stdout alone, and the online node's came while the other waited.
    assert ran.stdout.startswith(f"=== {online.node_id} ({HOST})  Success  exit 0\nhi\n"), \
        ran.stdout
    said = f"=== {offline.node_id} ({HOST})  DeliveryTimedOut: the node did not connect"
    assert said in ran.stdout
    shown = server.cli("commands", "show", cid_of(ran))
    deadline = shown["created_at"] + shown["delivery_timeout"]
    assert waits.group(1) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline))


def test_online_only_leaves_the_others_out_and_says_so(server: Server,
                                                       make_agent: Callable[[], Agent]) -> None:
    online = make_agent().register().start().connected()
    offline = make_agent().register()
    ran = server.cli_raw("run", "--online-only", "--target", online.node_id, "--target",
                         offline.node_id, "--", "echo hi")
    assert ran.returncode == 0, ran.stderr
    left = "; 1 node(s) not Online left out (--online-only)"
    assert f"on 1 node(s){left}\n" in ran.stderr
    assert f"(1 Success){left}\n" in ran.stderr
    assert "offline: delivery" not in ran.stderr
    assert ran.stdout == f"=== {online.node_id} ({HOST})  Success  exit 0\nhi\n"
    shown = server.cli("commands", "show", cid_of(ran))
    assert [i["node_id"] for i in shown["invocations"]] == [online.node_id]

    # The API's answer counts them; with no node Online, nothing is stored.
    client = Client(server.url, server.token)
    body = {"targets": [online.node_id, offline.node_id], "script": "true"}
    created = client.post("/commands", {**body, "online_only": True})
    assert (created["left_out"], created["offline"]) == (1, 0)
    assert client.post("/commands", body)["offline"] == 1
    refused = server.cli_raw("run", "--online-only", "--target", offline.node_id, "--", "true")
    assert refused.returncode == 3
    assert "none of the 1 node(s) the targets match is Online" in refused.stderr


# -- item: one default timeout, whichever client asks ------------------------------------

def test_run_leaves_the_timeouts_to_the_server_the_console_reads_them_from(
        sqlite_server: Server, node: Agent) -> None:
    """The CLI had its own "1h" beside the server's default (and the console, 600 s):
    unset, ``run`` now sends none, so what is stored is the default the OpenAPI document
    gives, which is where the console's run page reads it."""
    import httpx

    schema = httpx.get(f"{sqlite_server.url}/api/v1/openapi.json", timeout=30).json()
    fields = schema["components"]["schemas"]["CommandRequest"]["properties"]
    ran = sqlite_server.cli_raw("run", "--target", node.node_id, "--", "true")
    assert ran.returncode == 0, ran.stderr
    shown = sqlite_server.cli("commands", "show", cid_of(ran))
    assert shown["timeout"] == fields["timeout"]["default"], shown
    assert shown["delivery_timeout"] == fields["delivery_timeout"]["default"], shown
    given = sqlite_server.cli_raw("run", "--target", node.node_id, "--timeout", "90s",
                                  "--delivery-timeout", "2m", "--", "true")
    assert given.returncode == 0, given.stderr
    kept = sqlite_server.cli("commands", "show", cid_of(given))
    assert (kept["timeout"], kept["delivery_timeout"]) == (90, 120), kept
