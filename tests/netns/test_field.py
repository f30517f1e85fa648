"""Field conditions end to end: an upload cut mid-way, a lossy slow link, a queue for
an offline node.

Why: ``test_cellular`` shows that a stalled link is noticed and that short
results survive an outage. The field adds what unit tests cannot show with real
processes: a large result cut while its bytes are crossing a slow bearer must
arrive byte-exact and the script must not run twice (1), also when the script is
still writing as the link comes back (1b); registration, inventory and commands
must work over a link with the latency and loss of a poor LTE cell (2); and a
backlog queued for an offline node must be delivered in submission order, with
commands whose delivery timeout passed never run (3).

Same layout as ``test_cellular`` (whose ``Cellular`` helper this reuses): the
server and the CLI in the server namespace with a short keepalive, the agent in
the device namespace with ``--reconnect-cap``, the link shaped, cut and restored
by ``pppnet.PppNetwork``. Waits are on log lines, link counters and statuses;
measured times are collected in ``TIMINGS`` and printed after the module
(``pytest -s``).

PRODUCT CONTRACT under test (docs/protocol.md: Delivery guarantees, Keepalive):

- Output and result stay in the agent's spool until ``result_ack`` and are
  re-sent after every reconnect; output is written at its offset, so a re-send
  is harmless; the server acknowledges a result only once it holds every byte.
  An invocation id runs at most once.
- The server closes a connection that sent nothing for keepalive interval +
  timeout and marks the node ``ConnectionLost``.
- Commands queued for an offline node go out oldest first (``invocations.seq``)
  when it connects; the agent appends each to its ledger and starts it in the
  order it arrives. A ``Pending`` invocation past its delivery timeout becomes
  ``DeliveryTimedOut`` (swept every second) and is never sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pppnet import CARRIER_PPP_ADDR, DEVICE_ADDR, PppNetwork, clean_env
from test_cellular import (
    AGENT_CONNECTED,
    DETECT_BOUND,
    NODE_ID,
    POLL,
    PORT,
    RECONNECT_BOUND,
    RECONNECT_CAP,
    Cellular,
    ppp0_addresses,
    start_online,
)

from tether.agent.runner import mark_of

pytestmark = pytest.mark.netns

TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "Undeliverable"}
TIMINGS: dict[str, float] = {}  # what -> seconds, printed after the module
NOTES: list[str] = []  # other measured numbers, printed with the timings

# 1. the upload cut mid-way
RATE_KBIT = 256  # a poor uplink; 400 KB take ~13 s at this rate
OUTPUT_LINES = 5700
OUTPUT_LINE = "tether field line %07.0f: the quick brown fox jumps over the lazy dog"
CUT_AFTER_BYTES = 100_000  # uplink IP bytes since the command was submitted

# 2. the lossy link
LATENCY_MS = 300.0  # one way, so 600 ms round trip
LOSS_PERCENT = 5.0
SEED = 20261201

# 3. the offline queue
QUEUED = 20
SHORT_AFTER = (4, 11, 17)  # a 1-s delivery timeout command follows these queued ones
SHORT_DELIVERY_TIMEOUT = 1.0
# Submission to DeliveryTimedOut on the server's own clock: the timeout, one sweep, and a
# second for a loaded machine (no CLI polling in it: that is measured separately).
SWEEP_BOUND = SHORT_DELIVERY_TIMEOUT + 1.0 + 1.0


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS or NOTES:
        print("\nfield timings:")
        for what, seconds in TIMINGS.items():
            print(f"  {seconds:6.2f} s  {what}")
        for note in NOTES:
            print(f"  {note}")


def expected_output(last: int = OUTPUT_LINES) -> bytes:
    """What ``seq -f OUTPUT_LINE 1 LAST`` prints, computed here."""
    return "".join(OUTPUT_LINE % i + "\n" for i in range(1, last + 1)).encode()


def zero_runs(data: bytes) -> list[tuple[int, int]]:
    """[start, end) of each run of NUL bytes: holes in a sparse server-side blob."""
    return [(m.start(), m.end()) for m in re.finditer(rb"\x00+", data)]


class Field(Cellular):
    """``Cellular`` plus byte-exact output, a split register/run and an agent restart."""

    def __init__(self, net: PppNetwork, tmp: Path) -> None:
        super().__init__(net, tmp)
        self.state_dir = tmp / "agent"
        self.agent_runs = 0

    def stdout_bytes(self, command_id: str) -> bytes:
        """``commands output --stream stdout`` as raw bytes (``stdout_of`` decodes)."""
        result = self.net.run(
            self.net.server_ns,
            [sys.executable, "-m", "tether.cli", "commands", "output", command_id,
             self.node_id, "--stream", "stdout"],
            text=False, env=clean_env(TETHER_SERVER=self.server_url, TETHER_TOKEN=self.token))
        assert result.returncode == 0, (
            f"commands output: exit {result.returncode}\n{result.stderr!r}{self.logs()}")
        out: bytes = result.stdout
        return out

    def register(self) -> str:
        """``tether-agent register`` in the device namespace, through the server's name."""
        activation = self.cli("activation", "create", "--json")
        result = self.net.run(self.net.device_ns, [
            sys.executable, "-m", "tether.agent", "register", "--insecure",
            "--server", f"http://{self.net.server_name}:{PORT}",
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"],
            "--state-dir", str(self.state_dir)], env=clean_env(), timeout=120)
        found = NODE_ID.search(result.stdout)
        assert result.returncode == 0 and found, (
            f"register: exit {result.returncode}\n{result.stdout}{result.stderr}{self.logs()}")
        self.node_id = found.group(0)
        return self.node_id

    def run_agent(self) -> subprocess.Popen[str]:
        """``tether-agent run`` on the registered state; its output is ``agent``."""
        if "agent" in self.watchers:  # keep the earlier run's log for failure messages
            self.watchers[f"agent (run {self.agent_runs})"] = self.watchers.pop("agent")
        self.agent_runs += 1
        proc, self.watchers["agent"] = self.net.spawn(self.net.device_ns, [
            sys.executable, "-m", "tether.agent", "run", "--state-dir", str(self.state_dir),
            "--reconnect-cap", f"{RECONNECT_CAP:g}"], env=clean_env())
        self.procs.append(proc)
        return proc

    def stop_agent(self, proc: subprocess.Popen[str]) -> None:
        """SIGTERM the agent's process group and wait for it: the device is off."""
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)

    def commands_shown(self, command_ids: list[str]) -> list[dict[str, Any]]:
        return [self.invocation(cid) for cid in command_ids]

    def wait_all(self, command_ids: list[str], status: str,
                 timeout: float) -> list[dict[str, Any]]:
        """Poll (deadline-bound) until every command's one invocation is ``status``;
        fail at once if one ends otherwise."""
        deadline = time.monotonic() + timeout
        wanted = set(command_ids)
        while True:
            listed = {c["command_id"]: c for c in self.cli("commands", "list", "--limit", "200",
                                                           "--json")}
            statuses = {cid: listed[cid]["status"] for cid in wanted}
            wrong = {cid: s for cid, s in statuses.items() if s in TERMINAL and s != status}
            assert not wrong, f"ended otherwise than {status}: {wrong}{self.logs()}"
            if all(s == status for s in statuses.values()):
                return self.commands_shown(command_ids)
            assert time.monotonic() < deadline, (
                f"not all {status} within {timeout} s: {statuses}{self.logs()}")
            time.sleep(POLL)


