"""Idle traffic of one device over the emulated PPP link, in bytes per device per day.

Cellular data costs money (DESIGN.md, principle 3), so this measures what an idle,
connected device really puts on its link, with the real product: ``tether server``
in the server namespace of ``tests/netns/pppnet.PppNetwork``, ``tether.agent`` in
the device namespace whose only link is ``ppp0``. Once the node is Online with its
inventory and the link has gone quiet, the link's counters are reset and the
device stays idle for a measured window; then the link's counters give the IP
packet bytes and packets both ways, which is what the carrier bills.

The default keepalive interval is long, so the main run uses a short one (5 s) and
derives the bytes of one keepalive cycle (one probe and whatever it causes), then
extrapolates to a day at other intervals. A packet trace of the same window shows
each cycle's packets and checks that nothing else crossed the link while idle
(the agent re-checks its inventory every 30 s but sends only a change). ``--full``
also measures directly at a 60 s interval over 180 s. The reference is the floor: one
kernel TCP keepalive exchange (probe and ACK) measured on a fresh copy of the same link
in the same run (``keepalive_floor.measure_floor``).

Run as root (ip netns, /dev/net/tun); about 2 min, or about 5 min with ``--full``.
The profiles in docs/benchmarks.md are each measured directly over at least 10 minutes::

    .venv/bin/python benchmarks/idle_traffic.py --interval 150 --timeout 30 --window 600
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))
from pppnet import (
    NetnsUnavailable,
    OutputWatcher,
    PppNetwork,
    clean_env,
    unavailable_reason,
)

from keepalive_floor import measure_floor
from tether.agent.link import INVENTORY_CHECK_INTERVAL
from tether.server.config import (
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    Settings,
)

PORT = 8400
NODE_ID = re.compile(r"mi-[0-9a-f]{17}")
DAY = 86400.0
QUIET = 1.0  # seconds without a packet that count as "the link has gone quiet"
ACK_GRACE = 1.0  # a cycle this close to the window's end may still miss its delayed ACK
EXTRAPOLATE = (30.0, 60.0, 120.0, 300.0)

Packet = dict[str, Any]


@dataclass
class Measurement:
    interval: float
    timeout: float
    window: float
    up_bytes: int
    down_bytes: int
    up_packets: int
    down_packets: int
    packets: list[Packet]  # the window's trace, oldest first
    start: float  # the window's start on the relay's clock
    cycles: list[list[Packet]] = field(default_factory=list)
    lead: list[Packet] = field(default_factory=list)  # before the first probe
    others: list[Packet] = field(default_factory=list)  # data that is not a probe or its answer

    @property
    def total_bytes(self) -> int:
        return self.up_bytes + self.down_bytes

    @property
    def total_packets(self) -> int:
        return self.up_packets + self.down_packets


def is_data(packet: Packet) -> bool:
    return packet.get("proto") == "tcp" and packet.get("payload", 0) > 0


def analyse(m: Measurement) -> None:
    """Split the trace into keepalive cycles: each starts with an uplink data packet."""
    probe_sizes = Counter(p["len"] for p in m.packets if p["dir"] == "uplink" and is_data(p))
    answer_sizes = Counter(p["len"] for p in m.packets if p["dir"] == "downlink" and is_data(p))
    probe = probe_sizes.most_common(1)[0][0] if probe_sizes else None
    answer = answer_sizes.most_common(1)[0][0] if answer_sizes else None
    cycles: list[list[Packet]] = []
    for p in m.packets:
        if p["dir"] == "uplink" and is_data(p) and p["len"] == probe:
            cycles.append([p])
        elif cycles:
            cycles[-1].append(p)
        else:
            m.lead.append(p)
    end = m.start + m.window
    m.cycles = [c for c in cycles if c[0]["t"] + ACK_GRACE <= end]
    m.others = [p for p in m.packets if is_data(p) and not (
        (p["dir"] == "uplink" and p["len"] == probe)
        or (p["dir"] == "downlink" and p["len"] == answer))]


def signature(cycle: list[Packet]) -> tuple[tuple[str, int, str], ...]:
    return tuple((p["dir"], p["len"], p.get("flags", "")) for p in cycle)


class Product:
    """Server, CLI and agent of one measurement on one network."""

    def __init__(self, net: PppNetwork, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.url = f"http://{net.server_addr}:{PORT}"
        self.logs: dict[str, OutputWatcher] = {}
        self.token = ""

    def fail(self, why: str) -> SystemExit:
        logs = "".join(f"\n--- {name} ---\n{w.text()}" for name, w in self.logs.items())
        return SystemExit(f"{why}{logs}")

    def start_server(self, interval: float, timeout: float) -> None:
        data = self.tmp / "server"
        _, self.logs["server"] = self.net.spawn(self.net.server_ns, [
            sys.executable, "-m", "tether", "server", "--data-dir", str(data),
            "--host", self.net.server_addr, "--port", str(PORT),
            "--keepalive-interval", f"{interval:g}", "--keepalive-timeout", f"{timeout:g}",
            "--insecure"],
            env=clean_env())
        try:
            self.logs["server"].wait_for(f"listening on {self.url}", timeout=30)
        except TimeoutError as exc:
            raise self.fail(f"server did not start: {exc}") from None
        self.token = (data / "admin-token").read_text().strip()

    def cli(self, *args: str) -> Any:
        result = self.net.run(self.net.server_ns, [sys.executable, "-m", "tether.cli", *args],
                              env=clean_env(TETHER_SERVER=self.url, TETHER_TOKEN=self.token))
        if result.returncode != 0:
            raise self.fail(f"tether.cli {args}: {result.stdout}{result.stderr}")
        return json.loads(result.stdout)

    def start_agent(self, by_address: bool = False) -> str:
        """Register and run the agent; it dials the server by name (DNS over the link)
        or, with ``by_address``, by address."""
        activation = self.cli("activation", "create", "--json")
        host = self.net.server_addr if by_address else self.net.server_name
        state = str(self.tmp / "agent")
        agent = [sys.executable, "-m", "tether.agent"]
        result = self.net.run(self.net.device_ns, [
            *agent, "register", "--server", f"http://{host}:{PORT}",
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"], "--state-dir", state,
            "--insecure"],
            env=clean_env())
        found = NODE_ID.search(result.stdout)
        if result.returncode != 0 or not found:
            raise self.fail(f"register: {result.stdout}{result.stderr}")
        node_id = found.group(0)
        _, self.logs["agent"] = self.net.spawn(
            self.net.device_ns, [*agent, "run", "--state-dir", state], env=clean_env())
        return node_id

    def wait_online(self, node_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            node = self.cli("nodes", "show", node_id, "--json")
            if node["ping_status"] == "Online" and node["inventory"]:
                return
            if time.monotonic() > deadline:
                raise self.fail(f"node never Online with inventory: {node}")
            time.sleep(0.2)  # poll interval of a deadline-bound poll

    def ping_status(self, node_id: str) -> str:
        return str(self.cli("nodes", "show", node_id, "--json")["ping_status"])


def wait_quiet(net: PppNetwork, timeout: float = 60) -> None:
    """Until no packet has crossed the link for ``QUIET`` s: the start-up traffic is over."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        stats = net.stats()
        count = stats["uplink"]["packets"] + stats["downlink"]["packets"]
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= QUIET:
            return
        time.sleep(0.05)  # poll interval
    raise SystemExit(f"the link never went quiet for {QUIET} s")


