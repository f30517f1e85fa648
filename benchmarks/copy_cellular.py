"""``tether cp`` throughput over the emulated cellular link, against plain TCP on the same link.

What: a ``--mib`` MiB (default 20) file of random bytes is copied, in one run and
across the same link:

- with ``tether cp LOCAL NODE:/PATH`` (upload: operator -> device) and
  ``tether cp NODE:/PATH LOCAL`` (download: device -> operator), the real CLI,
  server and agent, the CLI and server in the server namespace, the agent in
  the device namespace (``tests/netns``: ``pppnet.PppNetwork`` and the
  ``Copy`` helper of ``test_copy_resume``);
- as the baseline, the same bytes over one plain TCP connection each way: a
  Python socket sender in one namespace and a receiver (writing to a file) in
  the other, started from this file (``_send``/``_receive``). The sender's
  clock runs from ``connect`` until the receiver acknowledges the last byte.

The link is ``tunlink.py``'s userspace point-to-point relay (not tc/netem): its
latency is one-way and per direction, so ``--latency-ms 100`` (the default) is
100 ms each way, a 200 ms round trip. Two link profiles: ``unshaped`` (only the
latency; the default) and ``cellular`` (also a rate cap of 20 Mbit/s towards the
device and 5 Mbit/s from it, with the relay's default 64 KiB queue; 1 kbit =
1000 bit/s, counted in whole IP packets). Uploads go towards the device (the
20 Mbit/s direction), downloads from it (5 Mbit/s).

Why: a copy channel has a credit window (``tether.protocol.channels.window_for``:
2 MiB; the first measurement here ran with 256 KiB), so at most that much can
be unacknowledged, and one channel cannot beat window / RTT (10 MiB/s at
200 ms; it was 1.25 MiB/s with 256 KiB), however fast the link is. Plain
TCP's window grows to the path's bandwidth-delay product. The table compares
both and shows the window cap and the rate cap beside them, so one can see
which of the two limits the copy.

MiB/s is file bytes over time. For ``tether cp`` the time is the one the CLI
prints (``copied, checksum verified (N s)``, 0.1 s resolution: from the stream's
open to the device's ``closed``; the upload's SHA-256 of the source is before
it, the download's check of the result after it); the CLI's whole wall time is
printed too. Every copy is checked byte-exact by SHA-256.

Run as root (it creates network namespaces and tun devices; all traffic stays
inside them)::

    .venv/bin/python benchmarks/copy_cellular.py [--mib 20] [--latency-ms 100]
        [--profiles unshaped[,cellular]]

The default (``unshaped``) takes about a minute; adding ``cellular`` about
2.5 minutes more, most of it the 5 Mbit/s downloads (20 MiB take >= 35 s there).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))
from pppnet import NetnsUnavailable, PppNetwork, clean_env, unavailable_reason
from test_copy_resume import VERIFIED, Copy

from tether.protocol.channels import window_for

WINDOW = window_for("file_write")  # a copy channel's credit window

MIB = 1024 * 1024
PLAIN_PORT = 9100  # the namespaces are fresh, so any port is free there
RESUMING = "resuming in "
CLI_SECONDS = re.compile(r"copied, checksum verified \(([0-9.]+) s\)")
SENT = re.compile(r"sent (\d+) bytes in ([0-9.]+) s, connect ([0-9.]+) s")
COPY_TIMEOUT = 180.0
# TCP payload per IP byte of a full-size packet: MSS 1448 (with timestamps) of 1500.
TCP_PAYLOAD_SHARE = 1448 / 1500
# name -> (rate towards the device, rate from the device), kbit/s; 0 is no cap.
PROFILES: dict[str, tuple[float, float]] = {"unshaped": (0, 0), "cellular": (20_000, 5_000)}


# -- the plain TCP baseline, run as this file in a namespace --------------------------------


def _receive(addr: str, port: int, path: str) -> None:
    """Accept one connection, write what arrives to ``path`` until EOF, then ack one byte."""
    with socket.create_server((addr, port)) as listener:
        print("ready", flush=True)
        conn, _ = listener.accept()
        with conn, open(path, "wb") as f:
            got = 0
            while data := conn.recv(MIB):
                f.write(data)
                got += len(data)
            f.flush()
            conn.sendall(b"k")
    print(f"received {got} bytes", flush=True)


def _send(addr: str, port: int, path: str) -> None:
    """Send ``path`` on one connection; time from connect to the receiver's ack."""
    sent = 0
    started = time.perf_counter()
    with socket.create_connection((addr, port), timeout=COPY_TIMEOUT) as s, \
            open(path, "rb") as f:
        connected = time.perf_counter()
        while block := f.read(MIB):
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"k":
            raise RuntimeError("the receiver did not acknowledge")
    ended = time.perf_counter()
    print(f"sent {sent} bytes in {ended - started:.6f} s, connect {connected - started:.6f} s",
          flush=True)