@pytest.fixture
def field(ppp_network: PppNetwork, tmp_path: Path) -> Iterator[Field]:
    """The server (short keepalive, as in ``test_cellular``), started."""
    f = Field(ppp_network, tmp_path)
    try:
        f.start_server()
        yield f
    finally:
        f.stop()


# -- 1. a large result cut while it crosses a slow link --------------------------------


def test_result_cut_mid_upload_arrives_byte_exact_and_ran_once(field: Field) -> None:
    net = field.net
    start_online(field)
    runs, data, sha = (field.device_tmp / n for n in ("runs", "data", "sha256"))
    expected = expected_output()
    script = (f"echo run >> {runs}\n"
              f"seq -f '{OUTPUT_LINE}' 1 {OUTPUT_LINES} > {data}\n"
              f"sha256sum {data} | cut -d' ' -f1 > {sha}\n"
              f"cat {data}\n")
    net.shape(rate_kbit=RATE_KBIT)

    before = net.stats()["uplink"]["bytes"]
    submitted = time.monotonic()
    command_id = field.submit(script)
    deadline = submitted + 120
    while (crossed := net.stats()["uplink"]["bytes"] - before) < CUT_AFTER_BYTES:
        assert time.monotonic() < deadline, (
            f"only {crossed} B crossed the uplink{field.logs()}")
        time.sleep(0.02)
    since = field.mark()
    net.cut()
    cut = time.monotonic()
    stats = net.stats()
    early = [line for line in field.watchers["agent"].lines[:since] if "link to" in line]
    NOTES.append(f"1: agent link drops before the cut: {len(early)} {early}")
    NOTES.append(f"1: cut after {crossed} uplink IP bytes, {cut - submitted:.2f} s after "
                 f"submit at {RATE_KBIT} kbit/s (uplink drops so far: "
                 f"{stats['uplink']['dropped_by']})")
    # Mid-upload indeed: the server cannot have the result without every byte.
    assert field.invocation(command_id)["status"] == "InProgress", field.logs()

    field.wait_status("ConnectionLost", timeout=DETECT_BOUND + 10)
    TIMINGS["1: cut mid-upload -> server shows ConnectionLost"] = time.monotonic() - cut
    net.restore()
    net.unshape()
    restored = time.monotonic()
    field.wait_line(AGENT_CONNECTED, since, timeout=RECONNECT_BOUND + 30)
    TIMINGS["1: restore -> agent connected again"] = time.monotonic() - restored
    NOTES.append("1: how the agent learned of the cut: "
                 + field.wait_line("link to ", since, timeout=5).split(": ", 1)[1])
    inv = field.wait_invocation(command_id, TERMINAL, timeout=RECONNECT_BOUND + 60)
    TIMINGS["1: restore -> invocation Success"] = time.monotonic() - restored
    assert inv["status"] == "Success" and inv["exit_code"] == 0, f"{inv}{field.logs()}"

    out = field.stdout_bytes(command_id)
    device_sha = sha.read_text().strip()
    NOTES.append(f"1: {len(out)} B retrieved, sha256 {hashlib.sha256(out).hexdigest()[:16]}..,"
                 f" device sha256 {device_sha[:16]}..")
    assert device_sha == hashlib.sha256(expected).hexdigest(), "the script's data differ"
    assert inv["stdout_size"] == len(expected) and not inv["stdout_truncated"], inv
    assert hashlib.sha256(out).hexdigest() == device_sha, (
        f"stdout not byte-exact: {len(out)} B, first difference at "
        f"{next((i for i, (a, b) in enumerate(zip(out, expected)) if a != b), None)}")
    assert runs.read_text().splitlines() == ["run"], "the script ran more than once"


