"""Tests of the namespace network itself, so product tests can trust it.

Traffic only ever goes to loopback or to the namespaces' own addresses.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pppnet import (
    DEVICE_ADDR,
    SERVER_ADDR,
    SERVER_NAME,
    NetnsUnavailable,
    PppNetwork,
    unavailable_reason,
)
from tunlink import TOKEN_BURST_BYTES, Pipe

pytestmark = pytest.mark.netns

# Echoes each line prefixed with the client's address as the server sees it.
ECHO_SERVER = r"""
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(self.client_address[0].encode() + b" " + line)
socketserver.ThreadingTCPServer.daemon_threads = True
server = socketserver.ThreadingTCPServer((sys.argv[1], 0), Echo)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
"""

# Prints "ok <reply>", "timeout" or "error <errno>": one line, always exit 0.
CLIENT = r"""
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"hello over ppp0\n")
        print("ok", sock.makefile().readline().strip())
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error", exc.errno)
"""


def start_echo(net: PppNetwork) -> int:
    """An echo server on the server address; its port once it is listening."""
    _, out = net.spawn(net.server_ns, [sys.executable, "-c", ECHO_SERVER, SERVER_ADDR])
    return int(out.wait_for("listening", timeout=10).split()[1])


def connect(net: PppNetwork, ns: str, host: str, port: int, timeout: float = 5) -> str:
    result = net.run(ns, [sys.executable, "-c", CLIENT, host, str(port), str(timeout)],
                     timeout=timeout + 10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def ip_json(net: PppNetwork, ns: str, *args: str) -> list[dict]:
    result = net.run(ns, ["ip", "-j", *args])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_device_has_only_lo_and_a_point_to_point_ppp0(ppp_network: PppNetwork) -> None:
    links = {link["ifname"]: link for link in ip_json(ppp_network, ppp_network.device_ns, "link")}
    assert set(links) == {"lo", "ppp0"}
    assert "UP" in links["lo"]["flags"]
    assert {"POINTOPOINT", "NOARP", "UP"} <= set(links["ppp0"]["flags"])
    (ppp0,) = ip_json(ppp_network, ppp_network.device_ns, "addr", "show", "dev", "ppp0")
    assert [(a["family"], a["local"], a.get("address")) for a in ppp0["addr_info"]] == [
        ("inet", DEVICE_ADDR, "10.64.0.1")]


def test_device_routes_only_through_ppp0(ppp_network: PppNetwork) -> None:
    routes = ip_json(ppp_network, ppp_network.device_ns, "route")
    assert {r["dev"] for r in routes} == {"ppp0"}
    assert any(r["dst"] == "default" for r in routes)


def test_every_namespace_has_loopback_up(ppp_network: PppNetwork) -> None:
    for ns in (ppp_network.device_ns, ppp_network.carrier_ns, ppp_network.server_ns):
        (lo,) = ip_json(ppp_network, ns, "link", "show", "dev", "lo")
        assert "UP" in lo["flags"], ns


def test_device_reaches_server_by_name_and_relay_counts(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    before = ppp_network.stats()
    # The server sees the device's own address: the carrier routes, it does not NAT.
    assert connect(ppp_network, ppp_network.device_ns, SERVER_NAME, port) == (
        f"ok {DEVICE_ADDR} hello over ppp0")
    after = ppp_network.stats()
    for direction in ("uplink", "downlink"):
        assert after[direction]["bytes"] > before[direction]["bytes"], (before, after)


def test_cut_drops_everything_and_restore_brings_it_back(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    ppp_network.cut()
    assert ppp_network.stats()["cut"] is True
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port, timeout=1) == "timeout"
    assert ppp_network.stats()["uplink"]["dropped"] > 0
    ppp_network.restore()
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port).startswith("ok ")


def test_device_cannot_reach_root_namespace_loopback(ppp_network: PppNetwork) -> None:
    with socket.socket() as root_service:
        root_service.bind(("127.0.0.1", 0))
        root_service.listen()
        root_service.setblocking(False)
        port = root_service.getsockname()[1]
        refused = "error 111"  # ECONNREFUSED: the device's own lo has no listener
        assert connect(ppp_network, ppp_network.device_ns, "127.0.0.1", port) == refused
        assert connect(ppp_network, ppp_network.device_ns, "127.0.0.1", 5432) == refused
        with pytest.raises(BlockingIOError):
            root_service.accept()  # nothing arrived in the root namespace


def getent(net: PppNetwork, name: str) -> subprocess.CompletedProcess[str]:
    return net.run(net.device_ns, ["getent", "ahostsv4", name], timeout=30)


def test_the_server_name_is_answered_by_dns_over_ppp0(ppp_network: PppNetwork) -> None:
    """Not by a hosts file: the query crosses the link to the carrier's resolver."""
    hosts = (Path("/etc/netns") / ppp_network.device_ns / "hosts").read_text()
    assert SERVER_NAME not in hosts
    ppp_network.trace()
    resolved = getent(ppp_network, SERVER_NAME)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.split()[0] == SERVER_ADDR, resolved.stdout
    assert any(p["dir"] == "uplink" and p["proto"] == "udp" for p in ppp_network.traced())


