"""A field-like test network in namespaces: a device whose only link is ``ppp0``.

::

    device ns                 carrier ns                          server ns
    lo, ppp0  <--tunlink-->  ppp-dev  |  to-server  <--veth-->    eth0
    10.64.0.2                10.64.0.1   10.65.0.2                10.65.0.1
    default via ppp0         ip_forward=1, no NAT                 tether.carrier.internal
    resolver 10.64.0.1       DNS: private zone (dnszone.py)

Why this shape: in the field the device's only address is on a point-to-point
link from an LTE dongle, the operator's server sits behind the carrier, and the
server sees the device's own address. The kernel here has no ppp, so the link
is a pair of tun devices joined by ``tunlink.py``, which also lets tests count,
cut and restore it, and shape it like a cellular link (``shape``: latency,
jitter, loss, a bandwidth cap), repeatably when the network has a ``seed``.
Nothing has a route outside these namespaces. The device resolves the server's
name by DNS, as it would against a private zone: its own
``/etc/netns/<ns>/resolv.conf`` (``ip netns exec`` bind-mounts it over
``/etc/resolv.conf``) names the carrier's resolver at the far end of ``ppp0``,
where ``dnszone.py`` serves the zone; so a cut link also cuts name resolution.

Everything created is removed by ``close()``, also after a failed test; the
relay exits by itself if the harness dies (its stdin closes).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

TUNLINK = Path(__file__).with_name("tunlink.py")
DNSZONE = Path(__file__).with_name("dnszone.py")
DEVICE_ADDR = "10.64.0.2"
CARRIER_PPP_ADDR = "10.64.0.1"
CARRIER_LAN_ADDR = "10.65.0.2"
SERVER_ADDR = "10.65.0.1"
SERVER_NAME = "tether.carrier.internal"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# The relay's end A is the device: its a_to_b pipe carries what the device sends.
LINK_DIRECTIONS = {"both": "both", "uplink": "a_to_b", "downlink": "b_to_a"}


class NetnsUnavailable(RuntimeError):
    """This host cannot build the network (no netns or no tun): skip, do not fail."""


def unavailable_reason() -> str | None:
    """Why the network cannot be built here, checked before touching anything."""
    if os.geteuid() != 0:
        return "needs root for ip netns and /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without proxy settings, plus ``extra``.

    No proxy is reachable from the test network, and one would hide the path
    under test anyway.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(extra)
    return env


class OutputWatcher:
    """Drains a child's text output in a thread and lets a test wait for a line.

    Draining keeps a chatty server from blocking on a full pipe; waiting for a
    line is how tests synchronise on readiness instead of sleeping.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._eof = False
        self.stream = stream
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:  # closed here, by its only reader, once the child is gone
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def wait_for(self, *needles: str, timeout: float) -> str:
        """The first line containing any of ``needles``; TimeoutError with the output."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if any(n in line for n in needles):
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "output ended" if self._eof else f"not within {timeout}s"
                    raise TimeoutError(f"{needles!r}: {why}; output:\n{self.text()}")
                self._cond.wait(remaining)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class PppNetwork:
    """Context manager owning the namespaces, the relay and the processes in them."""

    _serial = itertools.count()

    def __init__(self, seed: int | None = None) -> None:
        """``seed`` makes the link's random loss and jitter repeatable."""
        n = next(self._serial)
        self.seed = seed
        tag = f"{os.getpid()}-{n}"  # the pid keeps parallel runs apart
        self.device_ns = f"tether-dev-{tag}"
        self.carrier_ns = f"tether-car-{tag}"
        self.server_ns = f"tether-srv-{tag}"
        self.device_addr, self.server_addr, self.server_name = (
            DEVICE_ADDR, SERVER_ADDR, SERVER_NAME)
        # Created in the root namespace first, so unique there and within IFNAMSIZ.
        self._tun_names = (f"td{os.getpid():x}n{n}", f"tc{os.getpid():x}n{n}")
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._watchers: list[OutputWatcher] = []
        self._relay: subprocess.Popen[str] | None = None
        self._dns: subprocess.Popen[str] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="tether-netns-"))
        self._control_path = str(self._tmp / "link.sock")

    def __enter__(self) -> PppNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running things inside --------------------------------------------

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in ``ns``; it and its process group die in ``close()``."""
        kw["start_new_session"] = True
        proc = subprocess.Popen(self.exec_argv(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    def spawn(self, ns: str, argv: Sequence[str],
              **kw: Any) -> tuple[subprocess.Popen[str], OutputWatcher]:
        """``popen`` with stdout and stderr merged and watched: for servers and agents."""
        proc = self.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)
        assert proc.stdout is not None
        watcher = OutputWatcher(proc.stdout)
        self._watchers.append(watcher)
        return proc, watcher

    def run(self, ns: str, argv: Sequence[str], timeout: float = 60,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        return subprocess.run(self.exec_argv(ns, argv), timeout=timeout, check=False, **kw)

    # -- the link -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Relay counters; uplink is device -> carrier, downlink the other way.

        Each direction: ``packets`` and ``bytes`` delivered (whole IP packets),
        ``dropped`` with ``dropped_by`` reason (cut, loss, queue, write),
        ``queued`` (in flight now) and its ``shape`` settings.
        """
        raw = self._control("stats")
        return {"cut": raw["cut"], "uplink": raw["a_to_b"], "downlink": raw["b_to_a"]}

    def reset_stats(self) -> None:
        """Zero every counter (and the trace), both ways; effective on return."""
        self._control("reset-stats")

    def shape(self, latency_ms: float | None = None, jitter_ms: float | None = None,
              loss: float | None = None, rate_kbit: float | None = None,
              queue_bytes: int | None = None, direction: str = "both") -> None:
        """Make the link behave like a cellular one; what is not given stays as it is.

        ``latency_ms`` is the one-way delay of each packet, uniform within
        ``latency_ms +- jitter_ms`` (never reordered); ``loss`` a percentage of
        packets dropped at random; ``rate_kbit`` a cap in kbit/s (1000 bit/s)
        with a queue of ``queue_bytes`` (tunlink's default if not given), beyond
        which packets drop. 0 turns a setting off. ``direction`` is ``both``,
        ``uplink`` (device -> carrier) or ``downlink``. Effective on return, for
        packets entering the link from then on.
        """
        where = LINK_DIRECTIONS[direction]
        if jitter_ms is not None and latency_ms is None:
            raise ValueError("jitter_ms needs latency_ms")
        if queue_bytes is not None and rate_kbit is None:
            raise ValueError("queue_bytes needs rate_kbit")
        if latency_ms is not None:
            self._control(f"latency {where} {latency_ms} {jitter_ms or 0}")
        if loss is not None:
            self._control(f"loss {where} {loss}")
        if rate_kbit is not None:
            queue = "" if queue_bytes is None else f" {queue_bytes}"
            self._control(f"rate {where} {rate_kbit}{queue}")

    def unshape(self, direction: str = "both") -> None:
        """No latency, loss or rate cap any more (a cut stays a cut)."""
        self._control(f"clear {LINK_DIRECTIONS[direction]}")

    def reseed(self, seed: int) -> None:
        """Restart the link's random draws (loss, jitter) from ``seed``."""
        self._control(f"seed {seed}")

    def trace(self, on: bool = True, max_packets: int = 10000) -> None:
        """Start (afresh) or stop recording each packet the link delivers."""
        self._control(f"trace on {max_packets}" if on else "trace off")

    def traced(self) -> list[dict[str, Any]]:
        """Packets delivered while tracing, oldest first: ``t`` (monotonic s),
        ``dir`` (``uplink``/``downlink``), ``len`` (IP bytes), ``proto`` and, for
        TCP, ``flags`` (e.g. ``"PA"``) and ``payload`` bytes."""
        names = {v: k for k, v in LINK_DIRECTIONS.items()}
        packets: list[dict[str, Any]] = self._control("trace dump")["packets"]
        return [{**p, "dir": names[p["dir"]]} for p in packets]

    def cut(self) -> None:
        """Drop every packet both ways, like losing the radio; effective on return."""
        self._control("cut")

    def restore(self) -> None:
        self._control("restore")

    def _control(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self._control_path)
            sock.sendall(command.encode() + b"\n")
            with sock.makefile() as replies:
                reply: dict[str, Any] = json.loads(replies.readline())
        if "error" in reply:
            raise RuntimeError(f"tunlink {command!r}: {reply['error']}")
        return reply

    # -- setup and teardown -------------------------------------------------

    def start(self) -> None:
        for ns in (self.device_ns, self.carrier_ns, self.server_ns):
            try:
                _ip("netns", "add", ns)
            except RuntimeError as exc:
                raise NetnsUnavailable(str(exc)) from exc
            self._namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        self._start_relay()
        self._configure_ppp()
        self._configure_carrier_lan()
        self._write_device_etc()
        self.start_dns()

    def _start_relay(self) -> None:
        tun_dev, tun_car = self._tun_names
        self._relay = subprocess.Popen(
            [sys.executable, str(TUNLINK), "--a", tun_dev, "--b", tun_car,
             "--control", self._control_path,
             *(() if self.seed is None else ("--seed", str(self.seed)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        assert self._relay.stdout is not None
        watcher = OutputWatcher(self._relay.stdout)
        self._watchers.append(watcher)
        line = watcher.wait_for("ready", "unavailable:", timeout=10)
        if line.startswith("unavailable:"):
            raise NetnsUnavailable(line)

    def _configure_ppp(self) -> None:
        """Both tun ends: moved, renamed, IPv4-only (as pppd without +ipv6), up."""
        tun_dev, tun_car = self._tun_names
        for tun, ns, name, local, peer in (
                (tun_dev, self.device_ns, "ppp0", DEVICE_ADDR, CARRIER_PPP_ADDR),
                (tun_car, self.carrier_ns, "ppp-dev", CARRIER_PPP_ADDR, DEVICE_ADDR)):
            _ip("link", "set", tun, "netns", ns)
            _ip("-n", ns, "link", "set", tun, "name", name)
            # Also keeps router solicitations off the link, so counters show only tests.
            _sysctl(ns, f"net.ipv6.conf.{name}.disable_ipv6=1")
            _ip("-n", ns, "addr", "add", local, "peer", peer, "dev", name)
            _ip("-n", ns, "link", "set", name, "up")
        _ip("-n", self.device_ns, "route", "add", "default", "dev", "ppp0")

    def _configure_carrier_lan(self) -> None:
        car, srv = self.carrier_ns, self.server_ns
        _ip("-n", car, "link", "add", "to-server", "type", "veth",
            "peer", "name", "eth0", "netns", srv)
        _ip("-n", car, "addr", "add", f"{CARRIER_LAN_ADDR}/24", "dev", "to-server")
        _ip("-n", srv, "addr", "add", f"{SERVER_ADDR}/24", "dev", "eth0")
        _ip("-n", car, "link", "set", "to-server", "up")
        _ip("-n", srv, "link", "set", "eth0", "up")
        _ip("-n", srv, "route", "add", "10.64.0.0/24", "via", CARRIER_LAN_ADDR)
        _sysctl(car, "net.ipv4.ip_forward=1")

    def _write_device_etc(self) -> None:
        """The device's own resolver files: the server's name is only in DNS.

        One-second timeouts, two tries: a lookup over a cut link fails within
        seconds, as a short-timeout resolver on a device would.
        """
        etc = Path("/etc/netns") / self.device_ns
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {socket.gethostname()}\n")
        (etc / "resolv.conf").write_text(
            f"nameserver {CARRIER_PPP_ADDR}\noptions timeout:1 attempts:2\n")

    def start_dns(self) -> None:
        """The carrier's resolver serving the private zone with the server's name."""
        if self._dns is not None and self._dns.poll() is None:
            return
        self._dns, watcher = self.spawn(self.carrier_ns, [
            sys.executable, str(DNSZONE), "--listen", CARRIER_PPP_ADDR,
            "--record", f"{SERVER_NAME}={SERVER_ADDR}"])
        watcher.wait_for("ready", timeout=10)

    def stop_dns(self) -> None:
        """The resolver is down: the carrier answers port unreachable, and lookups
        fail at once ("no nameserver answered")."""
        if self._dns is not None:
            _stop(self._dns, lambda sig, pid=self._dns.pid: os.killpg(pid, sig))
            self._dns = None

    def close(self) -> None:
        """Undo everything, each step on its own so one failure does not leak the rest."""
        errors: list[str] = []
        for proc in reversed(self._procs):
            _stop(proc, lambda sig, pid=proc.pid: os.killpg(pid, sig))
        if self._relay is not None:  # EOF on stdin is its cue to stop
            _stop(self._relay, lambda sig, r=self._relay: _close_or_kill(r, sig))
        for watcher in self._watchers:  # each closes its stream once it reads EOF
            watcher.join(timeout=5)
        for proc in self._procs:  # pipes of popen() callers who did not close them
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None and not any(w.stream is stream for w in self._watchers):
                    stream.close()
        for ns in self._namespaces:
            try:
                _ip("netns", "del", ns)
            except RuntimeError as exc:
                errors.append(str(exc))
        shutil.rmtree(Path("/etc/netns") / self.device_ns, ignore_errors=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._procs, self._watchers, self._relay, self._namespaces = [], [], None, []
        if errors:
            raise RuntimeError("PppNetwork teardown: " + "; ".join(errors))


def _stop(proc: subprocess.Popen[Any], send: Callable[[int], object]) -> None:
    """``send(SIGTERM)``, give it 5 s, then ``send(SIGKILL)`` (stragglers in the group too)."""
    with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:
            send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        send(signal.SIGKILL)
    proc.wait()


def _close_or_kill(proc: subprocess.Popen[str], sig: int) -> None:
    if sig != signal.SIGTERM:
        proc.kill()
    elif proc.stdin is not None:
        proc.stdin.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _sysctl(ns: str, setting: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sysctl {setting} in {ns}: {result.stderr.strip()}")