def measure(interval: float, timeout: float, window: float, latency_ms: float,
            jitter_ms: float) -> Measurement:
    print(f"measuring: keepalive interval {interval:g} s, timeout {timeout:g} s, "
          f"window {window:g} s ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tether-idle-") as tmp, \
            PppNetwork(seed=1) as net:
        if latency_ms:
            net.shape(latency_ms=latency_ms, jitter_ms=jitter_ms)
        product = Product(net, Path(tmp))
        product.start_server(interval, timeout)
        node_id = product.start_agent()
        product.wait_online(node_id)
        net.trace(max_packets=100000)
        wait_quiet(net)
        net.reset_stats()  # the counters and the trace start here
        start_wall = time.monotonic()
        time.sleep(window)  # the measured idle window
        stats = net.stats()
        elapsed = time.monotonic() - start_wall
        packets = net.traced()
        status = product.ping_status(node_id)
        if status != "Online":
            raise product.fail(f"node went {status} during the idle window")
    # The relay stamps packets with the same monotonic clock, so the window lines up.
    m = Measurement(interval, timeout, elapsed, stats["uplink"]["bytes"],
                    stats["downlink"]["bytes"], stats["uplink"]["packets"],
                    stats["downlink"]["packets"], packets, start_wall)
    traced = sum(p["len"] for p in packets)
    if traced != m.total_bytes:
        raise SystemExit(f"trace ({traced} B) and counters ({m.total_bytes} B) disagree")
    analyse(m)
    return m


