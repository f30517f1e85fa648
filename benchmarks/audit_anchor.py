"""What moving DATA/audit-anchor forward costs on every audit append.

Two ways to replace the anchor: a new file renamed over the old one (atomic, but on
ext4 the rename makes the kernel write the new file's data out first), and the
two-slot file written in place that the server uses (store/audit_anchor.py). Then
the append itself, on SQLite, with and without the anchor, for scale.

Run: ``.venv/bin/python benchmarks/audit_anchor.py [--writes 1000] [--appends 500]``
(in a folder on the disk the data folder lives on: ``--dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tether.server.access.audit_chain import Checkpoint, sign_checkpoint
from tether.server.store import open_store
from tether.server.store.audit_anchor import AnchorFile

KEY = b"k" * 32


def renamed(path: Path, checkpoint: Checkpoint) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps(checkpoint.as_dict()).encode())
    os.close(fd)
    os.replace(tmp, path)


def per_write(folder: Path, n: int) -> tuple[float, float]:
    checkpoints = [sign_checkpoint(KEY, i, "a" * 64, time.time()) for i in range(n)]
    start = time.perf_counter()
    for cp in checkpoints:
        renamed(folder / "renamed", cp)
    rename = (time.perf_counter() - start) / n
    anchor = AnchorFile(folder / "audit-anchor", KEY)
    start = time.perf_counter()
    for cp in checkpoints:
        anchor.write(cp)
    in_place = (time.perf_counter() - start) / n
    anchor.close()
    return rename, in_place


async def per_append(folder: Path, n: int, anchored: bool) -> float:
    store = await open_store(f"sqlite:///{folder / f'audit-{anchored}.db'}")
    await store.audit.open(KEY, folder / f"anchor-{anchored}" if anchored else None)
    start = time.perf_counter()
    for _ in range(n):
        await store.audit.append(actor="op", action="POST /api/v1/commands", outcome="ok",
                                 detail={"script": "uptime"})
    took = (time.perf_counter() - start) / n
    await store.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        runs = [per_write(folder, args.writes) for _ in range(3)]
        print(f"anchor, temp file + rename: {statistics.median(r[0] for r in runs) * 1e6:.0f} "
              f"us a write; two slots in place: {statistics.median(r[1] for r in runs) * 1e6:.1f}"
              " us a write (median of 3)")
        for anchored in (False, True, False, True):
            took = asyncio.run(per_append(folder, args.appends, anchored))
            print(f"SQLite append {'with' if anchored else 'without'} the anchor: "
                  f"{took * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