# -- measurements -------------------------------------------------------------------------


@dataclass
class Measurement:
    profile: str
    direction: str  # "upload" (to the device) or "download" (from it)
    method: str  # "plain TCP" or "tether cp"
    seconds: float
    wall: float  # plain: same as seconds; tether: the CLI process from start to exit
    wire_bytes: int  # IP bytes the link delivered both ways during the measurement
    drops: int  # packets the link dropped (queue full under a rate cap)
    note: str = ""

    def mib_s(self, size: int) -> float:
        return size / MIB / self.seconds


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def link_totals(net: PppNetwork) -> tuple[int, int]:
    stats = net.stats()
    return (stats["uplink"]["bytes"] + stats["downlink"]["bytes"],
            stats["uplink"]["dropped"] + stats["downlink"]["dropped"])


def plain_copy(field: Copy, profile: str, direction: str, source: Path, digest: str,
               tmp: Path) -> Measurement:
    net = field.net
    if direction == "upload":
        send_ns, recv_ns, recv_addr = net.server_ns, net.device_ns, net.device_addr
    else:
        send_ns, recv_ns, recv_addr = net.device_ns, net.server_ns, net.server_addr
    received = tmp / f"plain-{profile}-{direction}.bin"
    me = [sys.executable, str(Path(__file__).resolve())]
    name = f"plain receiver {profile} {direction}"
    proc, field.watchers[name] = net.spawn(
        recv_ns, [*me, "_receive", recv_addr, str(PLAIN_PORT), str(received)], env=clean_env())
    field.procs.append(proc)
    field.watchers[name].wait_for("ready", timeout=30)
    net.reset_stats()
    result = net.run(send_ns, [*me, "_send", recv_addr, str(PLAIN_PORT), str(source)],
                     timeout=COPY_TIMEOUT, env=clean_env())
    wire, drops = link_totals(net)
    found = SENT.search(result.stdout)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"plain sender: exit {result.returncode}\n{result.stdout}"
                           f"{result.stderr}{field.logs()}")
    proc.wait(timeout=30)
    if int(found.group(1)) != source.stat().st_size or sha256_of(received) != digest:
        raise RuntimeError(f"plain {direction}: the received file differs from the source")
    received.unlink()
    seconds = float(found.group(2))
    return Measurement(profile, direction, "plain TCP", seconds, seconds, wire, drops,
                       f"TCP connect {float(found.group(3)) * 1e3:.0f} ms")


def tether_copy(field: Copy, profile: str, direction: str, source: Path, digest: str,
                tmp: Path) -> Measurement:
    field.wait_online()
    name = f"tether cp {profile} {direction}"
    if direction == "upload":
        result_path = field.device_tmp / f"up-{profile}.bin"
        src, dst = str(source), f"{field.node_id}:{result_path}"
    else:
        result_path = tmp / f"down-{profile}.bin"
        src, dst = f"{field.node_id}:{field.device_tmp / 'remote.bin'}", str(result_path)
    field.net.reset_stats()
    started = time.monotonic()
    proc, watcher = field.cp(name, src, dst)
    proc.wait(timeout=COPY_TIMEOUT)
    wall = time.monotonic() - started
    wire, drops = link_totals(field.net)
    watcher.join(timeout=5)
    done = [m for m in map(CLI_SECONDS.search, watcher.lines) if m]
    if proc.returncode != 0 or not done or not any(VERIFIED in ln for ln in watcher.lines):
        raise RuntimeError(f"{name}: exit {proc.returncode}{field.logs()}")
    if sha256_of(result_path) != digest:
        raise RuntimeError(f"{name}: the copied file differs from the source")
    result_path.unlink()
    resumed = sum(RESUMING in line for line in watcher.lines)
    return Measurement(profile, direction, "tether cp", float(done[-1].group(1)), wall, wire,
                       drops, f"RESUMED {resumed}x after link drops" if resumed else "")


def shape(net: PppNetwork, profile: str, latency_ms: float) -> None:
    down_kbit, up_kbit = PROFILES[profile]
    net.unshape()
    net.shape(latency_ms=latency_ms)
    if down_kbit:
        net.shape(rate_kbit=down_kbit, direction="downlink")
    if up_kbit:
        net.shape(rate_kbit=up_kbit, direction="uplink")


def rate_cap(profile: str, direction: str) -> float | None:
    """The TCP payload the link's rate cap allows in ``direction``, MiB/s; None: no cap."""
    down_kbit, up_kbit = PROFILES[profile]
    kbit = down_kbit if direction == "upload" else up_kbit
    return kbit * 1000 / 8 * TCP_PAYLOAD_SHARE / MIB if kbit else None


