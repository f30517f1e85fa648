"""Hot-path regression guard: the swarm's key figures, this tree against a base commit.

    .venv/bin/python benchmarks/hot_path.py --base HEAD~1
    .venv/bin/python benchmarks/hot_path.py --base 1801779 --rounds 3 --out /tmp/hot
    .venv/bin/python benchmarks/hot_path.py --base v0.4 --postgres

Why: a change to the gateway, dispatch, store, audit or API should show its cost before it
lands, and one run of one ref says little on a shared machine (the same commit has moved 35 %
between two of its own runs here). So this runs ``swarm/run.py`` (2,000 agents, no bulk phase)
for the base and for this tree in turn, base, tree, base, tree, ..., so that whatever else
the machine does falls on both, and prints each figure's median per side and the ratio
tree / base. Not a timed test: its table goes in docs/benchmarks.md with the change.

- The base is ``run.py --tether-src REF`` (``git archive`` of REF's ``src``). The tree is a
  copy of ``src/tether`` taken once at the start (``--tree worktree``, with any uncommitted
  edits) or a ref; the same copy serves every round, so edits made in the checkout while
  this runs change neither side. The measuring code (run.py, swarm.py) is this checkout's
  for both sides.
- Noise is reported, not hidden: the load average before the first round, the CPU that other
  processes took during each round (machine busy time from ``/proc/stat`` minus this run's
  own processes), the spread of each side's own rounds, and a warning when any is high.
  With ``--postgres`` the database server's CPU counts as other work.

Everything goes to ``OUT/hot_path.json``; each round's own ``results.json`` and log are in
``OUT/round-K-SIDE/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "swarm" / "run.py"
TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
# Above these, the table gets a warning: other work is large next to what is measured.
BUSY_LOADAVG = CPUS / 2
BUSY_OTHER_CORES = 0.25


@dataclass(frozen=True)
class Figure:
    """One figure of the table: how to read it from a round's results.json."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: Callable[[dict[str, Any]], list[float]]


def _fanout(field: str) -> Callable[[dict[str, Any]], list[float]]:
    return lambda r: [f[field] for f in r.get("fanout", []) if f.get(field) is not None]


def _cpu_per_result(r: dict[str, Any]) -> list[float]:
    return [1000 * f["server_cpu_s"] / f["invocations"] for f in r.get("fanout", [])
            if f.get("invocations")]


def _at(*path: str) -> Callable[[dict[str, Any]], list[float]]:
    def get(r: dict[str, Any]) -> list[float]:
        v: Any = r
        for p in path:
            if not isinstance(v, dict) or p not in v:
                return []
            v = v[p]
        return [float(v)]
    return get


