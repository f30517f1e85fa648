"""``POST /commands`` and ``GET /commands/ID`` with N invocations, no agents needed.

The swarm (benchmarks/swarm) measures these inside a 10,000-agent run, where the
machine's noise is large. This isolates them: N identities inserted straight into a
fresh database (the swarm's ``identities.py``, a benchmark-only path), a real server
started on it, one command to all N (delivered to nobody: none is connected), then
the command's whole detail read REPEAT times over loopback. Run it with the tree to
measure on PYTHONPATH, and alternate with a base checkout's ``src``:

    .venv/bin/python benchmarks/command_detail.py --label tree
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/command_detail.py --label base
    .venv/bin/python benchmarks/command_detail.py --database-url postgresql://...   # empty DB
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "swarm"))
sys.path.insert(0, str(HERE.parent / "tests"))
import identities  # noqa: E402

from harness import PYTHON, clean_env  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--label", default="tree")
    p.add_argument("--database-url", help="an empty database instead of SQLite")
    args = p.parse_args()
    data = Path(tempfile.mkdtemp(prefix="tether-detail-")) / "data"
    data.mkdir()
    identities.insert(args.database_url or identities.sqlite_url(data),
                      identities.make_identities(args.nodes))
    env = clean_env(**({"PYTHONPATH": os.environ["PYTHONPATH"]}
                       if "PYTHONPATH" in os.environ else {}))
    db = ["--database-url", args.database_url] if args.database_url else []
    server = subprocess.Popen(
        [PYTHON, "-m", "tether", "server", "--insecure", "--data-dir", str(data), *db,
         "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None
        url = next(line.split()[-1] for line in server.stdout if "listening on" in line)
        token = (data / "admin-token").read_text().strip()
        api = httpx.Client(base_url=f"{url}/api/v1", timeout=120,
                           headers={"authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        created = api.post("/commands", json={"targets": ["tag:fleet=swarm"], "script": "ok"},
                           params={"invocations": "false"})
        post = time.perf_counter() - t0
        created.raise_for_status()
        path = f"/commands/{created.json()['command_id']}"
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            detail = api.get(path)
            times.append(time.perf_counter() - t0)
            assert len(detail.json()["invocations"]) == args.nodes
        print(f"{args.label}: POST /commands (no agent online) {post * 1000:.0f} ms; "
              f"GET {path.split('/')[1]}/ID median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms ({len(detail.content) // 1024} KiB, "
              f"{args.nodes} invocations)")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