# -- 1b. output still flowing when the link comes back --------------------------------

# Regression: the agent once sent live output and the result while still re-sending the
# spooled prefix after a reconnect, so the server stored Success over a file with a hole.


def test_output_still_flowing_across_the_outage_is_complete_at_success(field: Field) -> None:
    """Like 1, but the script is still writing when the link comes back: it prints
    ~600 KB, waits for a file the test creates once the agent has reconnected, then
    prints 100 more lines. The spooled prefix is re-sent at 1 Mbit/s (seconds), and
    the tail and the result are produced meanwhile."""
    net = field.net
    start_online(field)
    runs, go = field.device_tmp / "runs", field.device_tmp / "go"
    first, last = 8500, 8600
    expected = expected_output(last)
    script = (f"echo run >> {runs}\n"
              f"seq -f '{OUTPUT_LINE}' 1 {first}\n"
              # The device waits for the test, bounded so it never outlives a failed test
              # (scripts run in their own session, outside the agent's process group).
              f"i=0; while [ ! -e {go} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
              f"seq -f '{OUTPUT_LINE}' {first + 1} {last}\n")
    net.shape(rate_kbit=RATE_KBIT)
    before = net.stats()["uplink"]["bytes"]
    command_id = field.submit(script)
    deadline = time.monotonic() + 120
    while (crossed := net.stats()["uplink"]["bytes"] - before) < CUT_AFTER_BYTES // 2:
        assert time.monotonic() < deadline, f"only {crossed} B crossed{field.logs()}"
        time.sleep(0.02)
    since = field.mark()
    net.cut()
    field.wait_status("ConnectionLost", timeout=DETECT_BOUND + 10)
    net.restore()
    net.shape(rate_kbit=1000, queue_bytes=16 * 1024)  # the re-send takes a few seconds
    field.wait_line(AGENT_CONNECTED, since, timeout=RECONNECT_BOUND + 30)
    go.touch()
    inv = field.wait_invocation(command_id, TERMINAL, timeout=120)
    at_success = time.monotonic()
    assert inv["status"] == "Success" and inv["stdout_size"] == len(expected), (
        f"{inv}{field.logs()}")
    out = field.stdout_bytes(command_id)

    # How long the stored output stays incomplete after Success (deadline-bound poll).
    later = out
    while later != expected and time.monotonic() < at_success + 60:
        time.sleep(0.2)
        later = field.stdout_bytes(command_id)
    NOTES.append(f"1b: at Success {len(out)} B stored, holes {zero_runs(out)}; complete "
                 f"{time.monotonic() - at_success:.1f} s later: {later == expected}")
    assert runs.read_text().splitlines() == ["run"], "the script ran more than once"
    assert later == expected, "the output never became complete"
    assert out == expected, (
        f"Success with stdout not byte-exact: NUL holes at {zero_runs(out)} of {len(out)} B")