FIGURES = [
    Figure("results_per_s", "fan-out: results stored per second, from the call", "/s", True,
           _fanout("results_per_s")),
    Figure("fanout_last_stored_s", "fan-out: last result stored after the call", "s", False,
           _fanout("last_result_stored_after_call_s")),
    Figure("post_commands_s", "fan-out: POST /commands itself", "s", False,
           _fanout("post_s")),
    Figure("fanout_server_cpu_ms_per_result", "fan-out: server CPU per result", "ms", False,
           _cpu_per_result),
    Figure("reconnect_sigterm_to_online_s", "reconnect storm: SIGTERM to all Online", "s",
           False, _at("reconnect_storm", "all_online_api_after_sigterm_s")),
    Figure("reconnect_shutdown_s", "reconnect storm: ... of which server shutdown", "s", False,
           _at("reconnect_storm", "server_stop_s")),
    Figure("connect_storm_online_s", "connect storm: all Online in the API", "s", False,
           _at("connect_storm", "all_online_api_s")),
    Figure("connect_server_cpu_ms_per_agent", "connect storm: server CPU per agent", "ms",
           False, _at("connect_storm", "server_cpu_ms_per_agent")),
    Figure("rss_per_idle_agent_kib", "server RSS per idle agent", "KiB", False,
           _at("server_memory", "per_agent_kib")),
    Figure("command_detail_ms", "GET /commands/ID with N invocations, median", "ms", False,
           _at("operator_reads", "command_detail", "median_ms")),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def snapshot_worktree(dest: Path) -> dict[str, Any]:
    """Copy ``src/tether`` as it is now (uncommitted edits included) to ``dest/tether``."""
    shutil.copytree(ROOT / "src" / "tether", dest / "tether",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return {"spec": "worktree", "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes_in_src": git("status", "--short", "src").splitlines(),
            "tether_src": str(dest)}


# -- what else the machine is doing ---------------------------------------------

def machine_busy_s() -> float:
    """CPU seconds all cores spent working since boot (``/proc/stat``, idle and iowait out)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def own_children_s() -> float:
    """CPU of this process's waited-for descendants (run.py, and through it server and swarm)."""
    t = os.times()
    return t.children_user + t.children_system


def ancestors() -> set[int]:
    """This process and the ones that started it (the shell that ran us names hot_path.py)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def other_swarm_runs() -> list[str]:
    """Command lines of swarm benchmarks already running on the machine (not ours)."""
    found, ours = [], ancestors()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in ours:
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            line = " ".join(a.decode(errors="replace") for a in argv if a)
            if "swarm/run.py" in line or "hot_path.py" in line:
                found.append(f"{proc.name}: {line}")
    return found


# -- one round -------------------------------------------------------------------

def run_round(tether_src: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ``run.py`` in a subprocess; its results.json plus what the machine did meanwhile."""
    out.mkdir(parents=True)
    cmd = [sys.executable, str(RUN), "--agents", str(args.agents), "--skip", "bulk",
           "--fanout-rounds", str(args.fanout_rounds), "--reads-repeat", str(args.reads_repeat),
           "--tether-src", tether_src, "--out", str(out), "--no-plots", *args.run_arg]
    if args.postgres:
        cmd.append("--postgres")
    load0 = os.getloadavg()
    busy0, ours0, t0 = machine_busy_s(), own_children_s(), time.monotonic()
    with open(out / "run.log", "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # run.py stops every process it started on SIGTERM; wait for that.
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
    wall = time.monotonic() - t0
    other = (machine_busy_s() - busy0) - (own_children_s() - ours0)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    return {"rc": rc, "wall_s": round(wall, 1), "loadavg_at_start": load0,
            "other_cpu_cores": round(max(other, 0.0) / wall, 2),
            "failure": results.get("failure") or (f"run.py exited {rc}" if rc else None),
            "lines": results.get("lines", []), "tether_source": results.get("tether_source"),
            "figures": {f.key: f.values(results) for f in FIGURES}}


# -- the table ---------------------------------------------------------------------

def compare(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for f in FIGURES:
        side: dict[str, list[float]] = {"base": [], "tree": []}
        for r in rounds:
            side[r["side"]] += r["figures"].get(f.key, [])
        row: dict[str, Any] = {"key": f.key, "label": f.label, "unit": f.unit,
                               "better": "higher" if f.higher_is_better else "lower",
                               "base_values": side["base"], "tree_values": side["tree"]}
        if side["base"] and side["tree"]:
            base, tree = statistics.median(side["base"]), statistics.median(side["tree"])
            # how far each side's own rounds are apart, relative to its median
            spreads = [(max(v) - min(v)) / statistics.median(v) for v in side.values()
                       if statistics.median(v)]
            row.update(base_median=base, tree_median=tree,
                       ratio=tree / base if base else None, spread=max(spreads, default=0.0))
        rows.append(row)
    return rows


def verdict(row: dict[str, Any]) -> str:
    ratio, spread = row.get("ratio"), row.get("spread")
    if ratio is None or spread is None:
        return "?"
    change = ratio - 1 if row["better"] == "lower" else 1 - ratio
    if abs(ratio - 1) <= spread:
        return "within noise"
    return "worse" if change > 0 else "better"


def render(rows: list[dict[str, Any]], base_id: str, tree_id: str) -> str:
    def num(v: Optional[float]) -> str:
        if v is None:
            return "-"
        for floor, fmt in ((100, ",.0f"), (10, ".1f"), (1, ".2f")):
            if abs(v) >= floor:
                return format(v, fmt)
        return f"{v:.3f}"

    head = ["figure", "unit", f"base {base_id}", f"tree {tree_id}", "tree/base", "better",
            "spread", "reading"]
    table = [head, ["---", "---", "---:", "---:", "---:", "---", "---:", "---"]]
    for r in rows:
        table.append([r["label"], r["unit"], num(r.get("base_median")),
                      num(r.get("tree_median")),
                      f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-",
                      r["better"], f"{100 * r['spread']:.0f} %" if "spread" in r else "-",
                      verdict(r)])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, metavar="REF", help="git ref to compare against")
    p.add_argument("--tree", default="worktree", metavar="REF|worktree",
                   help="what is measured against the base: the checkout's src as it is now "
                        "(default, copied once) or a git ref")
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    p.add_argument("--fanout-rounds", type=int, default=2, help="fan-outs per run")
    p.add_argument("--reads-repeat", type=int, default=5, help="each operator read, per run")
    p.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database per run")
    p.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="passed on to swarm/run.py (repeat), e.g. --run-arg=--server-arg=...")
    p.add_argument("--out", type=Path, help="results folder (default: a new temp folder)")
    args = p.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="tether-hot-path-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base_sha = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    snap = Path(tempfile.mkdtemp(prefix="tether-hot-path-tree-"))
    if args.tree == "worktree":
        tree_info = snapshot_worktree(snap)
        tree_src = tree_info["tether_src"]
        dirty = "+" if tree_info["uncommitted_changes_in_src"] else ""
        tree_id = tree_info["commit"][:8] + dirty
    else:
        tree_src = git("rev-parse", "--verify", f"{args.tree}^{{commit}}")
        tree_info = {"spec": args.tree, "commit": tree_src}
        tree_id = tree_src[:8]
    base_id = base_sha[:8]
    others = other_swarm_runs()
    load0 = os.getloadavg()
    warnings = []
    if others:
        warnings.append("other swarm benchmarks were running at the start: "
                        + "; ".join(o[:120] for o in others))
    if load0[0] > BUSY_LOADAVG:
        warnings.append(f"load average {load0[0]:.1f} on {CPUS} CPUs before the first round")
    for w in warnings:
        log(f"warning: {w}")

    rounds: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "argv": sys.argv, "agents": args.agents, "database": "PostgreSQL" if args.postgres
        else "SQLite", "base": {"spec": args.base, "commit": base_sha}, "tree": tree_info,
        "cpus": CPUS, "loadavg_before": load0, "rounds": rounds}
    failure = None
    try:
        for k in range(args.rounds):
            for side, src in (("base", base_sha), ("tree", tree_src)):
                name = f"round-{k + 1}-{side}"
                log(f"{name}: {args.agents} agents, tether from "
                    f"{base_id if side == 'base' else tree_id}")
                r = run_round(src, out / name, args)
                r.update(side=side, round=k + 1)
                rounds.append(r)
                for line in r["lines"]:
                    log(f"  {line}")
                log(f"  {r['wall_s']:.0f} s; other processes took "
                    f"{r['other_cpu_cores']:.2f} cores")
                if r["failure"]:
                    raise RuntimeError(f"{name} failed: {r['failure']} (see {out / name})")
    except (Exception, KeyboardInterrupt) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {failure}")
    finally:
        shutil.rmtree(snap, ignore_errors=True)

    busy = [r for r in rounds if r["other_cpu_cores"] > BUSY_OTHER_CORES]
    if busy:
        warnings.append("other processes took " + ", ".join(
            f"{r['other_cpu_cores']:.2f}" for r in busy) + f" of {CPUS} cores during "
            + ", ".join(f"round {r['round']} {r['side']}" for r in busy))
    rows = compare(rounds)
    report.update(figures=rows, warnings=warnings, failure=failure,
                  wall_s=round(time.monotonic() - started, 1), loadavg_after=os.getloadavg())
    (out / "hot_path.json").write_text(json.dumps(report, indent=1))

    print(f"\nhot path, {args.agents} agents, {report['database']}: base {base_id} "
          f"({args.base}) vs tree {tree_id} ({args.tree}), {args.rounds} rounds each, "
          f"alternating; {report['wall_s']:.0f} s")
    print(render(rows, base_id, tree_id))
    print("\nmedians over every round of a side (fan-out figures: every fan-out); spread: "
          "the wider side's (max - min) / median; 'within noise': |ratio - 1| <= spread")
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} "
          f"({CPUS} CPUs); other processes per round (cores): "
          + ", ".join(f"{r['side']} {r['other_cpu_cores']:.2f}" for r in rounds))
    for w in warnings:
        print(f"WARNING: {w}")
    if failure:
        print(f"FAILED: {failure}")
    print(f"results: {out / 'hot_path.json'}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
