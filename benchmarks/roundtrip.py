"""Command round trip: from the CLI call to the last result stored.

Starts a real server (SQLite in a temp data dir, or --database-url) and N real
agent processes on loopback, then times ``tether run --target all -- true``
as a subprocess, which returns once every invocation is terminal and stored.
The baseline, measured in the same run, is ``tether commands list``: the same
CLI process start and one API call, with no agent involved.

    .venv/bin/python benchmarks/roundtrip.py --agents 1 --agents 100 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Agent, Server


def timed(server: Server, *args: str) -> float:
    start = time.perf_counter()
    result = server.cli_raw(*args)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{args} failed: {result.stderr}")
    return elapsed


def bring_up(server: Server, root: Path, count: int, start_index: int) -> list[Agent]:
    act_id, code = server.activation("--limit", str(count))
    agents = [Agent(server, root / f"agent{start_index + i}") for i in range(count)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda a: a.register(act_id, code), agents))
    for a in agents:
        a.start()
    deadline = time.monotonic() + 120
    want = {a.node_id for a in agents}
    while time.monotonic() < deadline:
        online = {n["node_id"] for n in server.cli("nodes", "list", "--ping-status", "Online")}
        if want <= online:
            return agents
        time.sleep(0.2)
    raise SystemExit("agents did not come Online in 120 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, action="append", help="fleet sizes, ascending")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--database-url")
    args = p.parse_args()
    sizes = sorted(args.agents or [1, 100])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = Server(root / "data", database_url=args.database_url,
                        keepalive=(60, 20)).start()
        agents: list[Agent] = []
        try:
            print("| agents | baseline `commands list` (s) | `run -- true` median (s) "
                  "| min (s) | ratio to baseline |")
            print("|---|---|---|---|---|")
            for size in sizes:
                agents += bring_up(server, root, size - len(agents), len(agents))
                base, runs = [], []
                for _ in range(args.repeat):
                    base.append(timed(server, "commands", "list", "--json"))
                    runs.append(timed(server, "run", "--target", "all", "--json",
                                      "--", "true"))
                b, r = statistics.median(base), statistics.median(runs)
                print(f"| {size} | {b:.3f} | {r:.3f} | {min(runs):.3f} | {r / b:.2f} |",
                      flush=True)
        finally:
            for a in agents:
                a.stop()
            server.stop()


if __name__ == "__main__":
    main()