# -- 2. registration, inventory and a command over 300 ms and 5 % loss -------------------


def test_register_inventory_and_command_over_a_lossy_high_latency_link(field: Field) -> None:
    net = field.net
    net.reseed(SEED)
    net.shape(latency_ms=LATENCY_MS, loss=LOSS_PERCENT)
    net.reset_stats()

    began = time.monotonic()
    field.register()
    TIMINGS[f"2: register over {LATENCY_MS:g} ms + {LOSS_PERCENT:g} % loss"] = (
        time.monotonic() - began)

    began = time.monotonic()
    field.run_agent()
    node = field.wait_node(
        "Online with ppp0 in its inventory",
        lambda n: n["ping_status"] == "Online" and bool(n["inventory"])
        and (DEVICE_ADDR, CARRIER_PPP_ADDR) in ppp0_addresses(n),
        timeout=90)
    TIMINGS["2: agent start -> Online with ppp0 in the inventory"] = time.monotonic() - began
    assert node["primary_address"] == DEVICE_ADDR, node

    began = time.monotonic()
    done = field.cli("run", "--target", field.node_id, "--timeout", "60", "--json",
                     "--", "echo ok")
    TIMINGS["2: tether run 'echo ok' round trip"] = time.monotonic() - began
    (inv,) = done["invocations"]
    assert done["status"] == "Success" and inv["stdout"] == "ok\n", f"{done}{field.logs()}"

    stats = net.stats()
    NOTES.append("2: link " + ", ".join(
        f"{d} {stats[d]['packets']} packets delivered, {stats[d]['dropped_by']['loss']} lost"
        for d in ("uplink", "downlink")))
    agent_drops = [line for line in field.watchers["agent"].lines if "link to" in line]
    NOTES.append(f"2: agent link drops during the test: {len(agent_drops)}")


# -- 3. a queue for an offline node ------------------------------------------------------