def describe(p: Packet) -> str:
    if p["dir"] == "uplink" and is_data(p):
        return "agent keepalive probe (WebSocket frame)"
    if p["dir"] == "downlink" and is_data(p):
        return "server's answer (WebSocket frame)"
    if p.get("flags") == "A":
        return "bare TCP ACK of the " + ("answer" if p["dir"] == "uplink" else "probe")
    return p.get("proto", "?")


def report(ms: list[Measurement], floor: float, latency_ms: float, jitter_ms: float,
           command: str) -> None:
    main = ms[0]
    if not main.cycles:
        raise SystemExit("no complete keepalive cycle in the window; make it longer")
    per_cycle = statistics.mean(sum(p["len"] for p in c) for c in main.cycles)
    packets_per_cycle = statistics.mean(len(c) for c in main.cycles)
    modal, seen = Counter(signature(c) for c in main.cycles).most_common(1)[0]
    link = f"{latency_ms:g} ms one way" + (f" ± {jitter_ms:g} ms" if jitter_ms else "")
    print("## Idle traffic over the emulated PPP link\n")
    print(f"Command: `{command}`  ")
    print(f"Link: tunlink between device and carrier, {link}; counted bytes are whole IP "
          f"packets (what the carrier bills).  ")
    print(f"Product defaults: keepalive interval {DEFAULT_KEEPALIVE_INTERVAL:g} s, "
          f"timeout {DEFAULT_KEEPALIVE_TIMEOUT:g} s.\n")

    print("### Measured idle windows\n")
    print("| keepalive interval | window | probes | period | packets up / down | "
          "bytes up / down | bytes per cycle | packets per cycle | other data packets | "
          "bytes/day (direct) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in ms:
        probes = [c[0]["t"] for c in m.cycles]
        period = (f"{statistics.mean(b - a for a, b in zip(probes, probes[1:])):.2f} s"
                  if len(probes) > 1 else "—")
        cycle_bytes = (f"{statistics.mean(sum(p['len'] for p in c) for c in m.cycles):.1f}"
                       if m.cycles else "—")
        cycle_packets = (f"{statistics.mean(len(c) for c in m.cycles):.2f}"
                         if m.cycles else "—")
        print(f"| {m.interval:g} s | {m.window:.1f} s | {len(m.cycles)} | {period} | "
              f"{m.up_packets} / {m.down_packets} | {m.up_bytes} / {m.down_bytes} | "
              f"{cycle_bytes} | {cycle_packets} | {len(m.others)} | "
              f"{m.total_bytes * DAY / m.window:,.0f} |")
    print("\n'bytes/day (direct)' scales the window's counters to a day, partial cycles at "
          "the window's edges included; 'probes' counts complete cycles only.\n")

    print(f"### One keepalive cycle ({seen} of {len(main.cycles)} cycles at "
          f"{main.interval:g} s look exactly like this)\n")
    print("| # | direction | IP bytes | TCP flags | TCP payload | what |")
    print("|---|---|---|---|---|---|")
    example = next(c for c in main.cycles if signature(c) == modal)
    for i, p in enumerate(example, 1):
        print(f"| {i} | {p['dir']} | {p['len']} | {p.get('flags', '')} | "
              f"{p.get('payload', '')} | {describe(p)} |")
    print(f"| | **total** | **{sum(p['len'] for p in example)}** | | | |")
    odd = [c for c in main.cycles if signature(c) != modal]
    for c in odd:
        print(f"\nA different cycle at +{c[0]['t'] - main.start:.1f} s: "
              + ", ".join(f"{p['dir']} {p['len']} B {p.get('flags', '')}" for p in c))
    if main.lead:
        print(f"\nBefore the first probe: {len(main.lead)} packets, "
              f"{sum(p['len'] for p in main.lead)} B.")
    answered = any(p["dir"] == "downlink" and is_data(p) for c in main.cycles for p in c)
    print(f"\nThe server {'answers' if answered else 'does not answer'} a probe with a frame "
          f"of its own; {'a pong' if answered else 'its TCP ACK is the only answer'}.")
    print(f"Idle check: {len(main.others)} data packets other than probes and their answers "
          f"in {main.window:.0f} s, which spans at least "
          f"{int(main.window // INVENTORY_CHECK_INTERVAL)} of the agent's inventory checks "
          f"(every {INVENTORY_CHECK_INTERVAL:g} s; a check sends only a change).")
    print(f"Mean per cycle: {per_cycle:.1f} bytes in {packets_per_cycle:.2f} packets; "
          f"against the floor, one kernel TCP keepalive exchange measured on the same "
          f"link in this run ({floor:.1f} B): **{per_cycle / floor:.2f}x**.\n")
    sweep = Settings.sweep_interval
    bound = main.interval + main.timeout + sweep
    direct = main.total_bytes * DAY / main.window
    print("### Summary\n")
    print("| keepalive interval / timeout | window | bytes per cycle | vs floor | "
          "bytes/day (direct) | MB per 30 days | offline detection bound |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {main.interval:g} s / {main.timeout:g} s | {main.window:.0f} s, "
          f"{len(main.cycles)} cycles | {per_cycle:.1f} | {per_cycle / floor:.2f}x | "
          f"{direct:,.0f} | {direct * 30 / 1e6:.2f} | {bound:g} s |")
    print(f"\nThe bound is interval + timeout + the server's sweep ({sweep:g} s).\n")

    print(f"### Extrapolated per device per day ({per_cycle:.1f} B per cycle, "
          f"measured at {main.interval:g} s)\n")
    print("| keepalive interval | cycles/day | bytes/day | KiB/day | MiB per 30 days | "
          "kernel TCP keepalive at the same interval |")
    print("|---|---|---|---|---|---|")
    for interval in sorted({*EXTRAPOLATE, DEFAULT_KEEPALIVE_INTERVAL, main.interval}):
        cycles = DAY / interval
        note = " (product default)" if interval == DEFAULT_KEEPALIVE_INTERVAL else ""
        print(f"| {interval:g} s{note} | {cycles:,.0f} | {per_cycle * cycles:,.0f} | "
              f"{per_cycle * cycles / 1024:,.1f} | {per_cycle * cycles * 30 / 2**20:.2f} | "
              f"{floor * cycles:,.0f} B/day |")
    print("\nExtrapolation assumes the idle link carries only keepalive cycles, as the trace "
          "shows, and one cycle per interval (the cycle's own round trip is ignored).")
    for m in ms[1:]:
        if m.cycles:
            direct = m.total_bytes * DAY / m.window
            predicted = per_cycle * DAY / m.interval
            print(f"Check at {m.interval:g} s: measured directly {direct:,.0f} B/day over "
                  f"{m.window:.0f} s ({len(m.cycles)} cycles of "
                  f"{statistics.mean(sum(p['len'] for p in c) for c in m.cycles):.1f} B); "
                  f"extrapolated {predicted:,.0f} B/day.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0,
                        help="keepalive interval of the main measurement (default 5 s)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="keepalive timeout of the main measurement (default 5 s)")
    parser.add_argument("--window", type=float, default=60.0,
                        help="idle window of the main measurement (default 60 s)")
    parser.add_argument("--full", action="store_true",
                        help="also measure at --full-interval over --full-window")
    parser.add_argument("--full-interval", type=float, default=60.0)
    parser.add_argument("--full-timeout", type=float, default=20.0)
    parser.add_argument("--full-window", type=float, default=180.0)
    parser.add_argument("--latency-ms", type=float, default=25.0,
                        help="one-way link latency, LTE-like (default 25 ms)")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--floor-window", type=float, default=20.0,
                        help="idle window of the floor's own measurement (default 20 s)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"idle_traffic: {reason}")
    runs = [(args.interval, args.timeout, args.window)]
    if args.full:
        runs.append((args.full_interval, args.full_timeout, args.full_window))
    try:
        floor = measure_floor(args.floor_window)
        ms = [measure(i, t, w, args.latency_ms, args.jitter_ms) for i, t, w in runs]
    except NetnsUnavailable as exc:
        raise SystemExit(f"idle_traffic: cannot build the network here: {exc}") from None
    command = " ".join([sys.executable, *sys.argv])
    report(ms, floor, args.latency_ms, args.jitter_ms, command)


if __name__ == "__main__":
    main()