def describe(profile: str, latency_ms: float) -> str:
    down_kbit, up_kbit = PROFILES[profile]
    rate = (f"{down_kbit / 1000:g} Mbit/s down / {up_kbit / 1000:g} up, 64 KiB queue"
            if down_kbit or up_kbit else "no rate cap")
    return f"{profile}: {latency_ms:g} ms one-way ({2 * latency_ms:g} ms RTT), {rate}"


def report(m: Measurement, size: int, window_cap: float) -> None:
    cap = rate_cap(m.profile, m.direction)
    caps = f"window cap {window_cap:.2f} MiB/s" + (
        f", rate cap {cap:.2f} MiB/s" if cap is not None else "")
    extra = f", wall {m.wall:.2f} s" if m.method == "tether cp" else ""
    note = f", {m.note}" if m.note else ""
    print(f"{m.profile:8} {m.direction:8} {m.method:9}: {size / MIB:g} MiB in {m.seconds:6.2f} s"
          f" = {m.mib_s(size):5.2f} MiB/s{extra}; link carried {m.wire_bytes / MIB:.1f} MiB,"
          f" dropped {m.drops} packets; {caps}{note}", flush=True)


def table(results: list[Measurement], size: int, window_cap: float) -> None:
    print("\n| link | direction | plain TCP MiB/s | tether cp MiB/s | tether/plain "
          "| rate cap MiB/s | window cap MiB/s | tether/window cap | dropped (plain, tether) "
          "| tighter bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    pairs: dict[tuple[str, str], dict[str, Measurement]] = {}
    for m in results:
        pairs.setdefault((m.profile, m.direction), {})[m.method] = m
    for (profile, direction), by in pairs.items():
        plain, tether = by["plain TCP"], by["tether cp"]
        p_rate, t_rate = plain.mib_s(size), tether.mib_s(size)
        cap = rate_cap(profile, direction)
        bound = ("link rate (BDP < the window)" if cap is not None and cap < window_cap
                 else "credit window (BDP > the window)")
        print(f"| {profile} | {direction} | {p_rate:.2f} | {t_rate:.2f} | {t_rate / p_rate:.2f} "
              f"| {'-' if cap is None else f'{cap:.2f}'} | {window_cap:.2f} "
              f"| {t_rate / window_cap:.2f} | {plain.drops}, {tether.drops} | {bound} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=20, help="file size in MiB (default 20)")
    ap.add_argument("--latency-ms", type=float, default=100.0,
                    help="one-way latency each direction (default 100: 200 ms RTT)")
    ap.add_argument("--profiles", default="unshaped",
                    help=f"comma-separated, of {', '.join(PROFILES)} (default unshaped)")
    args = ap.parse_args()
    profiles = [p for p in args.profiles.split(",") if p]
    if unknown := [p for p in profiles if p not in PROFILES]:
        ap.error(f"unknown profiles {unknown}; known: {', '.join(PROFILES)}")
    if (reason := unavailable_reason()) is not None:
        print(f"copy_cellular: {reason}", file=sys.stderr)
        return 2
    size = args.mib * MIB
    rtt = 2 * args.latency_ms / 1000
    window_cap = WINDOW / MIB / rtt
    began = time.monotonic()
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            net = PppNetwork(seed=1).__enter__()
        except NetnsUnavailable as exc:
            print(f"copy_cellular: cannot build the network: {exc}", file=sys.stderr)
            return 2
        field = Copy(net, tmp)
        try:
            source = tmp / "source.bin"
            with open(source, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MIB))
            digest = sha256_of(source)
            (field.device_tmp / "remote.bin").write_bytes(source.read_bytes())
            field.start_server()
            field.start_agent()
            field.wait_online()
            cc = field.in_ns(net.device_ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control")
            rmem = field.in_ns(net.device_ns, "sysctl", "-n", "net.ipv4.tcp_rmem")
            print(f"file {args.mib} MiB random; tether channel window "
                  f"{WINDOW // 1024} KiB -> cap {WINDOW / 1024:.0f} KiB / "
                  f"{rtt * 1e3:.0f} ms RTT = {window_cap:.2f} MiB/s per channel; "
                  f"namespaces' TCP: {cc.strip()}, tcp_rmem {' '.join(rmem.split())}",
                  flush=True)
            for profile in profiles:
                shape(net, profile, args.latency_ms)
                print(f"-- {describe(profile, args.latency_ms)}", flush=True)
                for direction in ("upload", "download"):
                    for measure in (plain_copy, tether_copy):
                        m = measure(field, profile, direction, source, digest, tmp)
                        results.append(m)
                        report(m, size, window_cap)
        finally:
            field.stop()
            net.close()
    table(results, size, window_cap)
    print(f"\n{args.mib} MiB each; latency {args.latency_ms:g} ms one-way per direction "
          f"({rtt * 1e3:.0f} ms RTT) by tests/netns/tunlink.py; tether time is the CLI's "
          f"(0.1 s resolution); total run {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] in ("_receive", "_send"):
        role = _receive if sys.argv[1] == "_receive" else _send
        role(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main())