def test_queue_for_offline_node_delivered_in_order_and_expired_never_run(
        field: Field) -> None:
    out_dir = field.device_tmp
    field.register()
    agent = field.run_agent()
    field.wait_node("Online", lambda n: n["ping_status"] == "Online", timeout=60)
    field.stop_agent(agent)
    field.wait_status("ConnectionLost", timeout=DETECT_BOUND + 10)

    queued: list[str] = []
    short: list[tuple[str, float]] = []  # command id, submitted (monotonic)
    for i in range(QUEUED):
        queued.append(field.cli(
            "run", "--target", field.node_id, "--no-wait", "--json",
            "--delivery-timeout", "10m", "--",
            f"echo $$ > {out_dir}/pid-{i:02d}; date +%s.%N > {out_dir}/start-{i:02d}; "
            f"echo {i}")["command_id"])
        if i in SHORT_AFTER:
            k = len(short)
            short.append((field.cli(
                "run", "--target", field.node_id, "--no-wait", "--json",
                "--delivery-timeout", f"{SHORT_DELIVERY_TIMEOUT:g}s", "--",
                f"touch {out_dir}/expired-{k}; echo expired-{k}")["command_id"],
                time.monotonic()))

    expired_at, seen_at = [], []
    for command_id, submitted in short:
        inv = field.wait_invocation(command_id, {"DeliveryTimedOut"}, timeout=SWEEP_BOUND + 30)
        seen_at.append(time.monotonic() - submitted)
        created = field.cli("commands", "show", command_id, "--json")["created_at"]
        expired_at.append(inv["ended_at"] - created)
    TIMINGS["3: submit -> DeliveryTimedOut, slowest of the short ones (CLI poll)"] = max(
        seen_at)
    TIMINGS["3: submit -> DeliveryTimedOut, slowest of the short ones (server clock)"] = max(
        expired_at)
    assert all(SHORT_DELIVERY_TIMEOUT <= t <= SWEEP_BOUND for t in expired_at), expired_at
    pending = [field.invocation(cid)["status"] for cid in queued]
    assert pending == ["Pending"] * QUEUED, f"{pending}{field.logs()}"

    field.run_agent()
    back = time.monotonic()
    invs = field.wait_all(queued, "Success", timeout=60)
    TIMINGS[f"3: agent back -> all {QUEUED} queued Success"] = time.monotonic() - back

    for i, command_id in enumerate(queued):
        assert field.stdout_of(command_id) == f"{i}\n", command_id
    started = [inv["started_at"] for inv in invs]
    assert all(a <= b for a, b in zip(started, started[1:])), (
        f"server started_at not in submission order: {started}")
    pids = [int((out_dir / f"pid-{i:02d}").read_text()) for i in range(QUEUED)]
    assert pids == sorted(pids), f"scripts not spawned in submission order: pids {pids}"
    dates = [float((out_dir / f"start-{i:02d}").read_text()) for i in range(QUEUED)]
    inversions = sum(a > b for a, b in zip(dates, dates[1:]))
    NOTES.append(f"3: started_at spread {started[-1] - started[0]:.3f} s; script clocks "
                 f"spread {max(dates) - min(dates):.3f} s with {inversions} adjacent "
                 f"inversions (scripts run concurrently; pids are in order)")

    for k, (command_id, _) in enumerate(short):
        inv = field.invocation(command_id)
        assert inv["status"] == "DeliveryTimedOut" and inv["started_at"] is None, inv
        assert not (out_dir / f"expired-{k}").exists(), f"expired command {k} ran"



# -- 4. the agent killed during a command --------------------------------------------------


def test_agent_killed_mid_command_reports_failed_and_never_runs_it_again(
        field: Field) -> None:
    start_online(field)
    runs, pid = field.device_tmp / "killed-runs", field.device_tmp / "killed-pid"
    command_id = field.submit(f"echo start >> {runs}; echo $$ > {pid}; sleep 30")
    inv = field.wait_invocation(command_id, {"InProgress"}, timeout=30)
    # InProgress is sent before the script starts, and the runner marks the script's
    # group just after: kill the agent only once the mark is on disk.
    mark = field.tmp / "agent" / "spool" / inv["invocation_id"] / "process.json"
    deadline = time.monotonic() + 30
    while not (mark.exists() and pid.exists()):
        assert time.monotonic() < deadline, "the script never started"
        time.sleep(POLL)
    agent = field.procs.pop()  # start_agent appended it last
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(10)
    proc, field.watchers["agent"] = field.net.spawn(field.net.device_ns, [
        sys.executable, "-m", "tether.agent", "run", "--state-dir", str(field.tmp / "agent"),
        "--reconnect-cap", f"{RECONNECT_CAP:g}"], env=clean_env())
    field.procs.append(proc)
    inv = field.wait_invocation(command_id, {"Failed", "Success", "TimedOut"}, timeout=30)
    assert inv["status"] == "Failed"
    assert inv["reason"] == ("agent restarted during execution; "
                             "the processes it left running were stopped")
    assert mark_of(int(pid.read_text())) is None  # the script the report covers: gone
    # A later command completing proves the agent is past any re-delivery.
    later = field.submit("echo later")
    assert field.wait_invocation(later, {"Success", "Failed"}, timeout=30)["status"] \
        == "Success"
    assert runs.read_text().splitlines() == ["start"]
    # The killed agent's script (its own process group) is the test's to clean up.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid.read_text()), signal.SIGKILL)
