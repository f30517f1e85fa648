"""Side by side with Salt: one command to N devices, from the CLI call to all replies.

Everything runs in one invocation, on loopback only, one phase after the other
so the two fleets never share the machine's memory or cores:

1. Salt from PyPI (``salt==3008.4``) is installed with ``pip`` into a fresh
   virtual environment (Python 3.11) under the benchmark's own temp folder.
2. For each N (``--sizes``, default 50 and 200):

   * **Salt**: a ``salt-master`` on 127.0.0.1 with non-default ports
     (``--publish-port``/``--ret-port``), ``auto_accept: True``, its own
     root_dir, pki_dir, cachedir, sock_dir and log files under the temp folder
     (never /etc/salt), and N ``salt-minion`` processes (``id: minion-i``,
     ``multiprocessing: False``, each with its own config and pki dir holding one
     shared pre-generated key pair from ``salt-key --gen-keys``). Minions start
     ``--minion-batch`` at a time, each batch accepted and answering ``test.ping``
     before the next starts (all 200 at once never settle on 2 cores). Once all N
     answer, ``salt '*' test.ping`` and ``salt '*' cmd.run hostname`` are timed
     (``--repeat`` times each, median), each run checked for a reply from every
     minion. The CLI's ``--timeout`` is generous (the CLI returns as soon as all
     answered; a short one makes it send ``saltutil.find_job`` to every minion,
     which at N=200 feeds a retry storm the master never drains). Then the
     master's and each minion's process tree are measured (VmRSS, and PSS) and
     every Salt process is stopped.
   * **tether**: a real ``tether server`` (SQLite in a data dir, the server's
     default keepalive) and N real ``tether.agent`` processes (tests/harness.py);
     once all N are Online, ``tether run --target all -- hostname`` and
     ``tether run --target all -- true`` are timed the same way, each checked
     for N successful invocations (and the hostname in each stdout). Then the
     server's and the agents' memory is measured and everything is stopped.

   Before each side's timed runs, the fleet's idle CPU is measured over
   ``--idle-window`` seconds; while other processes on the machine use more than
   ``--quiet-cores`` it waits (at most ``--quiet-wait`` s) and records what they used.

3. A markdown table with the medians, the ratios (Salt / tether) and the memory
   per device is printed, and all figures (every run, not just medians) are
   written as JSON.

Each timing is of the CLI process as an operator runs it (``salt ... --out json
--static``, ``tether run ... --json``): process start, the fan-out, every reply
collected and printed. Processes are started in their own process groups and
only those groups (and their recorded descendants) are stopped, by pid.

This is a benchmark, never part of the test suite. About 35 min for the default
sizes on a 2-core machine, most of it with 200 Salt minions; see
benchmarks/salt_compare.md::

    .venv/bin/python benchmarks/salt_compare.py --sizes 50,200 --json /tmp/salt_compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Agent, Server, clean_env

SALT_VERSION = "3008.4"
SALT_PYTHON = "/root/.pyenv/versions/3.11.7/bin/python3"
HOSTNAME = socket.gethostname()
MIB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def ppid_map() -> dict[int, list[int]]:
    """Children of every process, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and all its descendants."""
    children = ppid_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    rss_kib: int = 0
    pss_kib: int = 0
    processes: int = 0
    largest_rss_kib: int = 0


def tree_memory(pid: int, children: dict[int, list[int]] | None = None) -> Memory:
    """Sum of VmRSS (and of PSS, which splits shared pages) over a process tree."""
    m = Memory()
    for p in tree(pid, children):
        rss = _kib(f"/proc/{p}/status", "VmRSS")
        if rss:
            m.rss_kib += rss
            m.largest_rss_kib = max(m.largest_rss_kib, rss)
            m.pss_kib += _kib(f"/proc/{p}/smaps_rollup", "Pss")
            m.processes += 1
    return m


def fleet_memory(pids: list[int]) -> dict[str, float]:
    """Per-device means over each device's process tree, in MiB."""
    children = ppid_map()
    each = [tree_memory(p, children) for p in pids]
    return {"rss_mib_mean": statistics.mean(m.rss_kib for m in each) / 1024,
            "rss_mib_max": max(m.rss_kib for m in each) / 1024,
            "largest_process_rss_mib_mean": statistics.mean(m.largest_rss_kib
                                                            for m in each) / 1024,
            "pss_mib_mean": statistics.mean(m.pss_kib for m in each) / 1024,
            "rss_mib_total": sum(m.rss_kib for m in each) / 1024,
            "processes_per_device": statistics.mean(m.processes for m in each),
            "devices_measured": len(each)}


