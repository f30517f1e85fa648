"""Bulk identities for the swarm benchmark: N node rows written straight into the database.

BENCHMARK TOOL ONLY, NEVER A PRODUCTION PATH. A real device registers through
``POST /api/v1/registrations`` with an activation code; that path is what tether
supports and what its tests cover. This module skips it so that 10,000 identities
take a second instead of 10,000 HTTP round trips, by inserting rows into the
server's own tables (``tether.server.store.schema``) with SQLAlchemy Core, the
credential kept only as ``hash_secret(credential)`` exactly as the server does.

It works on SQLite (``DATA_DIR/tether.db``) and PostgreSQL, before the server
starts (the schema is brought to head with ``tether.server.store.migrate`` on a
sync engine, the same Alembic upgrade the server runs at start-up) or while it
runs (the rows are just new, disconnected nodes).

    .venv/bin/python benchmarks/swarm/identities.py --count 10000 \\
        --database-url sqlite:///tmp/data/tether.db --out /tmp/identities.json

Every node gets ``ping_status=ConnectionLost``, ``activation_id=bench`` and the
tags ``fleet=swarm`` and ``shard=K`` (K = index mod ``shards``), so the whole swarm
is ``tag:fleet=swarm`` and one tenth of it (by default) is ``tag:shard=0``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tether.protocol.ids import new_node_id
from tether.server.secrets import hash_secret, new_secret
from tether.server.store import migrate
from tether.server.store.schema import node_tags, nodes

ACTIVATION_ID = "bench"
FLEET_TAG = ("fleet", "swarm")
SHARD_KEY = "shard"


def sync_url(url: str) -> str:
    """The server's URL forms (sqlite:///..., postgresql://...) for a sync engine."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_url(data_dir: Path) -> str:
    """The URL the server uses for its embedded database in ``data_dir``."""
    return f"sqlite:///{data_dir.resolve() / 'tether.db'}"


def make_identities(count: int, shards: int = 10) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < count:
        node_id = new_node_id()
        if node_id in seen:  # 68 random bits: never in practice, but cheap to rule out
            continue
        seen.add(node_id)
        i = len(out)
        out.append({"index": i, "node_id": node_id, "credential": new_secret("tnc"),
                    "shard": i % shards})
    return out


def insert(database_url: str, identities: list[dict[str, Any]], *, migrate_first: bool = True,
           batch: int = 2000) -> float:
    """Write the node and tag rows; return the seconds it took (schema upgrade included)."""
    start = time.perf_counter()
    engine = sa.create_engine(sync_url(database_url))
    try:
        if migrate_first:
            with engine.begin() as conn:
                migrate.upgrade(conn)
        now = time.time()
        with engine.begin() as conn:
            for lo in range(0, len(identities), batch):
                part = identities[lo:lo + batch]
                conn.execute(nodes.insert(), [
                    {"node_id": i["node_id"], "credential_hash": hash_secret(i["credential"]),
                     "name": f"swarm-{i['index']:05d}", "activation_id": ACTIVATION_ID,
                     "registered_at": now, "ping_status": "ConnectionLost"} for i in part])
                conn.execute(node_tags.insert(), [
                    row for i in part for row in (
                        {"node_id": i["node_id"], "key": FLEET_TAG[0], "value": FLEET_TAG[1]},
                        {"node_id": i["node_id"], "key": SHARD_KEY, "value": str(i["shard"])})])
    finally:
        engine.dispose()
    return time.perf_counter() - start


def write_file(path: Path, identities: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(identities))
    path.chmod(0o600)


def read_file(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--database-url", required=True,
                   help="sqlite:///DATA_DIR/tether.db or postgresql://...")
    p.add_argument("--out", type=Path, required=True, help="identity JSON file to write")
    p.add_argument("--shards", type=int, default=10)
    args = p.parse_args()
    ids = make_identities(args.count, args.shards)
    took = insert(args.database_url, ids)
    write_file(args.out, ids)
    print(f"inserted {len(ids)} identities in {took:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
