"""A server killed with SIGKILL in the middle of a fan-out to 50 devices, then restarted.

Why: the loopback version (tests/integration/test_durability.py) shows the
delivery guarantees with 8 agents on one host. In the field the fleet is larger
and every device sits behind a point-to-point link of its own; when the control
plane dies mid fan-out, some results are stored, some are in flight, some
scripts are still running, and every device dials again on its own. This runs
the real processes in ``pppnet.PppNetwork``: the server and the CLI in the
server namespace, 50 agents (each its own state directory) in the device
namespace, reaching the server by its name through ``ppp0``.

PRODUCT CONTRACT under test (docs/protocol.md: Delivery guarantees):

- The server stores a command and all its invocations before sending any of
  them, so a command accepted before the kill survives it.
- An agent records an invocation in its fsynced ledger before starting it; a
  ``command`` whose id is in the ledger never starts anything again.
- Output and result stay in the agent's spool until ``result_ack`` and are
  re-sent after every reconnect; the server acknowledges a result only once it
  holds all the output.

So after the restart every invocation ends ``Success`` with its full output,
and each script ran exactly once: it appends one line to a file named after its
invocation (``$TETHER_INVOCATION_ID``) in a directory the test shares with the
device namespace through the filesystem, so a second run would leave two lines.

Measured times are collected in ``TIMINGS`` and printed after the module
(``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pppnet import OutputWatcher, PppNetwork, clean_env

pytestmark = pytest.mark.netns

PORT = 8400  # the server namespace is fresh, so any port is free there
AGENTS = 50
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 5.0
RECONNECT_CAP = 3.0
REGISTER_WORKERS = 8  # parallel registrations; the machine has 2 cores
KILL_AT_STARTED = 5  # scripts started (invocation files) before the server is killed
ONLINE_DEADLINE = 180.0  # 50 agents booting on 2 cores
FIRST_RUNS_DEADLINE = 60.0
TERMINAL_DEADLINE = 120.0  # from the restart
STDOUT_SAMPLE = 10  # nodes whose stdout is fetched and compared byte for byte
POLL = 0.5  # poll interval of deadline-bound CLI polls (each poll is a process)
FILE_POLL = 0.01  # the invocation files are cheap to look at
NODE_ID = re.compile(r"mi-[0-9a-f]{17}")
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "Undeliverable"}
AGENT_CONNECTED = "connected to "

TIMINGS: dict[str, float] = {}  # what -> seconds (or a count), printed after the module


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\nfan-out restart timings:")
        for what, value in TIMINGS.items():
            print(f"  {value:8.2f}  {what}")


class Fleet:
    """The server, the CLI and 50 agents in one ``PppNetwork``, and their output."""

    def __init__(self, net: PppNetwork, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.data_dir = tmp / "server"
        self.server_url = f"http://{net.server_addr}:{PORT}"
        self.device_url = f"http://{net.server_name}:{PORT}"
        self.token = ""
        self.server: subprocess.Popen[str] | None = None
        self.server_logs: list[OutputWatcher] = []  # one per server run
        self.node_ids: list[str] = []  # agent i is node_ids[i]
        self.agents: list[subprocess.Popen[str]] = []
        self.agent_logs: list[OutputWatcher] = []

    def logs(self, agents: int = 3) -> str:
        parts = [f"\n--- server run {i + 1} ---\n{w.text()[-6000:]}"
                 for i, w in enumerate(self.server_logs)]
        parts += [f"\n--- agent {i} ({self.node_ids[i] if i < len(self.node_ids) else '?'}) "
                  f"---\n{w.text()[-2000:]}" for i, w in enumerate(self.agent_logs[:agents])]
        return "".join(parts)

    # -- server and CLI ------------------------------------------------------------

    def start_server(self) -> None:
        """``python -m tether server`` in the server namespace; same data dir and port
        every time, so a restart finds the state and the agents find the server."""
        proc, watcher = self.net.spawn(self.net.server_ns, [
            sys.executable, "-m", "tether", "server", "--insecure",
            "--data-dir", str(self.data_dir),
            "--host", self.net.server_addr, "--port", str(PORT),
            "--keepalive-interval", f"{KEEPALIVE_INTERVAL:g}",
            "--keepalive-timeout", f"{KEEPALIVE_TIMEOUT:g}"], env=clean_env())
        self.server = proc
        self.server_logs.append(watcher)
        watcher.wait_for(f"listening on {self.server_url}", timeout=60)
        token_file = self.data_dir / "admin-token"
        assert token_file.is_file(), f"no admin token after start{self.logs()}"
        self.token = token_file.read_text().strip()

    def kill_server(self) -> None:
        """SIGKILL to the server's whole process group: no shutdown code runs."""
        assert self.server is not None and self.server.poll() is None, self.logs()
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=10)

    def cli_raw(self, *args: str) -> str:
        """The operator CLI in the server namespace; its stdout. It must exit 0."""
        result = self.net.run(self.net.server_ns, [sys.executable, "-m", "tether.cli", *args],
                              env=clean_env(TETHER_SERVER=self.server_url,
                                            TETHER_TOKEN=self.token))
        assert result.returncode == 0, (
            f"tether.cli {args}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            f"{self.logs()}")
        return result.stdout

    def cli(self, *args: str) -> Any:
        return json.loads(self.cli_raw(*args))

    def show(self, command_id: str) -> dict[str, Any]:
        command: dict[str, Any] = self.cli("commands", "show", command_id, "--json")
        return command

    # -- the devices -------------------------------------------------------------------

    def register_all(self) -> None:
        """One activation for the whole fleet, tagged; registrations in parallel."""
        activation = self.cli("activation", "create", "--limit", str(AGENTS),
                              "--tag", "fleet=t", "--json")

        def register(i: int) -> str:
            result = self.net.run(self.net.device_ns, [
                sys.executable, "-m", "tether.agent", "register", "--insecure",
                "--server", self.device_url,
                "--activation-id", activation["activation_id"],
                "--activation-code", activation["activation_code"],
                "--name", f"dev-{i:02d}", "--state-dir", str(self.state_dir(i))],
                env=clean_env())
            found = NODE_ID.search(result.stdout)
            assert result.returncode == 0 and found, (
                f"register dev-{i:02d}: exit {result.returncode}\n{result.stdout}"
                f"{result.stderr}{self.logs()}")
            return found.group(0)

        with ThreadPoolExecutor(max_workers=REGISTER_WORKERS) as pool:
            self.node_ids = list(pool.map(register, range(AGENTS)))
        assert len(set(self.node_ids)) == AGENTS, self.node_ids

    def state_dir(self, i: int) -> Path:
        return self.tmp / "agents" / f"dev-{i:02d}"

    def start_agents(self) -> None:
        """All at once: each boots on its own, the kernel spreads them over the cores."""
        for i in range(AGENTS):
            proc, watcher = self.net.spawn(self.net.device_ns, [
                sys.executable, "-m", "tether.agent", "run", "--state-dir",
                str(self.state_dir(i)), "--reconnect-cap", f"{RECONNECT_CAP:g}"],
                env=clean_env())
            self.agents.append(proc)
            self.agent_logs.append(watcher)

    def online(self) -> set[str]:
        nodes = self.cli("nodes", "list", "--ping-status", "Online", "--json")
        return {n["node_id"] for n in nodes} & set(self.node_ids)

    def wait_all_online(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            online = self.online()
            if len(online) == AGENTS:
                return
            dead = [i for i, p in enumerate(self.agents) if p.poll() is not None]
            assert not dead, f"agents {dead} exited{self.logs()}"
            assert time.monotonic() < deadline, (
                f"{len(online)} of {AGENTS} agents Online within {timeout} s{self.logs()}")
            time.sleep(POLL)

    def connects(self, i: int) -> int:
        """How often agent ``i`` has connected (its log)."""
        return sum(AGENT_CONNECTED in line for line in list(self.agent_logs[i].lines))

    # -- teardown ----------------------------------------------------------------------

    def stop(self) -> None:
        """SIGKILL every agent's process group at once, then the server's; reap them all.

        At once, because the network's own teardown stops its processes one after
        the other with a 5-s grace each. Then wait until nothing is left in the
        device namespace (a script still sleeping runs in its own session and ends
        within 2 s; whatever outlives that is killed by its pid).
        """
        procs = [*self.agents, *([self.server] if self.server is not None else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=30)
        assert all(p.returncode is not None for p in self.agents)
        deadline = time.monotonic() + 10
        while self.device_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.device_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def device_pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.net.device_ns],
                             capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]


@pytest.fixture
def fleet(ppp_network: PppNetwork, tmp_path: Path) -> Iterator[Fleet]:
    """The server, started; the test registers and starts the agents."""
    field = Fleet(ppp_network, tmp_path)
    try:
        field.start_server()
        yield field
    finally:
        field.stop()  # the network's teardown then finds nothing left to stop


def script_for(runs: Path) -> str:
    """One line into ``runs/$TETHER_INVOCATION_ID``, a pseudo-random 0-2 s sleep (from
    the invocation id, so each invocation sleeps the same if it ever ran again), and
    one line of stdout naming the node."""
    return (f'echo started >> {runs}/"$TETHER_INVOCATION_ID"\n'
            'ms=$(( 0x${TETHER_INVOCATION_ID%%-*} % 2001 ))\n'
            'sleep "$(( ms / 1000 )).$(printf %03d $(( ms % 1000 )))"\n'
            'echo "out $TETHER_NODE_ID"\n')


def files_in(runs: Path) -> int:
    return sum(1 for _ in runs.iterdir())


def test_server_killed_mid_fan_out_to_50_agents_loses_nothing_and_runs_nothing_twice(
        fleet: Fleet, tmp_path: Path) -> None:
    t0 = time.monotonic()
    fleet.register_all()
    TIMINGS[f"{AGENTS} registrations ({REGISTER_WORKERS} in parallel), s"] = (
        time.monotonic() - t0)
    t0 = time.monotonic()
    fleet.start_agents()
    fleet.wait_all_online(ONLINE_DEADLINE)
    TIMINGS[f"{AGENTS} agents started -> all Online, s"] = time.monotonic() - t0
    tagged = fleet.cli("nodes", "list", "--tag", "fleet=t", "--json")
    assert {n["node_id"] for n in tagged} == set(fleet.node_ids), tagged

    runs = tmp_path / "runs"  # seen from the device namespace through the filesystem
    runs.mkdir()
    submitted = time.monotonic()
    command = fleet.cli("run", "--target", "tag:fleet=t", "--no-wait", "--json", "--",
                        script_for(runs))
    command_id: str = command["command_id"]
    assert len(command["invocations"]) == AGENTS, command

    # Kill once a few scripts have started, while results are still on their way.
    deadline = time.monotonic() + FIRST_RUNS_DEADLINE
    while files_in(runs) < KILL_AT_STARTED:
        assert time.monotonic() < deadline, (
            f"{files_in(runs)} scripts started within {FIRST_RUNS_DEADLINE} s{fleet.logs()}")
        time.sleep(FILE_POLL)
    started_at_trigger = files_in(runs)
    before = fleet.show(command_id)  # just before the kill
    fleet.kill_server()
    killed_wall, killed = time.time(), time.monotonic()
    started_at_kill = files_in(runs)
    shown_success = sum(i["status"] == "Success" for i in before["invocations"])
    shown_terminal = sum(i["status"] in TERMINAL for i in before["invocations"])
    TIMINGS["submit -> kill, s"] = killed - submitted
    TIMINGS["scripts started when the kill was triggered"] = started_at_trigger
    TIMINGS["scripts started at the kill"] = started_at_kill
    TIMINGS["results stored before the kill (commands show just before it)"] = shown_success
    assert shown_terminal < AGENTS, f"every result was in before the kill: {before}"

    fleet.start_server()
    restarted = time.monotonic()
    TIMINGS["kill -> restarted server listening, s"] = restarted - killed

    deadline = restarted + TERMINAL_DEADLINE
    while True:
        done = fleet.show(command_id)
        if all(i["status"] in TERMINAL for i in done["invocations"]):
            break
        assert time.monotonic() < deadline, (
            f"not all terminal {TERMINAL_DEADLINE} s after the restart: "
            f"{json.dumps(done['counts'])}\n"
            f"{[i for i in done['invocations'] if i['status'] not in TERMINAL]}{fleet.logs()}")
        time.sleep(POLL)
    TIMINGS["restart -> all invocations terminal, s"] = time.monotonic() - restarted
    online_again = len(fleet.online())

    invocations = {i["node_id"]: i for i in done["invocations"]}
    stored_before = sum(i["ended_at"] is not None and i["ended_at"] < killed_wall
                        for i in invocations.values())
    TIMINGS["results stored before the kill (ended_at before the kill)"] = stored_before
    TIMINGS["agents Online when all were terminal"] = online_again
    reconnected = sum(fleet.connects(i) >= 2 for i in range(AGENTS))
    TIMINGS["agents that logged a reconnect"] = reconnected

    # Every invocation accounted for, every one a success.
    assert set(invocations) == set(fleet.node_ids), sorted(invocations)
    statuses = {n: i["status"] for n, i in invocations.items()}
    not_ok = {n: (i["status"], i["reason"]) for n, i in invocations.items()
              if i["status"] != "Success" or i["exit_code"] != 0}
    assert not not_ok, f"{not_ok}\n{statuses}{fleet.logs()}"
    assert done["status"] == "Success", done["counts"]
    # The kill was in the middle of the fan-out: some results came in after it.
    assert stored_before < AGENTS, "every result was stored before the kill"

    # Each script ran exactly once: one file per invocation, one line in each.
    ids = {i["invocation_id"] for i in invocations.values()}
    files = {p.name: p.read_text().splitlines() for p in runs.iterdir()}
    assert set(files) == ids, (sorted(set(files) ^ ids), fleet.logs())
    twice = {name: lines for name, lines in files.items() if lines != ["started"]}
    assert not twice, f"ran more than once (or garbled): {twice}"

    # Every node's output whole: sizes for all, the bytes for a sample.
    wrong_size = {n: (i["stdout_size"], i["stderr_size"], i["stdout_truncated"])
                  for n, i in invocations.items()
                  if (i["stdout_size"], i["stderr_size"], i["stdout_truncated"])
                  != (len(f"out {n}\n"), 0, False)}
    assert not wrong_size, wrong_size
    for node_id in random.Random(command_id).sample(sorted(invocations), STDOUT_SAMPLE):
        out = fleet.cli_raw("commands", "output", command_id, node_id, "--stream", "stdout")
        assert out == f"out {node_id}\n", (node_id, out)

    dead = [i for i, p in enumerate(fleet.agents) if p.poll() is not None]
    assert not dead, f"agents {dead} exited during the test{fleet.logs()}"
