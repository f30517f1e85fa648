"""The floor for idle traffic: one kernel TCP keepalive exchange, measured on our link.

The idle-traffic target is stated against "the bytes of the smallest possible TCP
keepalive exchange at that interval". This measures that exchange on the same
emulated PPP link the product is measured on: a bare TCP connection from the
device namespace to the server namespace with SO_KEEPALIVE and a 2 s idle time,
nothing else on it; the link's counters over the window give bytes per probe
and its answer.

    .venv/bin/python benchmarks/keepalive_floor.py [--window 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))
from pppnet import PppNetwork

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8401)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); c.recv(1)
"""
PROBER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 8401))
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
print("connected", flush=True); time.sleep(float(sys.argv[2]) + 10)
"""


def measure_floor(window: float = 20.0) -> float:
    """Bytes of one kernel keepalive exchange (probe and ACK) on a fresh emulated link."""
    with PppNetwork(seed=1) as net:
        _, lw = net.spawn(net.server_ns, [sys.executable, "-c", LISTENER, net.server_addr])
        lw.wait_for("listening", timeout=30)
        _, pw = net.spawn(net.device_ns, [sys.executable, "-c", PROBER, net.server_addr,
                                          str(window)])
        pw.wait_for("connected", timeout=30)
        time.sleep(1.0)  # let the handshake's packets pass before counting
        net.reset_stats()
        time.sleep(window)  # the measured idle window itself
        st = net.stats()
    up, down = st["uplink"], st["downlink"]
    if not up["packets"]:
        raise SystemExit(f"no keepalive probe crossed the link in {window:g} s")
    return float(up["bytes"] + down["bytes"]) / up["packets"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--window", type=float, default=20.0)
    args = p.parse_args()
    print(f"| window (s) | bytes per exchange |\n|---|---|\n"
          f"| {args.window:g} | {measure_floor(args.window):.1f} |")


if __name__ == "__main__":
    main()
