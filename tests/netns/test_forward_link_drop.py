"""``tether forward`` across a cellular link drop: refused clearly while down, working again after.

Why: a port forward to a device on LTE is held open for minutes or hours (a web
UI, a database console), so the link will drop under it. Unit and loopback
tests cannot show that the real CLI, server and agent notice a silent link
(no FIN, no RST), that connections in flight end instead of hanging, that the
forward refuses new connections with the reason instead of dying or hanging,
and that once the device is back the same forward and the same session carry
new connections again. This runs them in ``pppnet.PppNetwork`` as
``test_copy_resume`` does (whose ``Copy`` helper, an agent on a 2-s reconnect
cap, this reuses): the server and the operator's ``tether forward`` in the
server namespace, the agent and the forwarded service (an echo server on the
device's own 127.0.0.1) in the device namespace, the link between them cut and
restored by the relay. Clients of the forward run in the server namespace, as
the operator's browser would.

PRODUCT CONTRACT under test (``tether forward --help``; tether/cli/forward.py,
tether/server/api/sessions.py, tether/server/sessions/manager.py):

- ``tether forward NODE 0:HOST:PORT`` prints ``tether: forwarding
  127.0.0.1:LOCAL -> HOST:PORT on NODE (session ID); Ctrl-C to stop``; each
  accepted connection is one channel to HOST:PORT as the node sees it; many run
  at once; a half-close passes through (the client's EOF reaches the service,
  and the service's answer and EOF come back).
- When the node's link is lost, connections in flight end (the CLI prints
  ``tether: forwarded connection ended: the node's link was lost``, or the
  connection just closes); the device's side of them is closed too.
- While the node is not connected, a new connection is accepted and closed, and
  the CLI prints ``tether: connection to HOST:PORT refused: NODE is not
  connected``; the forward keeps running.
- Once the agent is back, new connections work through the same forward
  process and the same session, still ``Connected``.
- SIGTERM stops the forward (exit 0) and ends its session: ``Terminated``,
  ``ended by its operator``.

Measured times are collected in ``TIMINGS`` and printed after the module
(``pytest -s``).
"""

from __future__ import annotations

import json
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
from pppnet import OutputWatcher, PppNetwork, clean_env
from test_cellular import DETECT_BOUND, POLL
from test_copy_resume import Copy

pytestmark = pytest.mark.netns

FORWARDING = re.compile(r"tether: forwarding 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+) on "
                        r"(\S+) \(session (\S+)\); Ctrl-C to stop")
CONCURRENT = 8  # connections at once in each exchange
PAYLOAD = 256 * 1024  # bytes each connection sends, then half-closes, and gets back
EXCHANGE_TIMEOUT = 60.0  # one exchange of CONCURRENT connections, end to end
# From the cut until a connection in flight has ended: the server's detection, its
# close of the channel, the relay to the CLI; 5 s for scheduling.
IN_FLIGHT_END_BOUND = DETECT_BOUND + 5.0
ONLINE_BOUND = 60.0  # restore -> Online; a dial hanging in the blackhole waits for a SYN retry
STOP_BOUND = 10.0  # SIGTERM -> the forward has exited
LOST = "the node's link was lost"

TIMINGS: dict[str, float] = {}  # what -> seconds, printed after the module

# The device's service: echoes every byte; at the client's EOF it half-closes too.
# Prints "listening PORT", then "accepted N" and "ended N HOW" for each connection.
ECHO_SERVICE = r"""
import socket, threading
lock = threading.Lock()
def say(*words):
    with lock:  # one whole line at a time from many threads
        print(*words, flush=True)
listener = socket.create_server(("127.0.0.1", 0))
say("listening", listener.getsockname()[1])
def serve(conn, n):
    how = "eof"
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            how = f"error {exc.errno}"
    say("ended", n, how)
count = 0
while True:
    conn, _ = listener.accept()
    count += 1
    say("accepted", count)
    threading.Thread(target=serve, args=(conn, count), daemon=True).start()
"""

