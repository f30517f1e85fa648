"""Reconnect: time from link restore to Online after a long outage, at default settings.

Real server in the server namespace, real agent in the device namespace behind
the emulated PPP link (default keepalive and reconnect settings). After the node
is Online, the link is cut for ``--outage`` seconds (10 minutes by default: long
enough for the agent's backoff to reach its cap), then restored; the time until
the server lists the node Online again is the number. Target: at most the backoff
cap (60 s) plus 5 s. Where the restore lands in the agent's backoff is chance, so
run it several times (``--runs``, or several copies at once: each builds its own
network) and read the worst.

The device dials the server's address, so each attempt during the outage hangs on
lost SYNs until the connect timeout: the slow case. (By name, as in the test
network's DNS, an attempt fails in about 2 s at resolution, the resolver being
across the cut link.)

    .venv/bin/python benchmarks/reconnect.py [--outage 600] [--runs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))
from pppnet import PppNetwork

from idle_traffic import Product
from tether.agent.backoff import DEFAULT_CAP
from tether.server.config import DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT


def wait_status(field: Product, node_id: str, status: str, timeout: float) -> float:
    start = time.monotonic()
    while field.ping_status(node_id) != status:
        if time.monotonic() - start > timeout:
            raise field.fail(f"node never {status} within {timeout:g} s")
        time.sleep(0.2)  # poll interval of a deadline-bound poll
    return time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outage", type=float, default=600.0)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tether-reconnect-") as tmp, \
            PppNetwork(seed=1) as net:
        field = Product(net, Path(tmp))
        field.start_server(DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT)
        node_id = field.start_agent(by_address=True)
        field.wait_online(node_id)
        for _ in range(args.runs):
            net.cut()
            lost = wait_status(field, node_id, "ConnectionLost", args.outage + 300)
            time.sleep(max(0.0, args.outage - lost))  # the rest of the outage itself
            net.restore()
            back = wait_status(field, node_id, "Online", DEFAULT_CAP + 120)
            rows.append((lost, back))
    print("| outage (s) | ConnectionLost after (s) | Online after restore (s) "
          "| target (s) | met |")
    print("|---|---|---|---|---|")
    for lost, back in rows:
        target = DEFAULT_CAP + 5
        print(f"| {args.outage:g} | {lost:.1f} | {back:.1f} | {target:g} | "
              f"{'yes' if back <= target else 'NO'} |")


if __name__ == "__main__":
    main()