def one_memory(pid: int) -> dict[str, float]:
    m = tree_memory(pid)
    return {"rss_mib": m.rss_kib / 1024, "pss_mib": m.pss_kib / 1024,
            "processes": m.processes}


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])  # utime + stime


def _machine_busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def idle_cpu(groups: dict[str, list[int]], window: float) -> dict[str, float]:
    """Cores used by each group of process trees over ``window`` seconds of no command."""
    children = ppid_map()
    pids = {name: [p for root in roots for p in tree(root, children)]
            for name, roots in groups.items()}
    before = {p: _cpu_ticks(p) for ps in pids.values() for p in ps}
    machine_before = _machine_busy_ticks()
    time.sleep(window)  # the measured window itself
    hz = os.sysconf("SC_CLK_TCK")
    # The whole machine too: anything else running skews the timings that follow.
    out = {"machine": (_machine_busy_ticks() - machine_before) / hz / window}
    for name, ps in pids.items():
        ticks = 0
        for p in ps:
            now = _cpu_ticks(p)
            if now >= 0 and before[p] >= 0:
                ticks += now - before[p]
        out[name] = ticks / hz / window
    return out


def settle(groups: dict[str, list[int]], args: argparse.Namespace) -> dict[str, float]:
    """Measure the fleet idle; repeat while other work busies the machine (bounded).

    Other processes on the machine skew every timing, so before the timed runs this
    waits (at most ``--quiet-wait`` seconds) for a window in which processes other
    than this fleet use less than ``--quiet-cores``. The last window is returned,
    with ``others`` = machine minus this fleet, either way.
    """
    deadline = time.monotonic() + args.quiet_wait
    while True:
        cpu = idle_cpu(groups, args.idle_window)
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items()
                                                        if k != "machine"))
        if cpu["others"] < args.quiet_cores or time.monotonic() > deadline:
            log("idle CPU (cores) over {:.0f} s: {}".format(
                args.idle_window, ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())))
            return cpu
        log(f"other processes use {cpu['others']:.2f} cores; waiting for a quieter machine")


def stop_groups(procs: list[subprocess.Popen[Any]], timeout: float = 30) -> None:
    """SIGTERM the process groups these processes lead, then SIGKILL what is left.

    Every process here was started with ``start_new_session=True``, so its pid is
    its group id; descendants recorded before the signal that left the group are
    killed by pid.
    """
    live = [p for p in procs if p.poll() is None]
    if not live:
        return
    children = ppid_map()
    ours = {p.pid: tree(p.pid, children) for p in live}
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
    for leader, pids in ours.items():
        for pid in pids:
            if pid == leader:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               interval: float = 0.5) -> float:
    """Poll ``check`` until true, bounded by ``timeout``; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)  # polling interval of a deadline-bound poll
    return time.monotonic() - start


def port_free(port: int) -> bool:
    """No one listens on the port (TIME_WAIT from a previous phase is fine)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- Salt


def install_salt(root: Path, python: str, version: str) -> Path:
    venv = root / "salt-venv"
    log(f"installing salt=={version} from PyPI into {venv}")
    start = time.monotonic()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                             f"salt=={version}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pip install salt=={version} failed:\n{result.stdout}\n"
                         f"{result.stderr}")
    log(f"salt installed in {time.monotonic() - start:.0f} s")
    return venv / "bin"