def test_unknown_names_fail_at_once_and_a_cut_link_cuts_resolution(
        ppp_network: PppNetwork) -> None:
    unknown = getent(ppp_network, "example.com")
    assert unknown.returncode == 2, unknown  # "key not found": the zone said NXDOMAIN
    ppp_network.cut()
    cut = getent(ppp_network, SERVER_NAME)
    assert cut.returncode != 0 and SERVER_ADDR not in cut.stdout, cut
    assert ppp_network.stats()["uplink"]["dropped_by"].get("cut", 0) > 0
    ppp_network.restore()
    assert getent(ppp_network, SERVER_NAME).returncode == 0


def test_teardown_removes_everything() -> None:
    """Namespaces, relay, tun devices and /etc/netns files are all gone after close()."""
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    try:
        net = PppNetwork().__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    relay = net._relay
    net.close()
    assert relay is not None and relay.returncode is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in (net.device_ns, net.carrier_ns, net.server_ns):
        assert ns not in listed
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert not any(tun in root_links for tun in net._tun_names)
    assert not (Path("/etc/netns") / net.device_ns).exists()


# -- shaping: the link's schedule, on a made-up clock ----------------------------------
# Pipe decides every packet's fate from the ``now`` it is given, so its arithmetic is
# checked exactly here; the tests further down show each setting on real traffic.


