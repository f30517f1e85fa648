"""The console's fleet page at 10,000 nodes: how long one page of a search takes.

The fleet table asks ``GET /api/v1/nodes/search`` for one page (50 rows) and the
total, every 3 s while it is open. This fills a real server's database with N
nodes (benchmark-only bulk rows from ``swarm/identities.py``, each with a name,
a point-to-point primary address, an interface address row and an inventory)
and times the searches a person types, as an admin (SQL paging) and as an
operator whose policy reaches one tenth of the fleet (policy filter first).

As the baseline in the same run: the plain ``GET /api/v1/nodes`` list the CLI
uses, which returns the whole fleet.

Run: ``.venv/bin/python benchmarks/console_search.py [--nodes 10000] [--repeat 20]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Server
from swarm.identities import insert, make_identities, sqlite_url, sync_url
from tether.server.store.schema import node_addresses, nodes


def inventory(i: int, address: str) -> dict[str, Any]:
    return {"computer_name": f"pi-{i:05d}", "os_name": "Debian GNU/Linux", "os_version": "12",
            "kernel": "6.1.0", "arch": "aarch64", "agent_version": "0.1.0",
            "python_version": "3.11.2", "primary_address": address,
            "interfaces": [{"name": "lo", "flags": ["up", "loopback"],
                            "addresses": [{"address": "127.0.0.1", "prefixlen": 8,
                                           "family": "inet"}]},
                           {"name": "ppp0", "flags": ["up", "pointopoint", "running"],
                            "addresses": [{"address": address, "prefixlen": 32,
                                           "family": "inet", "peer": "10.64.0.1"}]}]}


def fill(url: str, count: int) -> list[dict[str, Any]]:
    identities = make_identities(count)
    insert(url, identities)
    engine = sa.create_engine(sync_url(url))
    with engine.begin() as conn:
        for lo in range(0, count, 2000):
            part = identities[lo:lo + 2000]
            for i in part:
                i["address"] = f"10.{64 + i['index'] // 65536}.{i['index'] // 256 % 256}." \
                               f"{i['index'] % 256}"
                conn.execute(nodes.update().where(nodes.c.node_id == i["node_id"]).values(
                    name=f"pi-{i['index']:05d}", primary_address=i["address"],
                    peer_address=i["address"], inventory=inventory(i["index"], i["address"])))
            conn.execute(node_addresses.insert(), [
                {"node_id": i["node_id"], "interface": "ppp0", "address": i["address"]}
                for i in part])
    engine.dispose()
    return identities


def timed(url: str, token: str, path: str, repeat: int) -> tuple[float, Any]:
    times, body = [], None
    for _ in range(repeat):
        req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = json.loads(resp.read())
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "server"
        data.mkdir()
        started = time.perf_counter()
        ids = fill(sqlite_url(data), args.nodes)
        print(f"{args.nodes} nodes written in {time.perf_counter() - started:.1f} s")
        server = Server(data).start()
        try:
            admin = server.token
            policy = Path(tmp) / "policy.json"
            policy.write_text(json.dumps([{"effect": "allow", "actions": ["nodes:read"],
                                           "resources": ["tag:shard=3"]}]))
            server.cli("operators", "create", "shard-op", "--policy", str(policy))
            scoped = server.cli("tokens", "create", "--operator", "shard-op")["token"]
            mid = ids[len(ids) // 2]
            cases = [
                ("first page", "/api/v1/nodes/search?limit=50"),
                ("last page", f"/api/v1/nodes/search?limit=50&offset={args.nodes - 50}"),
                ("by address", "/api/v1/nodes/search?q=" + mid["address"]),
                ("by name part", "/api/v1/nodes/search?q=pi-0421"),
                ("by tag", "/api/v1/nodes/search?q=" + urllib.parse.quote("shard=7")),
                ("by node id part", "/api/v1/nodes/search?q=" + mid["node_id"][3:11]),
            ]
            rows = []
            for name, path in cases:
                for who, token in (("admin", admin), ("operator, 1/10 of fleet", scoped)):
                    ms, body = timed(server.url, token, path, args.repeat)
                    rows.append((name, who, ms, body["total"]))
                    print(f"{name:16s} {who:24s} {ms:8.1f} ms  total {body['total']}")
            base_ms, full = timed(server.url, admin, "/api/v1/nodes", max(3, args.repeat // 4))
            print(f"baseline: GET /api/v1/nodes (whole fleet, {len(full)} rows) {base_ms:.1f} ms")
            print("\n| search | as | median ms | total | x whole-fleet list |")
            print("|---|---|---:|---:|---:|")
            for name, who, ms, total in rows:
                print(f"| {name} | {who} | {ms:.1f} | {total} | {ms / base_ms:.3f} |")
            print(f"| (baseline) whole fleet, GET /api/v1/nodes | admin | {base_ms:.1f} | "
                  f"{len(full)} | 1 |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