# COUNT connections at once to 127.0.0.1:PORT, each sending SIZE random bytes and
# half-closing, then reading to EOF. Prints a JSON list, one entry per connection:
# "echoed" (the reply was exactly what it sent), "got" (bytes back) and "end"
# ("eof", "reset ERRNO" or "timeout").
EXCHANGE_CLIENT = r"""
import json, os, socket, sys, threading
port, count, size = map(int, sys.argv[1:4])
timeout = float(sys.argv[4])
results = [None] * count
def send(sock, payload):
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the forward closed it; the reading side says how
def one(i):
    payload, reply, end = os.urandom(size), bytearray(), "eof"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sender = threading.Thread(target=send, args=(sock, payload))
            sender.start()
            try:
                while data := sock.recv(65536):
                    reply += data
            except socket.timeout:
                end = "timeout"
            except OSError as exc:
                end = f"reset {exc.errno}"
            sender.join()
    except OSError as exc:
        end = f"connect {exc.errno}"
    results[i] = {"echoed": bytes(reply) == payload, "got": len(reply), "end": end}
threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""

# One connection held open across the cut: sends a line and prints "echoed" once it
# is back; then sends each line read from stdin (the test writes one after the cut)
# and reads until the connection ends, printing "ended eof", "ended reset ERRNO" and
# any bytes that still came back ("late N").
HELD_CLIENT = r"""
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
sock.sendall(b"before the cut\n")
reply = b""
while not reply.endswith(b"\n"):
    data = sock.recv(4096)
    if not data:
        break
    reply += data
print("echoed" if reply == b"before the cut\n" else f"bad echo {reply!r}", flush=True)
sock.settimeout(None)  # from here the test bounds the wait
line = sys.stdin.readline().encode()
try:
    sock.sendall(line)
except OSError as exc:
    print("send failed", exc.errno, flush=True)
late = 0
try:
    while data := sock.recv(4096):
        late += len(data)
    how = "eof"
except OSError as exc:
    how = f"reset {exc.errno}"