def yaml_block(opts: dict[str, Any]) -> str:
    """Salt config as YAML (JSON is valid YAML; one key a line for reading)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in opts.items())


@dataclass
class SaltFleet:
    bin: Path
    root: Path
    size: int
    publish_port: int
    ret_port: int
    user: str
    master: subprocess.Popen[bytes] | None = None
    minions: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def master_conf(self) -> Path:
        return self.root / "master" / "conf"

    @property
    def accepted_dir(self) -> Path:
        return self.root / "master" / "pki" / "minions"

    def ids(self) -> list[str]:
        return [f"minion-{i}" for i in range(self.size)]

    def configure(self) -> None:
        m = self.root / "master"
        self.master_conf.mkdir(parents=True)
        for d in ("pki", "cache", "sock", "log", "run", "srv/salt", "srv/pillar"):
            (m / d).mkdir(parents=True, exist_ok=True)
        (self.master_conf / "master").write_text(yaml_block({
            "interface": "127.0.0.1", "publish_port": self.publish_port,
            "ret_port": self.ret_port, "auto_accept": True, "user": self.user,
            "root_dir": str(m), "pki_dir": str(m / "pki"), "cachedir": str(m / "cache"),
            "sock_dir": str(m / "sock"), "pidfile": str(m / "run" / "salt-master.pid"),
            "log_file": str(m / "log" / "master"), "key_logfile": str(m / "log" / "key"),
            "log_level_logfile": "warning",
            "file_roots": {"base": [str(m / "srv" / "salt")]},
            "pillar_roots": {"base": [str(m / "srv" / "pillar")]}}))
        keys = self.root / "keys"
        # salt-key writes the pair and may then crash (a known bug): the keys are usable.
        subprocess.run([str(self.bin / "salt-key"), "-c", str(self.master_conf),
                        "--gen-keys=minion", f"--gen-keys-dir={keys}"],
                       capture_output=True, env=clean_env(), timeout=120)
        pem, pub = keys / "minion.pem", keys / "minion.pub"
        if not (pem.is_file() and pub.is_file()):
            raise SystemExit(f"salt-key --gen-keys wrote no key pair in {keys}")
        for mid in self.ids():
            d = self.root / "minions" / mid
            (d / "conf").mkdir(parents=True)
            (d / "pki").mkdir()
            shutil.copy(pem, d / "pki" / "minion.pem")
            shutil.copy(pub, d / "pki" / "minion.pub")
            (d / "pki" / "minion.pem").chmod(0o400)
            (d / "conf" / "minion").write_text(yaml_block({
                "id": mid, "master": "127.0.0.1", "master_port": self.ret_port,
                "publish_port": self.publish_port, "multiprocessing": False,
                "user": self.user, "root_dir": str(d), "pki_dir": str(d / "pki"),
                "cachedir": str(d / "cache"), "sock_dir": str(d / "sock"),
                "pidfile": str(d / "salt-minion.pid"), "log_file": str(d / "minion.log"),
                "log_level_logfile": "warning",
                "file_roots": {"base": [str(d / "srv" / "salt")]},
                "pillar_roots": {"base": [str(d / "srv" / "pillar")]}}))

    def _spawn(self, argv: list[str], logfile: Path) -> subprocess.Popen[bytes]:
        with logfile.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=clean_env(),
                                    start_new_session=True)

    def start(self, ready_timeout: float, batch: int) -> dict[str, float]:
        for port in (self.publish_port, self.ret_port):
            if not port_free(port):
                raise SystemExit(f"port {port} on 127.0.0.1 is in use: pick others with "
                                 "--publish-port/--ret-port")
        master = self.root / "master"
        self.master = self._spawn([str(self.bin / "salt-master"), "-c", str(self.master_conf),
                                   "-l", "warning"], master / "log" / "console")

        def master_up() -> bool:
            if self.master is not None and self.master.poll() is not None:
                raise SystemExit("salt-master exited:\n"
                                 + (master / "log" / "console").read_text()[-4000:])
            return port_open(self.publish_port) and port_open(self.ret_port)

        t_master = wait_until("salt-master listening", master_up, 120)
        log(f"salt-master up in {t_master:.1f} s; starting {self.size} minions, "
            f"{batch} at a time")
        start = time.monotonic()
        ids = self.ids()
        for first in range(0, self.size, batch):
            group = ids[first:first + batch]
            for mid in group:
                d = self.root / "minions" / mid
                self.minions.append(self._spawn([str(self.bin / "salt-minion"), "-c",
                                                 str(d / "conf"), "-l", "warning"],
                                                d / "console.log"))
            self._wait_answering(group, start, ready_timeout)
            log(f"  {first + len(group)} of {self.size} minions answer test.ping after "
                f"{time.monotonic() - start:.0f} s")
        t_started = time.monotonic() - start
        self._wait_answering(ids, start, ready_timeout)
        t_ready = time.monotonic() - start
        log(f"all {self.size} minions answer after {t_ready:.0f} s")
        return {"master_listening_s": t_master, "minions_started_s": t_started,
                "all_answering_s": t_ready, "start_batch": batch}

    def _wait_answering(self, group: list[str], start: float, ready_timeout: float) -> None:
        """Wait until every minion of ``group`` is accepted and answers test.ping."""
        accepted = self.accepted_dir

        def keys_accepted() -> bool:
            dead = [p for p in self.minions if p.poll() is not None]
            if dead:
                raise SystemExit(f"{len(dead)} salt-minion process(es) exited")
            return accepted.is_dir() and set(group) <= set(os.listdir(accepted))

        wait_until("minion keys accepted", keys_accepted,
                   ready_timeout - (time.monotonic() - start), interval=0.5)
        target = None if len(group) == self.size else group
        # The CLI returns once all answer; a short --timeout only adds find_job storms.
        timeout = max(60.0, 1.5 * len(self.minions))
        while True:
            replies, _ = self.salt("test.ping", timeout=timeout, target=target)
            missing = [m for m in group if replies.get(m) is not True]
            if not missing:
                return
            if time.monotonic() - start > ready_timeout:
                raise SystemExit(f"{len(missing)} of {self.size} minions do not answer "
                                 f"test.ping after {ready_timeout:.0f} s")
            log(f"  waiting for {len(missing)} minion(s) to answer test.ping")

    def salt(self, *fun: str, timeout: float,
             target: list[str] | None = None) -> tuple[dict[str, Any], float]:
        """One ``salt '*' ...`` CLI call: its parsed replies and its wall time."""
        where = ["-L", ",".join(target)] if target else ["*"]
        argv = [str(self.bin / "salt"), "-c", str(self.master_conf), *where, *fun,
                "--timeout", str(int(timeout)), "--out", "json", "--static"]
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=clean_env(),
                                timeout=timeout + 600)
        elapsed = time.perf_counter() - start
        try:
            replies = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            replies = {}
        if not isinstance(replies, dict):
            replies = {}
        return replies, elapsed

    def memory(self) -> dict[str, Any]:
        assert self.master is not None
        return {"master": one_memory(self.master.pid),
                "minion": fleet_memory([p.pid for p in self.minions])}

    def stop(self) -> None:
        stop_groups(self.minions)
        if self.master is not None:
            stop_groups([self.master])


def salt_phase(args: argparse.Namespace, salt_bin: Path, root: Path,
               size: int) -> dict[str, Any]:
    fleet = SaltFleet(salt_bin, root / f"salt-{size}", size, args.publish_port,
                      args.ret_port, args.salt_user)
    fleet.configure()
    want = set(fleet.ids())
    timeout = args.salt_timeout or max(60.0, 1.5 * size)
    out: dict[str, Any] = {"cli_timeout_s": timeout}
    try:
        out["bring_up"] = fleet.start(args.ready_timeout, args.minion_batch)
        assert fleet.master is not None
        out["idle_cpu_cores"] = settle({"master": [fleet.master.pid],
                                        "minions": [p.pid for p in fleet.minions]}, args)
        checks: dict[str, Callable[[Any], bool]] = {
            "test.ping": lambda v: v is True,
            "cmd.run hostname": lambda v: isinstance(v, str) and v.strip() == HOSTNAME}
        for name, check in checks.items():
            runs = []
            for _ in range(args.repeat):
                replies, elapsed = fleet.salt(*name.split(), timeout=timeout)
                ok = sum(1 for k, v in replies.items() if k in want and check(v))
                runs.append({"seconds": elapsed, "answered": len(want & set(replies)),
                             "ok": ok})
                log(f"salt '*' {name}: {elapsed:.2f} s, {ok}/{size} ok")
            out[name] = summarize(runs, size)
        out["loadavg_after_runs"] = os.getloadavg()
        out["memory"] = fleet.memory()
    finally:
        fleet.stop()
    return out


# --------------------------------------------------------------------------- tether


def tether_phase(args: argparse.Namespace, root: Path, size: int) -> dict[str, Any]:
    base = root / f"tether-{size}"
    base.mkdir()
    # The server's own defaults (150 s keepalive interval, 30 s timeout), not the tests'.
    server = Server(base / "data", keepalive=(150.0, 30.0))
    agents: list[Agent] = []
    out: dict[str, Any] = {}
    try:
        server.start()
        start = time.monotonic()
        act_id, code = server.activation("--limit", str(size))
        agents = [Agent(server, base / f"agent{i}") for i in range(size)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda a: a.register(act_id, code), agents))
        t_registered = time.monotonic() - start
        log(f"{size} tether agents registered in {t_registered:.0f} s; starting them")
        for a in agents:
            a.start()
        want = {a.node_id for a in agents}

        def all_online() -> bool:
            dead = [a for a in agents if a.proc is not None and a.proc.poll() is not None]
            if dead:
                raise SystemExit(f"{len(dead)} tether agent(s) exited:\n"
                                 + (dead[0].output.text() if dead[0].output else ""))
            online = {n["node_id"] for n in
                      server.cli("nodes", "list", "--ping-status", "Online")}
            return want <= online

        t_online = wait_until(f"{size} tether agents Online", all_online,
                              args.ready_timeout, interval=1.0)
        out["bring_up"] = {"registered_s": t_registered, "all_online_s": t_registered
                           + t_online}
        log(f"all {size} tether agents Online after {t_registered + t_online:.0f} s")
        assert server.proc is not None
        out["idle_cpu_cores"] = settle({"server": [server.proc.pid],
                                        "agents": [a.proc.pid for a in agents
                                                   if a.proc is not None]}, args)
        for name, script in (("run hostname", "hostname"), ("run true", "true")):
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = server.cli_raw("run", "--target", "all", "--json", "--", script,
                                        timeout=600)
                elapsed = time.perf_counter() - t0
                invs = []
                with contextlib.suppress(json.JSONDecodeError):
                    invs = json.loads(result.stdout)["invocations"]
                ok = sum(1 for i in invs if i["node_id"] in want and i["status"] == "Success"
                         and (script != "hostname" or i["stdout"].strip() == HOSTNAME))
                runs.append({"seconds": elapsed, "answered": len(invs), "ok": ok,
                             "exit": result.returncode})
                log(f"tether {name}: {elapsed:.2f} s, {ok}/{size} ok")
            out[name] = summarize(runs, size)
        out["loadavg_after_runs"] = os.getloadavg()
        assert server.proc is not None
        out["memory"] = {"server": one_memory(server.proc.pid),
                         "agent": fleet_memory([a.proc.pid for a in agents
                                                if a.proc is not None])}
    finally:
        stop_groups([a.proc for a in agents if a.proc is not None])
        if server.proc is not None:
            stop_groups([server.proc])
    return out


# --------------------------------------------------------------------------- report


def summarize(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    return {"runs": runs, "median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "all_answered": all(r["ok"] == size for r in runs)}


def fmt_time(entry: dict[str, Any]) -> str:
    mark = "" if entry["all_answered"] else " (incomplete)"
    return f"{entry['median_s']:.2f}{mark}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| N | salt `test.ping` (s) | salt `cmd.run hostname` (s) "
        "| tether `run -- hostname` (s) | tether `run -- true` (s) "
        "| ratio cmd.run / run hostname | ratio test.ping / run true "
        "| salt-master RSS (MiB) | per minion RSS (MiB) | salt RSS per device (MiB) "
        "| tether server RSS (MiB) | per agent RSS (MiB) | tether RSS per device (MiB) "
        "| RSS per device ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, t, n = r["salt"], r["tether"], r["n"]
        master = s["memory"]["master"]["rss_mib"]
        minion = s["memory"]["minion"]["rss_mib_mean"]
        server = t["memory"]["server"]["rss_mib"]
        agent = t["memory"]["agent"]["rss_mib_mean"]
        salt_dev, tether_dev = master / n + minion, server / n + agent
        lines.append(
            f"| {n} | {fmt_time(s['test.ping'])} | {fmt_time(s['cmd.run hostname'])} "
            f"| {fmt_time(t['run hostname'])} | {fmt_time(t['run true'])} "
            f"| {s['cmd.run hostname']['median_s'] / t['run hostname']['median_s']:.1f}x "
            f"| {s['test.ping']['median_s'] / t['run true']['median_s']:.1f}x "
            f"| {master:.0f} ({s['memory']['master']['processes']} proc) | {minion:.1f} "
            f"| {salt_dev:.1f} | {server:.0f} | {agent:.1f} | {tether_dev:.1f} "
            f"| {salt_dev / tether_dev:.1f}x |")
    return "\n".join(lines)


def bring_up_table(results: list[dict[str, Any]]) -> str:
    lines = ["| N | salt: all minions answering (s) | tether: all agents Online (s) "
             "| idle CPU, salt master + all minions (cores) "
             "| idle CPU, tether server + all agents (cores) "
             "| salt-master PSS (MiB) | per minion PSS (MiB) "
             "| per minion, largest process RSS (MiB) | tether server PSS (MiB) "
             "| per agent PSS (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, t = r["salt"], r["tether"]
        sc, tc = s["idle_cpu_cores"], t["idle_cpu_cores"]
        lines.append(
            f"| {r['n']} | {s['bring_up']['all_answering_s']:.0f} "
            f"| {t['bring_up']['all_online_s']:.0f} "
            f"| {sc['master']:.2f} + {sc['minions']:.2f} (others {sc['others']:.2f}) "
            f"| {tc['server']:.2f} + {tc['agents']:.2f} (others {tc['others']:.2f}) "
            f"| {s['memory']['master']['pss_mib']:.0f} "
            f"| {s['memory']['minion']['pss_mib_mean']:.1f} "
            f"| {s['memory']['minion']['largest_process_rss_mib_mean']:.1f} "
            f"| {t['memory']['server']['pss_mib']:.0f} "
            f"| {t['memory']['agent']['pss_mib_mean']:.1f} |")
    return "\n".join(lines)


def salt_version(salt_bin: Path) -> str:
    result = subprocess.run([str(salt_bin / "salt"), "--version"], capture_output=True,
                            text=True, env=clean_env())
    return result.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="50,200",
                   help="comma-separated fleet sizes (default 50,200)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per command (median)")
    p.add_argument("--json", default="salt_compare.json", metavar="PATH",
                   help="where to write all figures (default ./salt_compare.json)")
    p.add_argument("--publish-port", type=int, default=14505)
    p.add_argument("--ret-port", type=int, default=14506)
    p.add_argument("--salt-python", default=SALT_PYTHON,
                   help="Python that Salt's venv is made with (3.11)")
    p.add_argument("--salt-version", default=SALT_VERSION)
    p.add_argument("--salt-venv", metavar="DIR",
                   help="reuse an existing venv with salt instead of installing one")
    p.add_argument("--salt-user", default=None,
                   help="the masters' and minions' `user` (default: the current user)")
    p.add_argument("--minion-batch", type=int, default=25,
                   help="salt-minions started at once; the next batch starts when these "
                        "all answer test.ping (default 25)")
    p.add_argument("--salt-timeout", type=float, default=None,
                   help="salt CLI --timeout (default max(60, 1.5 N) s: the CLI returns as "
                        "soon as every minion answered, so this only bounds a failure)")
    p.add_argument("--idle-window", type=float, default=10,
                   help="seconds of CPU measured with each fleet idle, which also lets "
                        "the fleet settle before the timed runs (default 10)")
    p.add_argument("--quiet-cores", type=float, default=0.3,
                   help="before timing, wait for other processes to use fewer cores "
                        "than this (default 0.3) ...")
    p.add_argument("--quiet-wait", type=float, default=300,
                   help="... for at most this many seconds (default 300)")
    p.add_argument("--ready-timeout", type=float, default=1200,
                   help="seconds for a fleet to come up (default 1200)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp folder (logs, configs, Salt's venv)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.salt_user is None:
        import pwd
        args.salt_user = pwd.getpwuid(os.getuid()).pw_name

    # A SIGTERM to the benchmark unwinds through the finally blocks that stop the fleets.
    def on_signal(signum: int, _frame: Any) -> None:
        log(f"received signal {signum}: stopping the fleets")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="salt_compare-"))
    log(f"temp folder {root}")
    results: list[dict[str, Any]] = []
    started = time.time()
    try:
        if args.salt_venv:
            salt_bin = Path(args.salt_venv) / "bin"
        else:
            salt_bin = install_salt(root, args.salt_python, args.salt_version)
        version = salt_version(salt_bin)
        log(version)
        for size in sizes:
            log(f"=== N = {size}: Salt")
            salt = salt_phase(args, salt_bin, root, size)
            log(f"=== N = {size}: tether")
            tether = tether_phase(args, root, size)
            results.append({"n": size, "salt": salt, "tether": tether})
            # Partial results survive a later failure.
            write_json(args, results, version, started)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if results:  # also the sizes finished before a failure
            print(table(results))
            print()
            print(bring_up_table(results))
            print(f"\nJSON: {args.json}")


def write_json(args: argparse.Namespace, results: list[dict[str, Any]], version: str,
               started: float) -> None:
    meta = {"salt": version, "tether_python": platform.python_version(),
            "host": HOSTNAME, "cpus": os.cpu_count(),
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "argv": sys.argv, "repeat": args.repeat,
            "publish_port": args.publish_port, "ret_port": args.ret_port,
            "notes": "times: wall time of one CLI process, median of `repeat` runs; "
                     "memory: VmRSS and PSS summed over each process tree, in MiB; "
                     "per device = control plane / N + one device process tree"}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2)
                               + "\n")


if __name__ == "__main__":
    main()