@pytest.fixture
def sink() -> Iterator[int]:
    """A descriptor that swallows what a Pipe delivers (the read end is drained)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    yield write_end
    os.close(read_end)
    os.close(write_end)


def test_pipe_latency_with_jitter_stays_in_bounds_and_in_order(sink: int) -> None:
    def delays(spacing: float) -> list[float]:
        pipe = Pipe(-1, sink, seed=1)
        pipe.set_latency(100, 20)
        for i in range(1000):
            pipe.offer(b"x", now=i * spacing)
        releases = [release for release, _ in pipe.queue]
        assert releases == sorted(releases)  # jitter never reorders
        pipe.flush(now=1000.0)
        assert pipe.stats()["packets"] == 1000 and pipe.stats()["queued"] == 0
        return [release - i * spacing for i, release in enumerate(releases)]

    sparse = delays(spacing=0.05)  # farther apart than the jitter's span: all independent
    assert min(sparse) >= 0.080 and max(sparse) <= 0.120
    assert statistics.mean(sparse) == pytest.approx(0.100, abs=0.003)
    assert statistics.pstdev(sparse) == pytest.approx(0.040 / 12 ** 0.5, rel=0.1)  # uniform
    # Close together, a packet waits behind a slower one before it: later, never reordered.
    dense = delays(spacing=0.001)
    assert min(dense) >= 0.080 and max(dense) <= 0.120
    assert statistics.mean(dense) > statistics.mean(sparse) + 0.005


def test_pipe_loss_draws_the_share_asked_and_repeats_with_the_seed(sink: int) -> None:
    def dropped_pattern(seed: int) -> list[int]:
        pipe = Pipe(-1, sink, seed=seed)
        pipe.set_loss(30)
        pattern = []
        for _ in range(10000):
            before = pipe.dropped
            pipe.offer(b"x", now=0.0)
            pattern.append(pipe.dropped - before)
        assert pipe.dropped_by["loss"] == pipe.dropped
        return pattern

    first = dropped_pattern(seed=7)
    assert sum(first) / len(first) == pytest.approx(0.30, abs=0.02)
    assert dropped_pattern(seed=7) == first
    assert dropped_pattern(seed=8) != first


def test_pipe_rate_is_a_token_bucket_with_a_bounded_queue(sink: int) -> None:
    pipe = Pipe(-1, sink)
    pipe.set_rate(80, queue_bytes=5000, now=0.0)  # 10,000 bytes/s
    for _ in range(10):
        pipe.offer(b"x" * 1000, now=0.0)
    releases = [release for release, _ in pipe.queue]
    # A full bucket sends the first packet at once; then each waits for its own bytes.
    assert releases == pytest.approx([0.0] + [(1000 * n - TOKEN_BURST_BYTES) / 10000
                                              for n in range(2, 7)])
    assert pipe.dropped_by["queue"] == 4  # the 7th would have left 5,500 bytes waiting
    # Later the queue has drained and the bucket refilled, up to one burst only.
    pipe.offer(b"x" * 1000, now=10.0)
    pipe.offer(b"x" * 1000, now=10.0)
    assert [release for release, _ in pipe.queue][-2:] == pytest.approx(
        [10.0, 10.0 + (2000 - TOKEN_BURST_BYTES) / 10000])


def test_pipe_latency_adds_to_the_rate_limit_and_a_cut_empties_the_queue(sink: int) -> None:
    pipe = Pipe(-1, sink)
    pipe.set_rate(80, now=0.0)
    pipe.set_latency(50)
    pipe.offer(b"x" * 1500, now=0.0)
    pipe.offer(b"x" * 1000, now=0.0)
    assert [release for release, _ in pipe.queue] == pytest.approx([0.05, 0.15])
    pipe.set_cut(True)
    assert pipe.dropped_by["cut"] == 2 and not pipe.queue
    pipe.set_cut(False)
    pipe.offer(b"x" * 1000, now=0.2)  # the lost bytes no longer hold the cap
    assert pipe.queue[0][0] == pytest.approx(0.25)


# -- shaping: real traffic through the relay --------------------------------------------

# Connects, then times ``rounds`` one-line echo exchanges; prints the times as JSON.
TIMED_CLIENT = r"""
import json, socket, sys, time
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
with socket.create_connection((host, port), timeout=10) as sock:
    connect = time.perf_counter() - start
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    replies, echo = sock.makefile(), []
    for i in range(rounds):
        start = time.perf_counter()
        sock.sendall(b"round %d\n" % i)
        replies.readline()
        echo.append(time.perf_counter() - start)