print("late", late, flush=True)
print("ended", how, flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\nforward link-drop timings:")
        for what, seconds in TIMINGS.items():
            print(f"  {seconds:6.2f} s  {what}")


class Forwarding(Copy):
    """``Copy``'s server and agent (reconnect cap 2 s), a service on the device and
    ``tether forward`` to it."""

    def start_service(self) -> int:
        """The echo service on the device's 127.0.0.1; its port."""
        proc, watcher = self.net.spawn(self.net.device_ns,
                                       [sys.executable, "-c", ECHO_SERVICE], env=clean_env())
        self.procs.append(proc)
        self.watchers["service"] = watcher
        return int(watcher.wait_for("listening", timeout=10).split()[1])

    def forward(self, port: int) -> tuple[subprocess.Popen[str], int, str]:
        """``tether forward NODE 0:127.0.0.1:PORT`` beside the server: the process, its
        local port and its session id, once it says it is forwarding."""
        proc, watcher = self.net.spawn(
            self.net.server_ns,
            [sys.executable, "-m", "tether.cli", "forward", self.node_id,
             f"0:127.0.0.1:{port}"],
            env=clean_env(TETHER_SERVER=self.server_url, TETHER_TOKEN=self.token))
        self.procs.append(proc)
        self.watchers["forward"] = watcher
        try:
            line = watcher.wait_for("tether: forwarding", timeout=30)
        except TimeoutError as exc:
            pytest.fail(f"the forward did not start: {exc}{self.logs()}")
        m = FORWARDING.search(line)
        assert m, line
        assert int(m.group(2)) == port and m.group(3) == self.node_id, line
        return proc, int(m.group(1)), m.group(4)

    def exchange(self, local: int, count: int = CONCURRENT,
                 size: int = PAYLOAD) -> list[dict[str, Any]]:
        """``count`` connections at once through the forward; each one's outcome."""
        result = self.net.run(
            self.net.server_ns,
            [sys.executable, "-c", EXCHANGE_CLIENT, str(local), str(count), str(size),
             f"{EXCHANGE_TIMEOUT:g}"],
            timeout=EXCHANGE_TIMEOUT + 30)
        assert result.returncode == 0, f"{result.stdout}{result.stderr}{self.logs()}"
        outcomes: list[dict[str, Any]] = json.loads(result.stdout)
        return outcomes

    def held(self, local: int) -> tuple[subprocess.Popen[str], OutputWatcher]:
        """A connection through the forward, echoed once, then held open."""
        proc, watcher = self.net.spawn(self.net.server_ns,
                                       [sys.executable, "-c", HELD_CLIENT, str(local)],
                                       stdin=subprocess.PIPE)
        self.procs.append(proc)
        self.watchers["held"] = watcher
        try:
            watcher.wait_for("echoed", "bad echo", "Error", timeout=30)
        except TimeoutError as exc:
            pytest.fail(f"the held connection was not echoed: {exc}{self.logs()}")
        assert "echoed" in watcher.lines, self.logs()
        return proc, watcher

    def session(self, session_id: str) -> dict[str, Any]:
        row: dict[str, Any] = self.cli("sessions", "show", session_id, "--json")
        return row

    def forward_sessions(self) -> list[dict[str, Any]]:
        return [s for s in self.cli("sessions", "list", "--node", self.node_id, "--json")
                if s["kind"] == "forward"]

    def service_ended(self, n: int) -> list[str]:
        return [line for line in self.watchers["service"].lines
                if line.startswith(f"ended {n} ")]

    def only_open_at_service(self) -> int:
        """The number of the one connection the service holds open (after ``held``)."""
        deadline = time.monotonic() + 10
        while True:
            seen: dict[str, set[int]] = {"accepted": set(), "ended": set()}
            for line in list(self.watchers["service"].lines):
                word, _, rest = line.partition(" ")
                if word in seen:
                    seen[word].add(int(rest.split()[0]))
            still_open = seen["accepted"] - seen["ended"]
            if len(still_open) == 1:
                return still_open.pop()
            assert time.monotonic() < deadline, (
                f"the service holds {sorted(still_open)} open, not one{self.logs()}")
            time.sleep(POLL)


@pytest.fixture
def fwd(ppp_network: PppNetwork, tmp_path: Path) -> Iterator[Forwarding]:
    """The server (short keepalive, as in ``test_cellular``), started."""
    field = Forwarding(ppp_network, tmp_path)
    try:
        field.start_server()
        yield field
    finally:
        field.stop()  # the network's teardown kills whatever is left in its namespaces


def assert_all_echoed(outcomes: list[dict[str, Any]], what: str, logs: str) -> None:
    bad = [o for o in outcomes if not (o["echoed"] and o["end"] == "eof")]
    assert len(outcomes) == CONCURRENT and not bad, f"{what}: {outcomes}{logs}"


def test_forward_refuses_while_the_link_is_down_and_works_again_after(
        fwd: Forwarding) -> None:
    fwd.start_agent()
    fwd.wait_online()
    port = fwd.start_service()
    proc, local, session_id = fwd.forward(port)
    forward_out = fwd.watchers["forward"]

    # Up: many connections at once, each half-closed by the client, all echoed.
    started = time.monotonic()
    assert_all_echoed(fwd.exchange(local), "before the cut", fwd.logs())
    TIMINGS[f"{CONCURRENT} x {PAYLOAD // 1024} KiB echoed at once, link up"] = (
        time.monotonic() - started)

    # One connection in flight across the cut.
    held, held_out = fwd.held(local)
    held_n = fwd.only_open_at_service()
    forward_mark = fwd.mark("forward")

    fwd.net.cut()
    cut = time.monotonic()
    assert held.stdin is not None
    held.stdin.write("sent after the cut\n")
    held.stdin.flush()
    # A connection made before the server has noticed: it must not hang either.
    blind, blind_out = fwd.net.spawn(
        fwd.net.server_ns, [sys.executable, "-c", EXCHANGE_CLIENT, str(local), "1", "1024",
                            f"{EXCHANGE_TIMEOUT:g}"])
    fwd.procs.append(blind)
    fwd.watchers["blind"] = blind_out

    # The connection in flight ends, and does not hang.
    try:
        ended = held_out.wait_for("ended", timeout=IN_FLIGHT_END_BOUND)
    except TimeoutError:
        pytest.fail(f"the connection in flight did not end within {IN_FLIGHT_END_BOUND} s "
                    f"of the cut{fwd.logs()}")
    TIMINGS[f"cut -> connection in flight ends ({ended})"] = time.monotonic() - cut
    fwd.wait_status("ConnectionLost", timeout=DETECT_BOUND + 10)
    TIMINGS["cut -> server shows ConnectionLost (CLI poll, upper bound)"] = (
        time.monotonic() - cut)
    try:
        blind.wait(timeout=max(0.0, cut + IN_FLIGHT_END_BOUND - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a connection made just after the cut still open "
                    f"{IN_FLIGHT_END_BOUND} s after it{fwd.logs()}")
    TIMINGS["cut -> a connection made just after it ends"] = time.monotonic() - cut
    blind_out.join(timeout=5)
    (outcome,) = json.loads(blind_out.lines[-1])
    assert not outcome["echoed"] and outcome["end"] != "timeout", outcome
    assert "late 0" in held_out.lines, f"bytes came back across a cut link{fwd.logs()}"
    # If the CLI says why, it says the link was lost.
    said = [line for line in forward_out.lines[forward_mark:] if "forwarded connection" in line]
    assert all(LOST in line for line in said), said

    # The device's side of it is closed too, once the agent drops its link.
    deadline = cut + DETECT_BOUND + 10
    while not fwd.service_ended(held_n):
        assert time.monotonic() < deadline, (
            f"the device's side of the connection in flight still open "
            f"{DETECT_BOUND + 10} s after the cut{fwd.logs()}")
        time.sleep(POLL)
    TIMINGS["cut -> the device's side of it closed"] = time.monotonic() - cut

    # A new connection while the node is away: closed at once, with the reason.
    refused_mark = fwd.mark("forward")
    started = time.monotonic()
    outcomes = fwd.exchange(local, count=1, size=1024)
    TIMINGS["link down: a new connection is closed"] = time.monotonic() - started
    assert outcomes[0]["got"] == 0 and not outcomes[0]["echoed"], outcomes
    assert outcomes[0]["end"] == "eof" or outcomes[0]["end"].startswith("reset"), outcomes
    refused = fwd.wait_line("is not connected", refused_mark, timeout=10, name="forward")
    assert refused == (f"tether: connection to 127.0.0.1:{port} refused: "
                       f"{fwd.node_id} is not connected"), refused
    assert proc.poll() is None, f"the forward exited while the link was down{fwd.logs()}"

    # Back: the same forward process and session carry new connections again.
    fwd.net.restore()
    restored = time.monotonic()
    fwd.wait_status("Online", timeout=ONLINE_BOUND)
    TIMINGS["restore -> Online"] = time.monotonic() - restored
    started = time.monotonic()
    assert_all_echoed(fwd.exchange(local), "after the restore", fwd.logs())
    TIMINGS[f"{CONCURRENT} x {PAYLOAD // 1024} KiB echoed at once, after the restore"] = (
        time.monotonic() - started)
    assert proc.poll() is None, fwd.logs()
    (row,) = fwd.forward_sessions()
    assert row["session_id"] == session_id, row
    assert row["status"] == "Connected" and row["ended_at"] is None, row
    assert not [line for line in forward_out.lines if "the forward ended" in line], fwd.logs()

    # SIGTERM stops the forward and ends the session, also with a connection open.
    held, held_out = fwd.held(local)
    held_n = fwd.only_open_at_service()
    os.killpg(proc.pid, signal.SIGTERM)
    stopping = time.monotonic()
    try:
        code = proc.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the forward still running {STOP_BOUND} s after SIGTERM{fwd.logs()}")
    TIMINGS["SIGTERM -> the forward exits"] = time.monotonic() - stopping
    assert code == 0, f"the forward: exit {code}{fwd.logs()}"
    row = fwd.session(session_id)
    assert row["status"] == "Terminated" and row["ended_at"] is not None, row
    assert row["end_reason"] == "ended by its operator", row
    assert row["bytes_to_node"] >= 2 * CONCURRENT * PAYLOAD, row
    assert row["bytes_from_node"] >= 2 * CONCURRENT * PAYLOAD, row
    # The connection open at the stop ends at both ends.
    assert held.stdin is not None
    held.stdin.write("sent after the stop\n")
    held.stdin.flush()
    try:
        held_out.wait_for("ended", timeout=10)
    except TimeoutError:
        pytest.fail(f"a connection open at the stop still open 10 s after{fwd.logs()}")
    deadline = time.monotonic() + 10
    while not fwd.service_ended(held_n):
        assert time.monotonic() < deadline, (
            f"the device's side of a connection open at the stop still open{fwd.logs()}")
        time.sleep(POLL)
