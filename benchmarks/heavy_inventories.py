"""Heavy agent messages: server CPU for a burst of large inventories, and an operator's
latency meanwhile, before (a baseline commit) and after, in the same run.

The review's hostile agent sent 1.3 MB inventories with 20,000 addresses, each valid and
each within the message rate: 0.9 s of server CPU apiece, and other operators' calls
slowed to 820 ms. This replays that burst against two real servers on loopback (SQLite,
default settings), one after the other: the baseline commit's code (``git archive`` into
a temporary folder, run with ``PYTHONPATH``) and this working tree. For the working tree
it also sends a burst of inventories at every cap (64 interfaces of 32 addresses, all
different), the heaviest it still stores. Measured per burst: the server process's CPU
seconds (``/proc/PID/stat``) from the first frame until a protocol-1 ``ping`` sent after
the burst is answered, that wall time, and the latency of ``GET /api/v1/nodes`` called
ten times a second meanwhile (their own CPU is in the numbers, alike in every run).
The CPU of those calls (their idle cost times their number) is subtracted. Latency
ratios are against the same server idle, measured first; CPU ratios against
the baseline commit's burst.

    .venv/bin/python benchmarks/heavy_inventories.py [--base 9dc85f3] [--frames 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from websockets.sync.client import connect

import harness
from harness import Agent, Server, clean_env
from tether.protocol.messages import SERVER_MESSAGES, Hello, Ping, Pong, decode, encode
from tether.protocol.versions import AGENT_WS_PATH

REPO = Path(__file__).resolve().parent.parent


def inventory(name: str, interfaces: int, addresses: int) -> str:
    return json.dumps({
        "t": "inventory", "computer_name": name, "os_name": "o", "os_version": "1",
        "kernel": "k", "arch": "a", "agent_version": "1", "python_version": "3",
        "interfaces": [{"name": f"veth{i}", "flags": ["up", "running"], "addresses": [
            {"address": f"10.{i % 256}.{j // 256}.{j % 256}", "prefixlen": 24,
             "family": "inet"} for j in range(addresses)]} for i in range(interfaces)]})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call_ms(server: Server) -> float:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    start = time.perf_counter()
    conn.request("GET", "/api/v1/nodes", headers={"Authorization": f"Bearer {server.token}"})
    conn.getresponse().read()
    conn.close()
    return (time.perf_counter() - start) * 1000


def idle_cost(server: Server, n: int = 40) -> tuple[float, float]:
    """The median operator call on the idle server (ms), and its CPU cost (s)."""
    assert server.proc is not None
    cpu0 = cpu_seconds(server.proc.pid)
    median = statistics.median(call_ms(server) for _ in range(n))
    return median, (cpu_seconds(server.proc.pid) - cpu0) / n


def burst(server: Server, agent: Agent, frames: list[str]) -> dict[str, float]:
    ident = json.loads((agent.state_dir / "identity.json").read_text())
    assert server.proc is not None
    latencies: list[float] = []
    stop = threading.Event()

    def operator() -> None:  # ten calls a second, in every run alike
        while not stop.wait(0.1):
            latencies.append(call_ms(server))

    url = server.url.replace("http://", "ws://") + AGENT_WS_PATH
    with connect(url, compression=None, max_size=None, close_timeout=60,
                 ping_interval=None) as ws:
        ws.send(encode(Hello(1, ident["node_id"], ident["credential"], "benchmark")))
        ws.recv(timeout=30)
        cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        thread = threading.Thread(target=operator)
        thread.start()
        for frame in frames:
            ws.send(frame)
        ws.send(encode(Ping()))
        while not isinstance(decode(ws.recv(timeout=600), SERVER_MESSAGES), Pong):
            pass
        wall, cpu = time.monotonic() - t0, cpu_seconds(server.proc.pid) - cpu0
        stop.set()
        thread.join()
    return {"cpu": cpu, "wall": wall, "p50": statistics.median(latencies),
            "max": max(latencies), "calls": len(latencies),
            "bytes": sum(len(f) for f in frames)}


def start(data_dir: Path, pythonpath: str | None) -> Server:
    server = Server(data_dir, keepalive=(150.0, 30.0), relaxed=False)
    if pythonpath is None:
        return server.start()
    plain = harness.spawn
    harness.spawn = lambda argv, env=None, prefix=None: plain(
        argv, env=clean_env(PYTHONPATH=pythonpath), prefix=prefix)
    try:
        return server.start()
    finally:
        harness.spawn = plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="9dc85f3", help="the baseline commit")
    p.add_argument("--frames", type=int, default=10, help="inventories per burst")
    args = p.parse_args()
    review = [inventory(f"review-{i}", 100, 200) for i in range(args.frames)]  # 20,000 each
    capped = [inventory(f"capped-{i}", 64, 32) for i in range(args.frames)]
    rows: list[tuple[str, str, float, dict[str, float]]] = []  # label, burst, idle ms, r
    with tempfile.TemporaryDirectory(prefix="tether-heavy-") as tmp:
        base_src = Path(tmp) / "base"
        base_src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        for label, pythonpath, bursts in (
                (f"base {args.base}", str(base_src / "src"), [("review", review)]),
                ("this tree", None, [("review", review), ("capped", capped)])):
            server = start(Path(tmp) / label.replace(" ", "-") / "data", pythonpath)
            try:
                idle_call, call_cpu = idle_cost(server)
                for kind, frames in bursts:
                    agent = Agent(server, Path(tmp) / f"{label}-{kind}".replace(" ", "-"))
                    agent.register()
                    r = burst(server, agent, frames)
                    r["cpu"] -= r["calls"] * call_cpu  # the operator's own calls, measured idle
                    rows.append((label, kind, idle_call, r))
            finally:
                server.stop()
    base_cpu = rows[0][3]["cpu"]
    print(f"{args.frames} inventories per burst; review = 100 interfaces x 200 addresses "
          f"({len(review[0]) / 1e6:.2f} MB), capped = 64 x 32 ({len(capped[0]) / 1e3:.0f} kB)")
    print()
    print("| server | burst | MB sent | server CPU s (net of the operator's calls) "
          "| CPU x base | wall s | CPU s per s | operator p50 ms (x idle) "
          "| operator max ms (x idle) | idle ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, kind, idle, r in rows:
        print(f"| {label} | {kind} | {r['bytes'] / 1e6:.1f} | {r['cpu']:.2f} | "
              f"{r['cpu'] / base_cpu:.2f} | {r['wall']:.2f} | {r['cpu'] / r['wall']:.2f} | "
              f"{r['p50']:.0f} "
              f"({r['p50'] / idle:.1f}) | {r['max']:.0f} ({r['max'] / idle:.1f}) | {idle:.1f} |")


if __name__ == "__main__":
    main()