print(json.dumps({"connect": connect, "echo": echo}))
"""

# "up N": reads N bytes, answers their sha256; "down N": sends N bytes.
TRANSFER_SERVER = r"""
import hashlib, socketserver, sys
class Transfer(socketserver.StreamRequestHandler):
    def handle(self):
        verb, size = self.rfile.readline().split()
        if verb == b"up":
            digest = hashlib.sha256(self.rfile.read(int(size))).hexdigest()
            self.wfile.write(digest.encode() + b"\n")
        else:
            self.wfile.write(bytes(range(256)) * (int(size) // 256))
socketserver.ThreadingTCPServer.daemon_threads = True
server = socketserver.ThreadingTCPServer((sys.argv[1], 0), Transfer)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
"""

# Moves SIZE bytes (a multiple of 256) up or down; prints {"ok", "elapsed"} as JSON.
TRANSFER_CLIENT = r"""
import hashlib, json, socket, sys, time
host, port, verb, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = bytes(range(256)) * (size // 256)
start = time.perf_counter()
with socket.create_connection((host, port), timeout=60) as sock:
    sock.sendall(f"{verb} {size}\n".encode())
    if verb == "up":
        sock.sendall(data)
        ok = sock.makefile().readline().strip() == hashlib.sha256(data).hexdigest()
    else:
        ok = sock.makefile("rb").read(size) == data
print(json.dumps({"ok": ok, "elapsed": time.perf_counter() - start}))
"""

# Sends one UDP datagram per payload size given; nothing listens, nothing needs to.
UDP_BURST = r"""
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for size in sys.argv[3:]:
        sock.sendto(b"u" * int(size), (sys.argv[1], int(sys.argv[2])))
"""


def device_python(net: PppNetwork, script: str, *args: object, timeout: float = 30) -> Any:
    """Run ``script`` on the device; its stdout, parsed as JSON when there is any."""
    result = net.run(net.device_ns, [sys.executable, "-c", script, *map(str, args)],
                     timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def round_trips(net: PppNetwork, port: int, rounds: int = 5) -> dict[str, Any]:
    return device_python(net, TIMED_CLIENT, SERVER_ADDR, port, rounds)  # type: ignore[no-any-return]


def transfer(net: PppNetwork, port: int, verb: str, size: int) -> float:
    """Seconds for ``size`` bytes up or down, connect included; fails if any byte is wrong."""
    outcome = device_python(net, TRANSFER_CLIENT, SERVER_ADDR, port, verb, size, timeout=90)
    assert outcome["ok"], outcome
    return float(outcome["elapsed"])


def start_transfer_server(net: PppNetwork) -> int:
    _, out = net.spawn(net.server_ns, [sys.executable, "-c", TRANSFER_SERVER, SERVER_ADDR])
    return int(out.wait_for("listening", timeout=10).split()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; the relay answers counters asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.02)  # poll interval of a deadline-bound poll, not synchronisation


def test_latency_adds_twice_the_one_way_delay_to_each_round_trip(
        ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    base = round_trips(ppp_network, port)
    base_rtt = min(base["echo"])
    assert base_rtt < 0.05, base

    ppp_network.shape(latency_ms=100)
    assert ppp_network.stats()["uplink"]["shape"]["latency_ms"] == 100
    shaped = round_trips(ppp_network, port)
    for rtt in (shaped["connect"], *shaped["echo"]):
        assert 0.200 <= rtt < 0.200 + base_rtt + 0.1, shaped

    ppp_network.unshape()
    ppp_network.shape(latency_ms=100, direction="uplink")  # one way only: one delay per trip
    assert ppp_network.stats()["downlink"]["shape"]["latency_ms"] == 0
    one_way = round_trips(ppp_network, port)
    for rtt in (one_way["connect"], *one_way["echo"]):
        assert 0.100 <= rtt < 0.100 + base_rtt + 0.1, one_way


def test_jitter_spreads_round_trips_within_its_bounds(ppp_network: PppNetwork) -> None:
    ppp_network.reseed(3)
    port = start_echo(ppp_network)
    ppp_network.shape(latency_ms=50, jitter_ms=40)
    rtts = round_trips(ppp_network, port, rounds=20)["echo"]
    # Two legs each within 10..90 ms (in-order delivery can only add to a leg).
    assert min(rtts) >= 0.020 and max(rtts) < 0.180 + 0.1, rtts
    assert max(rtts) - min(rtts) >= 0.040, rtts


def test_loss_drops_packets_and_tcp_still_delivers_every_byte(ppp_network: PppNetwork) -> None:
    """30 % loss on the way the data goes: retransmission still gets every byte across.

    One lossy direction at a time: with 30 % both ways half of all retransmission
    round trips fail too, and the doubling retransmission timer gives that a tail of
    tens of seconds, which is TCP's business, not this harness's.
    """
    ppp_network.reseed(11)
    port = start_transfer_server(ppp_network)
    for verb, lossy, clean in (("up", "uplink", "downlink"), ("down", "downlink", "uplink")):
        ppp_network.unshape()
        ppp_network.reset_stats()
        ppp_network.shape(loss=30, direction=lossy)
        transfer(ppp_network, port, verb, 16 * 1024)  # checks the bytes; fails if TCP gave up
        stats = ppp_network.stats()
        lost = stats[lossy]["dropped_by"]["loss"]
        # Nothing else dropped. The share lost is noise on a few dozen packets; the Pipe
        # test above checks it on 10,000.
        assert lost > 0 and stats[lossy]["dropped"] == lost, stats
        assert stats[clean]["dropped"] == 0, stats


def test_loss_draws_repeat_with_the_seed(ppp_network: PppNetwork) -> None:
    """Same seed, same datagrams: the same ones get through (told apart by their size)."""
    sizes = [100 + i for i in range(40)]

    def delivered_sizes() -> list[int]:
        ppp_network.reseed(5)
        ppp_network.reset_stats()
        device_python(ppp_network, UDP_BURST, SERVER_ADDR, 9, *sizes)
        uplink = lambda: ppp_network.stats()["uplink"]  # noqa: E731
        wait_until(lambda: uplink()["packets"] + uplink()["dropped"] == len(sizes))
        return [p["payload"] for p in ppp_network.traced() if p["dir"] == "uplink"]

    ppp_network.trace()
    ppp_network.shape(loss=50, direction="uplink")
    first = delivered_sizes()
    assert 0 < len(first) < len(sizes)
    assert delivered_sizes() == first


def test_rate_caps_throughput_in_the_direction_asked(ppp_network: PppNetwork) -> None:
    port = start_transfer_server(ppp_network)
    size, kbit = 64 * 1024, 512
    ppp_network.shape(rate_kbit=kbit, direction="uplink")
    elapsed = transfer(ppp_network, port, "up", size)
    floor = (size - TOKEN_BURST_BYTES) * 8 / (kbit * 1000)  # what the bucket lets through
    assert floor <= elapsed < 3 * floor + 1, elapsed
    assert ppp_network.stats()["uplink"]["bytes"] > size
    # The other direction is not capped: the same bytes come down far faster.
    assert transfer(ppp_network, port, "down", size) < floor / 2


def test_rate_queue_overflow_drops_the_excess(ppp_network: PppNetwork) -> None:
    ppp_network.shape(rate_kbit=256, queue_bytes=4500, direction="uplink")
    device_python(ppp_network, UDP_BURST, SERVER_ADDR, 9, *[1000] * 20)
    uplink = lambda: ppp_network.stats()["uplink"]  # noqa: E731
    wait_until(lambda: uplink()["queued"] == 0
               and uplink()["packets"] + uplink()["dropped"] == 20)
    stats = uplink()
    # One packet's worth in the bucket, 4,500 bytes of queue: 5 or 6 of 1,028 bytes pass.
    assert 4 <= stats["packets"] <= 7 and stats["dropped_by"]["queue"] == 20 - stats["packets"]


def test_reset_stats_zeroes_every_counter(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    ppp_network.shape(latency_ms=5)
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port).startswith("ok ")
    ppp_network.cut()
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port, timeout=0.5) == (
        "timeout")
    ppp_network.restore()
    stats = ppp_network.stats()
    assert stats["uplink"]["packets"] > 0 and stats["uplink"]["dropped"] > 0, stats

    ppp_network.reset_stats()
    for direction in ("uplink", "downlink"):
        counters = ppp_network.stats()[direction]
        assert (counters["packets"], counters["bytes"], counters["dropped"]) == (0, 0, 0)
        assert set(counters["dropped_by"].values()) == {0}
        assert counters["shape"]["latency_ms"] == 5  # settings are not counters
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port).startswith("ok ")
    assert 0 < ppp_network.stats()["uplink"]["packets"] < stats["uplink"]["packets"] + 20


def test_trace_shows_each_delivered_packet(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    ppp_network.trace()
    assert connect(ppp_network, ppp_network.device_ns, SERVER_ADDR, port).startswith("ok ")
    # The closing FIN/ACKs may still cross the link after connect() returns, and the
    # trace and the counters are two reads: wait until they describe the same packets.
    def trace_matches_counters() -> bool:
        stats = ppp_network.stats()
        delivered = stats["uplink"]["bytes"] + stats["downlink"]["bytes"]
        return sum(p["len"] for p in ppp_network.traced()) == delivered

    wait_until(trace_matches_counters)
    packets = ppp_network.traced()
    assert [(p["dir"], p["flags"]) for p in packets[:2]] == [
        ("uplink", "S"), ("downlink", "SA")]
    request = b"hello over ppp0\n"
    assert [p["payload"] for p in packets if p["dir"] == "uplink" and p["payload"]] == [
        len(request)]


def test_bad_shaping_commands_are_refused(ppp_network: PppNetwork) -> None:
    with pytest.raises(RuntimeError, match="loss"):
        ppp_network.shape(loss=101)
    with pytest.raises(RuntimeError, match="latency"):
        ppp_network._control("latency -5")
    with pytest.raises(ValueError, match="jitter_ms needs latency_ms"):
        ppp_network.shape(jitter_ms=3)
    assert ppp_network.stats()["uplink"]["shape"]["loss"] == 0
