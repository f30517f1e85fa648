"""Swarm benchmark driver: N simulated agents against one real tether server, measured.

    .venv/bin/python benchmarks/swarm/run.py --agents 1000
    .venv/bin/python benchmarks/swarm/run.py --agents 10000 --processes 4 --out /tmp/swarm-10k
    .venv/bin/python benchmarks/swarm/run.py --agents 10000 --postgres       # fresh PG database
    .venv/bin/python benchmarks/swarm/run.py --agents 10000 --profile        # py-spy per phase

What it does, in order (see README.md beside this file):

0. a temp data dir; N identities inserted straight into the database through
   tether's own schema (``identities.py``: a benchmark-only path, never a
   production one) and written to ``identities.json``; the real server started
   (``python -m tether server --data-dir ... --port 0 --log-level warning``).
1. connect storm: ``go`` to P swarm processes (each from its own loopback source
   address 127.0.0.2, 127.0.0.3, ...), time until all N are welcomed (reported by
   the swarm) and until the API lists all N Online.
2. server RSS per idle connected agent: (VmRSS at N - VmRSS before) / N, taken
   once the server is idle again, before any large API read.
3. fan-out: ``POST /api/v1/commands`` to ``tag:fleet=swarm`` with script ``ok``;
   waits (long poll on the command, as ``tether run`` does, or ``--fanout-poll
   summary``); per-node latency = ``ended_at - created_at`` of each invocation.
5. operator reads at N, timed on the client over loopback (includes the transfer
   of the body, not its parsing): nodes by tag ``shard=3``, the command summary
   list, one command's detail.
4. reconnect storm: server SIGTERM, restarted on the same data dir and port; time
   until all N are Online again; no simulated agent may give up.
6. bulk output: 1,000 nodes (``tag:shard=0`` when that is 1,000 nodes, else the
   first 1,000 ids) each return 1 MiB; server RSS sampled every 100 ms; every
   invocation's stored size checked and a few outputs fetched and compared.

Each phase prints one line; everything goes to ``OUT/results.json`` with the
fan-out latency plot ``OUT/fanout_latency.png`` and ``OUT/server_rss.png``.
Every process it starts is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tests"))
from harness import PYTHON, Server, clean_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# -- the server process -------------------------------------------------------

def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class RssSampler:
    """VmRSS of the current server pid every 100 ms, for the whole run."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic, KiB)
        self.pid: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            pid = self.pid
            if pid is None:
                continue
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self.samples.append((time.monotonic(), rss_kib(pid)))

    def peak(self, since: float, until: float) -> int:
        window = [r for t, r in self.samples if since <= t <= until]
        return max(window) if window else 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ServerCtl:
    def __init__(self, data_dir: Path, database_url: Optional[str], keepalive: tuple[float, float],
                 sampler: RssSampler, server_args: list[str]) -> None:
        self.server = Server(data_dir, database_url=database_url, keepalive=keepalive,
                             extra=["--log-level", "warning", *server_args])
        self.sampler = sampler
        self.old_logs: list[str] = []

    def full_log(self) -> list[str]:
        out = self.server.output
        return self.old_logs + (out.lines if out is not None else [])

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def start(self) -> float:
        start = time.monotonic()
        if self.server.output is not None:
            self.old_logs += self.server.output.lines
        self.server.start()
        self.sampler.pid = self.pid
        return time.monotonic() - start

    def stop(self, timeout: float = 60.0) -> tuple[float, bool]:
        """SIGTERM by pid; SIGKILL after ``timeout``. Returns (seconds, was it killed)."""
        proc = self.server.proc
        if proc is None or proc.poll() is not None:
            return 0.0, False
        self.sampler.pid = None
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
            return time.monotonic() - start, False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            return time.monotonic() - start, True

    def log_tail(self, n: int = 40) -> list[str]:
        out = self.server.output
        return out.lines[-n:] if out is not None else []

    def wait_idle(self, cpu_below: float = 0.05, window: float = 1.0,
                  timeout: float = 60.0) -> float:
        """Wait until the server used under ``cpu_below`` of a core over ``window`` s."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            c0 = cpu_seconds(self.pid)
            time.sleep(window)
            if (cpu_seconds(self.pid) - c0) / window < cpu_below:
                break
        return time.monotonic() - start


class Profiler:
    """``py-spy record`` on the server for one phase (collapsed stacks, ``--format raw``).

    py-spy's default mode pauses the process for each sample (100 a second), which
    lets it leave out idle threads (the event loop in ``select``, the SQLite thread
    waiting for work): what remains is time spent working, per thread.
    """

    def __init__(self, enabled: bool, out: Path) -> None:
        self.enabled = enabled and shutil.which("py-spy", path=str(Path(PYTHON).parent)) \
            is not None
        self.out = out
        self.files: dict[str, str] = {}

    @contextlib.contextmanager
    def phase(self, name: str, pid: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        path = self.out / f"profile-{name}.txt"
        proc = subprocess.Popen(
            [str(Path(PYTHON).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "100",
             "--format", "raw", "--output", str(path), "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if path.exists():
                self.files[name] = str(path)
                top = summarize_profile(path)
                (self.out / f"profile-{name}-top.txt").write_text(top)


IDLE_LEAVES = ("Selector.select (selectors.py", "_connection_worker_thread (aiosqlite/core.py:59)",
               "Condition.wait", "Queue.get", "Event.wait", "_worker (concurrent/futures")


def summarize_profile(path: Path, n: int = 25) -> str:
    """Busy samples per thread, then top frames by own and inclusive time per thread."""
    threads: dict[str, dict[str, Any]] = {}
    seen_ids: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = stack.split(";")
        name = frames[0] if frames[0].startswith(("thread", "process")) else "all"
        if name != "all":
            frames = frames[1:]
            # one entry per kind of thread: aiosqlite opens a thread per connection
            ident = name
            name = re.sub(r"^thread \(\d+\): (Thread-\d+ )?", "", name)
            seen_ids.setdefault(name, set()).add(ident)
        if not frames or any(k in frames[-1] for k in IDLE_LEAVES):
            continue
        t = threads.setdefault(name, {"total": 0, "own": {}, "incl": {}})
        t["total"] += count
        t["own"][frames[-1]] = t["own"].get(frames[-1], 0) + count
        for f in set(frames):
            t["incl"][f] = t["incl"].get(f, 0) + count
    grand = sum(t["total"] for t in threads.values())
    lines = [f"{grand} busy samples at 100 Hz (= {grand / 100:.1f} thread-seconds working)"]
    for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["total"]):
        total = t["total"]
        lines += ["", f"== {name} ({len(seen_ids.get(name, ()))} threads): {total} samples "
                      f"({100 * total / max(grand, 1):.1f}%)", "own time:"]
        for f, c in sorted(t["own"].items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"{100 * c / total:6.1f}%  {f}")
        lines.append("inclusive time, tether frames:")
        tether = [(f, c) for f, c in t["incl"].items() if "tether/" in f]
        for f, c in sorted(tether, key=lambda kv: -kv[1])[:n]:
            lines.append(f"{100 * c / total:6.1f}%  {f}")
        lines.append("inclusive time, other frames:")
        other = [(f, c) for f, c in t["incl"].items() if "tether/" not in f]
        for f, c in sorted(other, key=lambda kv: -kv[1])[:n]:
            lines.append(f"{100 * c / total:6.1f}%  {f}")
    return "\n".join(lines) + "\n"


# -- the swarm processes ------------------------------------------------------

class SwarmProc:
    def __init__(self, index: int, first: int, count: int, ident_file: Path, url: str,
                 local_addr: str, dial_concurrency: int, backoff_cap: float) -> None:
        self.index = index
        self.count = count
        self.local_addr = local_addr
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE / "swarm.py"), "--identities", str(ident_file),
             "--first", str(first), "--count", str(count), "--server", url,
             "--local-addr", local_addr, "--dial-concurrency", str(dial_concurrency),
             "--backoff-cap", str(backoff_cap)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(), start_new_session=True)
        self.stats: dict[str, Any] = {}
        self.ready = threading.Event()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if "ready" in msg:
                    self.ready.set()
                else:
                    self.stats = msg

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-50]

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Swarm:
    def __init__(self, procs: list[SwarmProc]) -> None:
        self.procs = procs

    def rss_kib(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(OSError, RuntimeError):
                total += rss_kib(p.proc.pid)
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += cpu_seconds(p.proc.pid)
        return total

    def total(self, key: str) -> int:
        return sum(int(p.stats.get(key, 0)) for p in self.procs)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.procs:
            for k, v in p.stats.get("errors", {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def summary(self) -> dict[str, Any]:
        keys = ["connected", "welcomes", "first_welcomes", "dial_failures", "link_losses",
                "refused", "commands", "duplicates", "results", "resends", "acks", "pings",
                "output_bytes", "gave_up"]
        out: dict[str, Any] = {k: self.total(k) for k in keys}
        out["errors"] = self.errors()
        out["processes_alive"] = sum(p.alive() for p in self.procs)
        return out

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise RuntimeError(f"swarm process {dead[0].index} exited "
                               f"{dead[0].proc.returncode}: {dead[0].stderr[-10:]}")

    def wait(self, predicate: Any, timeout: float, what: str, stall: float = 90.0) -> float:
        start = time.monotonic()
        progress = Progress(what, timeout, stall)
        while not predicate():
            self.check_alive()
            progress.check({k: self.total(k) for k in
                            ("connected", "welcomes", "dial_failures", "acks")})
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()


# -- the API ------------------------------------------------------------------

class Api:
    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url + "/api/v1",
                                   headers={"authorization": f"Bearer {token}"},
                                   timeout=httpx.Timeout(600.0, connect=30.0))

    def get(self, path: str, **params: Any) -> httpx.Response:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r

    def timed_get(self, path: str, **params: Any) -> tuple[float, httpx.Response]:
        start = time.perf_counter()
        r = self.get(path, **params)
        _ = r.content
        return time.perf_counter() - start, r

    def post(self, path: str, body: dict[str, Any], **params: Any) -> httpx.Response:
        r = self.client.post(path, json=body, params=params)
        r.raise_for_status()
        return r

    def close(self) -> None:
        self.client.close()


def count_online(api: Api) -> tuple[int, float, int]:
    """Nodes of the swarm listed Online: (count, seconds for the call, response bytes)."""
    took, r = api.timed_get("/nodes", tag="fleet=swarm", ping_status="Online")
    return len(r.json()), took, len(r.content)


def wait_api_online(api: Api, n: int, timeout: float) -> tuple[float, list[dict[str, Any]]]:
    start = time.monotonic()
    calls = []
    while True:
        count, took, size = count_online(api)
        calls.append({"online": count, "call_s": round(took, 3), "bytes": size})
        if count >= n:
            return time.monotonic() - start, calls
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"API lists {count} of {n} Online after {timeout:g} s")
        time.sleep(0.5)


class Progress:
    """Fails a wait when it runs past its deadline or nothing moved for ``stall`` s."""

    def __init__(self, what: str, timeout: float, stall: float) -> None:
        self.what = what
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.stall = stall
        self.last: Any = None
        self.moved = self.start
        self.logged = self.start

    def check(self, state: Any) -> None:
        now = time.monotonic()
        if state != self.last:
            self.last, self.moved = state, now
        if now > self.deadline:
            raise TimeoutError(f"{self.what}: not done within "
                               f"{self.deadline - self.start:g} s: {state}")
        if now - self.moved > self.stall:
            raise TimeoutError(f"{self.what}: stalled, no change for {self.stall:g} s: {state}")
        if now - self.logged >= 5:
            self.logged = now
            log(f"  {self.what}: {now - self.start:.0f} s: {state}")


def wait_command(api: Api, command: dict[str, Any], mode: str, timeout: float,
                 stall: float) -> tuple[dict[str, Any], int]:
    """Until the command is terminal; returns its final detail and the polls made."""
    cid = command["command_id"]
    progress = Progress(f"command {cid[:8]}", timeout, stall)
    polls = 0
    if mode in ("longpoll", "longpoll-full"):
        # As `tether run` follows a big fan-out: counts only on each change (servers
        # without the parameter ignore it), the whole detail once at the end.
        lean = {"invocations": "false"} if mode == "longpoll" else {}
        detail = command
        while detail["status"] not in TERMINAL:
            progress.check(detail["counts"])
            detail = api.get(f"/commands/{cid}", after=detail["version"],
                             wait=min(30.0, stall / 2), **lean).json()
            polls += 1
        return api.get(f"/commands/{cid}").json(), polls
    while True:
        polls += 1
        rows = api.get("/commands", limit=5).json()
        row = next(r for r in rows if r["command_id"] == cid)
        if row["status"] in TERMINAL:
            break
        progress.check(row["counts"])
        time.sleep(0.2)
    return api.get(f"/commands/{cid}").json(), polls


# -- phases -------------------------------------------------------------------

def phase_fanout(api: Api, swarm: Swarm, n: int, mode: str, timeout: float,
                 stall: float) -> dict[str, Any]:
    acks_before = swarm.total("acks")
    wall0 = time.time()
    t0 = time.monotonic()
    r = api.post("/commands", {"targets": ["tag:fleet=swarm"], "script": "ok",
                               "timeout": 600, "comment": "swarm fan-out"},
                 invocations="false")  # as `tether run` asks
    post_s = time.monotonic() - t0
    command = r.json()
    detail, polls = wait_command(api, command, mode, timeout, stall)
    seen_s = time.monotonic() - t0
    invs = detail["invocations"]
    created = detail["created_at"]
    ended = [i["ended_at"] for i in invs if i["ended_at"] is not None]
    started = [i["started_at"] for i in invs if i["started_at"] is not None]
    lat = [e - created for e in ended]
    statuses: dict[str, int] = {}
    for i in invs:
        statuses[i["status"]] = statuses.get(i["status"], 0) + 1
    last = max(ended) if ended else float("nan")
    span = last - created
    per_second: dict[int, int] = {}
    for e in ended:
        per_second[int(e - created)] = per_second.get(int(e - created), 0) + 1
    # The swarm's acks arrive a moment after the last row is stored.
    with contextlib.suppress(TimeoutError):
        swarm.wait(lambda: swarm.total("acks") - acks_before >= n, 30, "fan-out acks")
    return {
        "command_id": detail["command_id"], "invocations": len(invs), "statuses": statuses,
        "post_s": round(post_s, 3), "post_response_bytes": len(r.content),
        "terminal_seen_by_client_s": round(seen_s, 3), "polls": polls, "poll_mode": mode,
        "last_result_stored_after_call_s": round(last - wall0, 3),
        "last_result_stored_after_created_s": round(span, 3),
        # Conservative: from the operator's call, not from the command's creation.
        "results_per_s": round(len(ended) / (last - wall0), 1) if last > wall0 else None,
        "results_per_s_from_created": round(len(ended) / span, 1) if span > 0 else None,
        "peak_results_in_one_second": max(per_second.values()) if per_second else 0,
        "latency_p50_s": round(pct(lat, 50), 3), "latency_p90_s": round(pct(lat, 90), 3),
        "latency_p99_s": round(pct(lat, 99), 3), "latency_max_s": round(max(lat), 3),
        "latency_min_s": round(min(lat), 3),
        "accepted_p50_s": round(pct([s - created for s in started], 50), 3),
        "accepted_p99_s": round(pct([s - created for s in started], 99), 3),
        "swarm_acks": swarm.total("acks") - acks_before,
        "latencies_s": [round(x, 4) for x in sorted(lat)],
    }


def phase_reads(api: Api, command_id: str, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {"measured": "client side over loopback: request sent to body "
                                       "received (JSON parsing excluded)"}
    reads = {
        "whoami_baseline": ("/whoami", {}),
        "nodes_tag_shard3": ("/nodes", {"tag": "shard=3"}),
        "commands_summary_list": ("/commands", {}),
        "command_detail": (f"/commands/{command_id}", {}),
    }
    for name, (path, params) in reads.items():
        times, size, items = [], 0, 0
        for _ in range(repeat):
            took, r = api.timed_get(path, **params)
            times.append(took)
            size = len(r.content)
        body = r.json()
        items = len(body) if isinstance(body, list) else len(body.get("invocations", [1]))
        out[name] = {"median_ms": round(1000 * statistics.median(times), 1),
                     "min_ms": round(1000 * min(times), 1),
                     "max_ms": round(1000 * max(times), 1), "bytes": size, "items": items,
                     "repeat": repeat}
    return out


def phase_bulk(api: Api, swarm: Swarm, server: ServerCtl, sampler: RssSampler,
               idents: list[dict[str, Any]], shards: int, nodes_wanted: int, size: int,
               data_dir: Path, timeout: float, stall: float) -> dict[str, Any]:
    n = len(idents)
    if n // shards == nodes_wanted:
        targets = ["tag:shard=0"]
        node_ids = [i["node_id"] for i in idents if i["shard"] == 0]
    else:
        node_ids = [i["node_id"] for i in idents[:nodes_wanted]]
        targets = node_ids
    script = f"bytes:{size}"
    time.sleep(1.0)
    rss_before = rss_kib(server.pid)
    cpu0, scpu0 = cpu_seconds(server.pid), swarm.cpu_seconds()
    t0 = time.monotonic()
    wall0 = time.time()
    r = api.post("/commands", {"targets": targets, "script": script, "timeout": 900,
                               "comment": "swarm bulk output"}, invocations="false")
    command = r.json()
    detail, polls = wait_command(api, command, "summary", timeout, stall)
    took = time.monotonic() - t0
    cpu = cpu_seconds(server.pid) - cpu0
    swarm_cpu = swarm.cpu_seconds() - scpu0
    time.sleep(1.0)
    rss_after = rss_kib(server.pid)
    peak = sampler.peak(t0, time.monotonic())
    invs = detail["invocations"]
    statuses: dict[str, int] = {}
    for i in invs:
        statuses[i["status"]] = statuses.get(i["status"], 0) + 1
    wrong_size = [i["node_id"] for i in invs if i["stdout_size"] != size]
    ended = [i["ended_at"] for i in invs if i["ended_at"] is not None]
    # Every blob on disk (embedded folder blob store) and a few fetched whole over the API.
    blob_dir = data_dir / "outputs" / "outputs" / command["command_id"]
    disk_sizes = {p.name.split(".")[0]: p.stat().st_size for p in blob_dir.glob("*.stdout")} \
        if blob_dir.exists() else {}
    disk_wrong = [nid for nid in node_ids if disk_sizes.get(nid) != size] if disk_sizes else None
    from swarm import expected_output

    want = expected_output(script)
    fetched = []
    for nid in random.Random(4).sample(node_ids, min(5, len(node_ids))):
        ft, fr = api.timed_get(f"/commands/{command['command_id']}/invocations/{nid}/stdout")
        fetched.append({"node_id": nid, "bytes": len(fr.content), "equal": fr.content == want,
                        "seconds": round(ft, 3)})
    total = size * len(node_ids)
    last = max(ended) - wall0 if ended else float("nan")
    return {
        "command_id": command["command_id"], "nodes": len(node_ids), "bytes_each": size,
        "targets": targets[0] if len(targets) == 1 else f"{len(targets)} node ids",
        "statuses": statuses, "polls": polls,
        "all_done_seen_s": round(took, 3), "last_result_stored_after_call_s": round(last, 3),
        "throughput_mib_s": round(total / 2**20 / last, 1) if last > 0 else None,
        "server_cpu_s": round(cpu, 1), "swarm_cpu_s": round(swarm_cpu, 1),
        "rss_before_mib": round(rss_before / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "rss_peak_growth_mib": round((peak - rss_before) / 1024, 1),
        "rows_with_wrong_size": len(wrong_size),
        "blobs_on_disk": len(disk_sizes) if disk_sizes else None,
        "blobs_with_wrong_size": len(disk_wrong) if disk_wrong is not None else None,
        "fetched": fetched,
    }


def plot(out: Path, fanouts: list[dict[str, Any]], sampler: RssSampler, marks: dict[str, float],
         t_origin: float, n: int, label: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    files = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, f in enumerate(fanouts):
        lat = f["latencies_s"]
        if not lat:
            continue
        name = f"round {i + 1}: p50 {f['latency_p50_s']:.2f} s, p99 {f['latency_p99_s']:.2f} s"
        ax1.hist(lat, bins=60, alpha=0.6, label=name)
        ax2.plot(lat, [100 * (k + 1) / len(lat) for k in range(len(lat))], label=name)
    ax1.set_xlabel("ended_at - created_at (s)")
    ax1.set_ylabel("invocations")
    ax1.set_title(f"Fan-out to {n} agents ({label}): latency histogram")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("ended_at - created_at (s)")
    ax2.set_ylabel("% of invocations stored")
    ax2.set_title("cumulative")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out / "fanout_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))
    if sampler.samples:
        fig, ax = plt.subplots(figsize=(12, 4))
        ax.plot([t - t_origin for t, _ in sampler.samples],
                [r / 1024 for _, r in sampler.samples], lw=1)
        for name, t in marks.items():
            ax.axvline(t - t_origin, color="grey", ls=":", lw=1)
            ax.text(t - t_origin, ax.get_ylim()[1], name, rotation=90, va="top", fontsize=8)
        ax.set_xlabel("s since server start")
        ax.set_ylabel("server VmRSS (MiB)")
        ax.set_title(f"tether server RSS, {n} agents ({label})")
        fig.tight_layout()
        path = out / "server_rss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


# -- main ---------------------------------------------------------------------

def use_tether_source(spec: str) -> dict[str, Any]:
    """Make this process and its children import tether from ``spec`` (re-exec once)."""
    info: dict[str, Any] = {"spec": spec}
    if spec != "worktree":
        if (Path(spec) / "tether").is_dir():
            src = Path(spec).resolve()
        else:
            sha = subprocess.run(["git", "rev-parse", spec], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
            info["commit"] = sha
            dest = Path(tempfile.gettempdir()) / f"tether-swarm-src-{sha[:12]}"
            if not dest.exists():
                part = Path(tempfile.mkdtemp(prefix="tether-swarm-src-"))
                archive = subprocess.run(["git", "archive", sha, "src"], cwd=ROOT, check=True,
                                         capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(part)], input=archive, check=True)
                part.rename(dest)
            src = dest / "src"
        if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(src):
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]))
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    else:
        git = subprocess.run(["git", "status", "--short", "src"], cwd=ROOT,
                             capture_output=True, text=True)
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip()
        info["uncommitted_changes_in_src"] = git.stdout.split("\n")[:-1]
    import tether

    info["imported_from"] = str(Path(tether.__file__).parent)
    return info


def create_pg_database() -> str:
    import psycopg

    name = f"tether_swarm_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(), "loadavg_at_start": os.getloadavg(),
            "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)}


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    # SIGTERM, and SIGINT even when started in the background (where a shell ignores it),
    # end the run through the clean-up below: every started process is stopped by pid.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, required=True, help="N simulated agents")
    p.add_argument("--processes", type=int, default=0,
                   help="swarm processes (default: one per 2,500 agents, at least 2)")
    p.add_argument("--database-url", help="use this (empty) database instead of SQLite")
    p.add_argument("--postgres", action="store_true",
                   help=f"create a fresh database on {PG_ADMIN_URL}, drop it afterwards")
    p.add_argument("--out", type=Path, help="results folder (default: a new temp folder)")
    p.add_argument("--keep-data", action="store_true", help="keep the server's data dir")
    p.add_argument("--no-plots", action="store_true",
                   help="no PNGs (saves importing matplotlib; benchmarks/hot_path.py)")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--keepalive-interval", type=float, default=150.0)
    p.add_argument("--keepalive-timeout", type=float, default=30.0)
    p.add_argument("--dial-concurrency", type=int, default=128,
                   help="handshakes in flight per swarm process (0: unlimited)")
    p.add_argument("--backoff-cap", type=float, default=5.0)
    p.add_argument("--fanout-rounds", type=int, default=2)
    p.add_argument("--fanout-poll", choices=["longpoll", "longpoll-full", "summary"],
                   default="longpoll",
                   help="how the driver waits for the fan-out: long poll on the command "
                        "with invocations=false (as tether run does for big fleets), the "
                        "same with the full detail on every change, or poll the summary "
                        "list every 200 ms")
    p.add_argument("--bulk-nodes", type=int, default=1000)
    p.add_argument("--bulk-bytes", type=int, default=1024 * 1024)
    p.add_argument("--reads-repeat", type=int, default=5)
    p.add_argument("--skip", action="append", default=[],
                   choices=["fanout", "reads", "reconnect", "bulk"])
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="passed on to 'tether server' (repeat; e.g. --server-arg=--event-loop "
                        "--server-arg=asyncio for a before/after)")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each phase (s)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy record the server in each phase (OUT/profile-*.txt)")
    p.add_argument("--tether-src", default="worktree", metavar="REF|DIR",
                   help="tether code the server and swarm run: 'worktree' (the installed "
                        "checkout, default), a git ref such as HEAD (exported to a temp "
                        "folder, so edits in progress do not change the run), or a folder "
                        "holding the tether package")
    p.add_argument("--stall", type=float, default=90.0,
                   help="fail a command phase when nothing ends for this long (s)")
    args = p.parse_args()
    source = use_tether_source(args.tether_src)
    import identities as ids_mod

    n = args.agents
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        log(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: "
            "other work on this machine will show in every figure")
    nproc = args.processes or max(2, math.ceil(n / 2500))
    out = args.out or Path(tempfile.mkdtemp(prefix=f"tether-swarm-{n}-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tether-swarm-data-"))
    data_dir = work / "data"
    data_dir.mkdir(mode=0o700)
    pg_name = None
    db_url = args.database_url
    if args.postgres:
        pg_name = create_pg_database()
        db_url = f"postgresql://postgres@127.0.0.1:5432/{pg_name}"
    label = "PostgreSQL" if db_url and db_url.startswith("postgres") else "SQLite"
    results: dict[str, Any] = {
        "agents": n, "swarm_processes": nproc, "database": label, "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv,
        "keepalive": [args.keepalive_interval, args.keepalive_timeout],
        "dial_concurrency_per_process": args.dial_concurrency, "tether_source": source,
        "server_args": args.server_arg}
    sampler = RssSampler()
    server = ServerCtl(data_dir, db_url, (args.keepalive_interval, args.keepalive_timeout),
                       sampler, args.server_arg)
    profiler = Profiler(args.profile, out)
    swarm: Optional[Swarm] = None
    api: Optional[Api] = None
    marks: dict[str, float] = {}
    fanouts: list[dict[str, Any]] = []
    lines: list[str] = []
    failure: Optional[str] = None

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        # 0. identities and the server
        idents = ids_mod.make_identities(n, args.shards)
        took = ids_mod.insert(db_url or ids_mod.sqlite_url(data_dir), idents)
        ident_file = work / "identities.json"
        ids_mod.write_file(ident_file, idents)
        results["identities_insert_s"] = round(took, 2)
        log(f"{n} identities inserted in {took:.2f} s ({label})")
        results["server_start_s"] = round(server.start(), 2)
        marks["server up"] = time.monotonic()
        url = server.server.url
        api = Api(url, server.server.token)
        api.get("/whoami")
        api.get("/nodes", tag="shard=nonexistent")
        log(f"server pid {server.pid} on {url}")

        per = math.ceil(n / nproc)
        procs = [SwarmProc(i, i * per, min(per, n - i * per), ident_file, url,
                           f"127.0.0.{2 + i}", args.dial_concurrency, args.backoff_cap)
                 for i in range(nproc) if i * per < n]
        swarm = Swarm(procs)
        for sp in procs:
            if not sp.ready.wait(60):
                raise RuntimeError(f"swarm process {sp.index} not ready: {sp.stderr[-5:]}")
        server.wait_idle()
        rss0 = rss_kib(server.pid)
        results["server_rss_before_swarm_mib"] = round(rss0 / 1024, 1)

        # 1. connect storm
        with profiler.phase("connect", server.pid):
            cpu0, scpu0 = cpu_seconds(server.pid), swarm.cpu_seconds()
            t0 = time.monotonic()
            marks["connect storm"] = t0
            for sp in procs:
                sp.go()
            swarm_s = swarm.wait(lambda: swarm.total("connected") >= n, args.timeout,
                                 "connect storm", args.stall)
            _, calls = wait_api_online(api, n, args.timeout)
            api_s = time.monotonic() - t0
            cpu = cpu_seconds(server.pid) - cpu0
        results["connect_storm"] = {
            "all_welcomed_s": round(swarm_s, 2), "all_online_api_s": round(api_s, 2),
            "api_confirm_calls": calls, "server_cpu_s": round(cpu, 1),
            "server_cpu_ms_per_agent": round(1000 * cpu / n, 2),
            "swarm_cpu_s": round(swarm.cpu_seconds() - scpu0, 1), "swarm": swarm.summary()}
        say(f"connect storm: {n} agents welcomed in {swarm_s:.2f} s, all Online in the API "
            f"by {api_s:.2f} s (server CPU {cpu:.1f} s = {1000 * cpu / n:.1f} ms per agent; "
            "Online list call "
            f"{calls[-1]['call_s']:.2f} s, {calls[-1]['bytes'] / 2**20:.1f} MiB)")

        # 2. RSS per idle agent (measured after the server went idle; the Online list above
        # was read before it, see the note in the JSON)
        idle_wait = server.wait_idle()
        time.sleep(2)
        rss_n = rss_kib(server.pid)
        per_agent = (rss_n - rss0) / n
        results["server_memory"] = {
            "rss_before_mib": round(rss0 / 1024, 1), "rss_at_n_mib": round(rss_n / 1024, 1),
            "per_agent_kib": round(per_agent, 1), "idle_wait_s": round(idle_wait, 1),
            "swarm_rss_mib": round(swarm.rss_kib() / 1024, 1),
            "swarm_rss_per_agent_kib": round(swarm.rss_kib() / n, 1),
            "note": "VmRSS of the server pid; 'at N' is after the connect storm and the "
                    "API's Online-list confirmation, once the server's CPU went idle"}
        say(f"server memory: {rss0 / 1024:.0f} MiB before, {rss_n / 1024:.0f} MiB with {n} "
            f"idle agents: {per_agent:.1f} KiB per connected agent (swarm side: "
            f"{swarm.rss_kib() / n:.0f} KiB per agent)")

        # 3. fan-out
        if "fanout" not in args.skip:
            for k in range(args.fanout_rounds):
                time.sleep(1)
                marks[f"fan-out {k + 1}"] = time.monotonic()
                with profiler.phase(f"fanout{k + 1}", server.pid):
                    cpu0, scpu0 = cpu_seconds(server.pid), swarm.cpu_seconds()
                    f = phase_fanout(api, swarm, n, args.fanout_poll, args.timeout,
                                     args.stall)
                    f["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu0, 2)
                    f["swarm_cpu_s"] = round(swarm.cpu_seconds() - scpu0, 1)
                fanouts.append(f)
                say(f"fan-out {k + 1}: {f['invocations']} results stored "
                    f"{f['last_result_stored_after_call_s']:.2f} s after the call "
                    f"({f['results_per_s']} results/s; POST {f['post_s']:.2f} s); latency "
                    f"p50 {f['latency_p50_s']:.2f} s p99 {f['latency_p99_s']:.2f} s; client "
                    f"saw it terminal at {f['terminal_seen_by_client_s']:.2f} s after "
                    f"{f['polls']} {f['poll_mode']} polls; server CPU {f['server_cpu_s']} s = "
                    f"{1000 * f['server_cpu_s'] / n:.2f} ms per result; swarm CPU "
                    f"{f['swarm_cpu_s']} s; "
                    f"statuses {f['statuses']}")
            results["fanout"] = [{k: v for k, v in f.items() if k != "latencies_s"}
                                 for f in fanouts]
            (out / "fanout_latencies.json").write_text(json.dumps(
                [f["latencies_s"] for f in fanouts]))

        # 5. operator reads
        if "reads" not in args.skip and fanouts:
            marks["reads"] = time.monotonic()
            rd = phase_reads(api, fanouts[0]["command_id"], args.reads_repeat)
            results["operator_reads"] = rd
            say("operator reads (client side, loopback): " + "; ".join(
                f"{k} median {v['median_ms']:.0f} ms (max {v['max_ms']:.0f}, "
                f"{v['items']} items, {v['bytes'] / 1024:.0f} KiB)"
                for k, v in rd.items() if isinstance(v, dict)))

        # 4. reconnect storm
        if "reconnect" not in args.skip:
            server.wait_idle()
            welcomes0 = swarm.total("welcomes")
            before = swarm.summary()
            marks["restart"] = time.monotonic()
            t0 = time.monotonic()
            stop_s, killed = server.stop()
            restart_s = server.start()
            t_up = time.monotonic()
            with profiler.phase("reconnect", server.pid):
                cpu0, scpu0 = cpu_seconds(server.pid), swarm.cpu_seconds()
                swarm_s = swarm.wait(
                    lambda: swarm.total("welcomes") - welcomes0 >= n
                    and swarm.total("connected") >= n, args.timeout, "reconnect storm",
                    args.stall)
                _, calls = wait_api_online(api, n, args.timeout)
                api_s = time.monotonic() - t0
                cpu = cpu_seconds(server.pid) - cpu0
            after = swarm.summary()
            results["reconnect_storm"] = {
                "server_stop_s": round(stop_s, 2), "server_killed": killed,
                "server_start_s": round(restart_s, 2),
                "all_welcomed_after_sigterm_s": round(swarm_s + (t_up - t0), 2),
                "all_online_api_after_sigterm_s": round(api_s, 2),
                "all_online_api_after_restart_s": round(time.monotonic() - t_up, 2),
                "server_cpu_s": round(cpu, 1), "api_confirm_calls": calls,
                "swarm_cpu_s": round(swarm.cpu_seconds() - scpu0, 1),
                "gave_up": after["gave_up"], "refused": after["refused"] - before["refused"],
                "swarm_processes_alive": after["processes_alive"],
                "swarm_before": before, "swarm_after": after}
            say(f"reconnect storm: server stopped in {stop_s:.1f} s"
                f"{' (SIGKILLed)' if killed else ''}, restarted in {restart_s:.1f} s; all "
                f"{n} welcomed {swarm_s + (t_up - t0):.2f} s after SIGTERM, Online in the API "
                f"{api_s:.2f} s after SIGTERM ({time.monotonic() - t_up:.2f} s after restart);"
                f" server CPU {cpu:.1f} s = {1000 * cpu / n:.1f} ms per agent;"
                f" gave up {after['gave_up']}, refused {after['refused'] - before['refused']}")
            rss_re = rss_kib(server.pid)
            results["reconnect_storm"]["rss_after_mib"] = round(rss_re / 1024, 1)

        # 6. bulk output
        if "bulk" not in args.skip:
            server.wait_idle()
            marks["bulk output"] = time.monotonic()
            with profiler.phase("bulk", server.pid):
                b = phase_bulk(api, swarm, server, sampler, idents, args.shards,
                               min(args.bulk_nodes, n), args.bulk_bytes, data_dir,
                               args.timeout, args.stall)
            results["bulk_output"] = b
            ok_fetch = sum(f["equal"] for f in b["fetched"])
            say(f"bulk output: {b['nodes']} x {b['bytes_each'] / 2**20:g} MiB stored "
                f"{b['last_result_stored_after_call_s']:.1f} s after the call "
                f"({b['throughput_mib_s']} MiB/s, server CPU {b['server_cpu_s']} s, swarm "
                f"CPU {b['swarm_cpu_s']} s); "
                f"server RSS {b['rss_before_mib']:.0f} -> "
                f"peak {b['rss_peak_mib']:.0f} -> {b['rss_after_mib']:.0f} MiB; statuses "
                f"{b['statuses']}; wrong sizes {b['rows_with_wrong_size']} rows, "
                f"{b['blobs_with_wrong_size']} blobs; {ok_fetch}/{len(b['fetched'])} fetched "
                "outputs identical")
        results["swarm_final"] = swarm.summary()
        results["loadavg_at_end"] = os.getloadavg()
    except (Exception, KeyboardInterrupt) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {failure}")
        results["failure"] = failure
        results["server_log_tail"] = server.log_tail()
        if swarm is not None:
            results["swarm_at_failure"] = swarm.summary()
    finally:
        if api is not None:
            api.close()
        if swarm is not None:
            swarm.stop()
        server.stop()
        sampler.stop()
        if pg_name:
            with contextlib.suppress(Exception):
                drop_pg_database(pg_name)
        full_log = server.full_log()
        (out / "server.log").write_text("\n".join(full_log) + "\n")
        results["server_log_warnings"] = sum(1 for line in full_log
                                             if " WARNING " in line or " ERROR " in line)
        results["server_log_tail"] = server.log_tail(30)
        results["lines"] = lines
        results["plots"] = [] if args.no_plots else plot(
            out, fanouts, sampler, marks, marks.get("server up", time.monotonic()), n, label)
        results["rss_samples_kib"] = [[round(t, 2), r] for t, r in sampler.samples[::5]]
        results["profiles"] = profiler.files
        (out / "results.json").write_text(json.dumps(results, indent=1))
        if args.keep_data:
            log(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        log(f"results in {out}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
