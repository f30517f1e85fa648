"""Port-forward throughput and added latency, as ratios to a direct connection.

Everything on loopback, in the same run: a TCP service (a sink that answers
each request with N bytes, and an echo for round trips) beside a real agent,
a real server, and a real ``tether forward`` process. Measured both directly
and through the forward:

- throughput: one connection downloads ``--mib`` MiB;
- latency: ``--pings`` sequential 64-byte request/response round trips on one
  connection (median and p99).

Run: ``.venv/bin/python benchmarks/forward.py [--mib 200] [--pings 500]``
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import PYTHON, Agent, Server, spawn, stop

BLOCK = b"x" * (1024 * 1024)


def serve(kind: str) -> int:
    """A service on 127.0.0.1: 'bulk' sends the MiB count it is told; 'echo' echoes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn:
            if kind == "bulk":
                mib = int(conn.recv(64).decode().strip())
                for _ in range(mib):
                    conn.sendall(BLOCK)
            else:
                while data := conn.recv(65536):
                    conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1])


def download(port: int, mib: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        s.sendall(f"{mib}\n".encode())
        left = mib * len(BLOCK)
        while left:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"short download: {left} bytes missing")
            left -= len(chunk)
        return time.perf_counter() - started


def pings(port: int, count: int) -> list[float]:
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.perf_counter()
            s.sendall(b"p" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            times.append(time.perf_counter() - started)
    return times


def forward(server: Server, node: str, target: int) -> tuple[int, object]:
    proc, out = spawn([PYTHON, "-m", "tether.cli", "forward", node, f"0:127.0.0.1:{target}"],
                      env=server.env())
    port = int(out.wait_for(r"forwarding 127\.0\.0\.1:(\d+)", timeout=30).group(1))
    return port, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--pings", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "server").start()
        agent = Agent(server, Path(tmp) / "agent").register().start().connected()
        procs = []
        try:
            bulk, echo = serve("bulk"), serve("echo")
            fwd_bulk, p1 = forward(server, agent.node_id, bulk)
            fwd_echo, p2 = forward(server, agent.node_id, echo)
            procs = [p1, p2]
            download(fwd_bulk, 4)  # warm up both paths
            download(bulk, 4)
            direct_s = download(bulk, args.mib)
            forwarded_s = download(fwd_bulk, args.mib)
            direct_rtt = pings(echo, args.pings)
            forwarded_rtt = pings(fwd_echo, args.pings)
        finally:
            for p in procs:
                stop(p)  # type: ignore[arg-type]
            agent.stop()
            server.stop()

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.99) - 1]

    d_rate, f_rate = args.mib / direct_s, args.mib / forwarded_s
    print(f"throughput ({args.mib} MiB, one connection): direct {d_rate:.0f} MiB/s, "
          f"forwarded {f_rate:.1f} MiB/s, ratio {f_rate / d_rate:.3f}")
    for name, fn in (("median", statistics.median), ("p99", p99)):
        d, f = fn(direct_rtt) * 1e3, fn(forwarded_rtt) * 1e3
        print(f"round trip {name} (64 B, {args.pings} sequential): direct {d:.3f} ms, "
              f"forwarded {f:.3f} ms, added {f - d:.3f} ms, ratio {f / d:.1f}")


if __name__ == "__main__":
    main()
