"""A userspace point-to-point link between two tun devices, for the netns tests.

Why userspace and not a veth pair: the device end has to look like the field's
``ppp0`` (POINTOPOINT, NOARP, no link-layer address), and the link itself has
to be under the test's control: it counts what crosses it, can be cut and
restored, and behaves like a cellular bearer on command (latency and jitter,
random loss, a bandwidth cap with a bounded queue) without needing tc/netem in
the test kernel.

    python tunlink.py --a tdev123 --b tsrv123 --control /tmp/x/control.sock [--seed 7]

creates both tun devices (IFF_TUN | IFF_NO_PI) in the caller's namespace,
binds the control socket, then prints ``ready`` (or ``unavailable: why`` and
exits 2). The harness then moves the devices into their namespaces; the open
descriptors follow them. ``--a-fd``/``--b-fd`` take already-open tun
descriptors instead of names. The relay stops when stdin reaches EOF, so it
never outlives the harness that started it.

Control: one command per line on the unix socket, one JSON line back
(``{"error": ...}`` for a bad command). Shaping commands take an optional
direction first (``a_to_b``, ``b_to_a`` or ``both``, the default)::

    stats                          counters and settings of each direction
    reset-stats                    zero the counters (and the trace)
    cut | restore                  drop everything both ways / stop doing so
    latency [DIR] MS [JITTER_MS]   one-way delay, uniform in MS +- JITTER_MS
    loss [DIR] PERCENT             random drop of that share of packets
    rate [DIR] KBIT [QUEUE_BYTES]  token-bucket cap (1 kbit = 1000 bit/s) with a
                                   queue; drop when the queue would pass QUEUE_BYTES
    clear [DIR]                    latency, loss and rate back to none
    seed N                         reseed the random source of loss and jitter
    trace on [MAX] | off | dump    record delivered packets (time, size, TCP flags)
    quit

Bytes are whole IP packets, what a carrier bills. A packet's life: dropped if
the link is cut, then lost at random, then queued behind the rate limit (or
dropped if the queue is full), then delayed; jitter never reorders, because a
cellular bearer delivers in order (a packet waits behind an earlier, slower one).
Stdlib only, so it runs under whatever interpreter runs the tests.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import random
import selectors
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536
BURST = 64  # packets read per wake-up, so one busy direction cannot starve the other
DEFAULT_QUEUE_BYTES = 64 * 1024  # the rate limiter's queue bound
TOKEN_BURST_BYTES = 1500  # what the bucket may hold: one full-size packet, no more
MAX_QUEUED_PACKETS = 10000  # a hard bound on memory whatever the settings
DIRECTIONS = ("a_to_b", "b_to_a")
DROP_REASONS = ("cut", "loss", "queue", "write")
TCP_FLAGS = "FSRPAUEC"  # bit 0 first
TRACE_HEAD = 120  # bytes kept of each traced packet: IPv4 and TCP headers with options


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def summarize(packet: bytes, size: int) -> dict[str, object]:
    """Protocol, TCP flags and transport payload size of an IPv4 packet of ``size`` bytes
    whose headers are ``packet``, for traces."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return {"proto": "other"}
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    if proto == 6 and len(packet) >= ihl + 20:
        flags_byte = packet[ihl + 13]
        flags = "".join(f for i, f in enumerate(TCP_FLAGS) if flags_byte >> i & 1)
        offset = (packet[ihl + 12] >> 4) * 4
        return {"proto": "tcp", "flags": flags, "payload": size - ihl - offset}
    if proto == 17:
        return {"proto": "udp", "payload": size - ihl - 8}
    return {"proto": {1: "icmp"}.get(proto, str(proto))}


class Pipe:
    """One direction of the link; decides what happens to each packet.

    Every packet enters through ``offer``, which either drops it or gives it a
    release time, and leaves through ``flush`` once that time has come; the
    loop sleeps until ``next_due``. Release times never decrease, so the queue
    stays in arrival order. ``now`` is always passed in, so the schedule can be
    tested with a made-up clock.
    """

    def __init__(self, src: int, dst: int, seed: int | str | None = None,
                 name: str = "") -> None:
        self.src, self.dst, self.name = src, dst, name
        self.cut = False
        self.rng = random.Random(seed)
        self.latency = self.jitter = 0.0  # seconds
        self.loss = 0.0  # probability
        self.rate = 0.0  # bytes per second; 0 is no cap
        self.queue_limit = DEFAULT_QUEUE_BYTES
        self.tokens = float(TOKEN_BURST_BYTES)  # below zero: bytes waiting for the cap
        self.tokens_at = 0.0
        self.last_release = 0.0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.trace: collections.deque[tuple[float, bytes, int]] | None = None
        self.reset_stats()

    # -- packets --------------------------------------------------------------

    def offer(self, packet: bytes, now: float) -> None:
        if self.cut:
            self._drop("cut")
            return
        if len(self.queue) >= MAX_QUEUED_PACKETS:
            self._drop("queue")
            return
        if self.loss and self.rng.random() < self.loss:
            self._drop("loss")
            return
        sent = now
        if self.rate:
            self._refill(now)
            if len(packet) - self.tokens > self.queue_limit:
                self._drop("queue")
                return
            self.tokens -= len(packet)
            sent = now + max(0.0, -self.tokens) / self.rate  # its last byte is on the air
        delay = self.latency
        if self.jitter:
            delay += self.rng.uniform(-self.jitter, self.jitter)
        release = max(sent + max(0.0, delay), self.last_release)
        self.last_release = release
        self.queue.append((release, packet))

    def _refill(self, now: float) -> None:
        self.tokens = min(float(TOKEN_BURST_BYTES),
                          self.tokens + (now - self.tokens_at) * self.rate)
        self.tokens_at = now

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.dropped_by[reason] += 1

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def flush(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            packet = self.queue.popleft()[1]
            try:
                os.write(self.dst, packet)
            except OSError:  # peer interface down or its queue full: the link loses it
                self._drop("write")
            else:
                self.packets += 1
                self.bytes += len(packet)
                if self.trace is not None:  # headers only: a summary is built on dump
                    self.trace.append((now, packet[:TRACE_HEAD], len(packet)))

    # -- settings -------------------------------------------------------------

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for _ in self.queue:
                self._drop("cut")
            self.queue.clear()
            self.tokens = max(self.tokens, 0.0)  # what waited for the cap is gone
            self.last_release = 0.0

    def set_latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        self.latency, self.jitter = ms / 1000, jitter_ms / 1000

    def set_loss(self, percent: float) -> None:
        self.loss = percent / 100

    def set_rate(self, kbit: float, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 now: float | None = None) -> None:
        self.rate = kbit * 1000 / 8
        self.queue_limit = queue_bytes
        self.tokens = float(TOKEN_BURST_BYTES)
        self.tokens_at = time.monotonic() if now is None else now

    def reset_stats(self) -> None:
        self.packets = self.bytes = self.dropped = 0
        self.dropped_by = dict.fromkeys(DROP_REASONS, 0)
        if self.trace is not None:
            self.trace.clear()

    def stats(self) -> dict[str, object]:
        return {"packets": self.packets, "bytes": self.bytes, "dropped": self.dropped,
                "dropped_by": dict(self.dropped_by), "queued": len(self.queue),
                "shape": self.shape()}

    def shape(self) -> dict[str, float]:
        return {"latency_ms": self.latency * 1000, "jitter_ms": self.jitter * 1000,
                "loss": self.loss * 100, "rate_kbit": self.rate * 8 / 1000,
                "queue_bytes": self.queue_limit}


class CommandError(ValueError):
    pass


def _number(text: str, what: str, high: float = float("inf")) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, not {text!r}") from None
    if not 0 <= value <= high:  # also refuses nan
        raise CommandError(f"{what} must be within 0..{high:g}, not {text}")
    return value


class Link:
    """The relay loop: two pipes, a control socket, and stdin as a lifeline."""

    COMMANDS = ("stats", "reset-stats", "cut", "restore", "latency", "loss", "rate", "clear",
                "seed", "trace", "quit")

    def __init__(self, a: int, b: int, control: socket.socket, seed: int | None = None) -> None:
        self.pipes = {"a_to_b": Pipe(a, b, name="a_to_b"), "b_to_a": Pipe(b, a, name="b_to_a")}
        self.reseed(seed)
        self.control = control
        self.sel = selectors.DefaultSelector()
        self.running = True
        for pipe in self.pipes.values():
            os.set_blocking(pipe.src, False)
            self.sel.register(pipe.src, selectors.EVENT_READ, pipe)
        control.setblocking(False)
        self.sel.register(control, selectors.EVENT_READ, "accept")
        self.sel.register(sys.stdin, selectors.EVENT_READ, "stdin")

    def reseed(self, seed: int | None) -> None:
        """Each direction its own stream, so traffic one way never shifts the other's draws."""
        for key, pipe in self.pipes.items():
            pipe.rng.seed(None if seed is None else f"{seed}/{key}")

    def command(self, line: str) -> dict[str, object]:
        try:
            return self._command(*(line.split() or [""]))
        except CommandError as exc:
            return {"error": str(exc)}

    def _command(self, name: str, *args: str) -> dict[str, object]:
        if name == "stats":
            return {"cut": self.pipes["a_to_b"].cut,
                    **{key: pipe.stats() for key, pipe in self.pipes.items()}}
        if name == "quit":
            self.running = False
            return {"ok": True}
        if name == "seed":
            if len(args) != 1 or not args[0].lstrip("-").isdigit():
                raise CommandError("usage: seed N")
            self.reseed(int(args[0]))
            return {"ok": True}
        if name == "trace":
            return self._trace(*args)
        pipes = list(self.pipes.values())
        if args and args[0] in (*DIRECTIONS, "both"):
            pipes = pipes if args[0] == "both" else [self.pipes[args[0]]]
            args = args[1:]
        if name == "reset-stats" and not args:
            for pipe in pipes:
                pipe.reset_stats()
        elif name in ("cut", "restore") and not args:
            for pipe in pipes:
                pipe.set_cut(name == "cut")
        elif name == "clear" and not args:
            for pipe in pipes:
                pipe.set_latency(0)
                pipe.set_loss(0)
                pipe.set_rate(0)
        elif name == "latency" and 1 <= len(args) <= 2:
            ms = _number(args[0], "latency")
            jitter = _number(args[1], "jitter") if len(args) > 1 else 0.0
            for pipe in pipes:
                pipe.set_latency(ms, jitter)
        elif name == "loss" and len(args) == 1:
            percent = _number(args[0], "loss", 100)
            for pipe in pipes:
                pipe.set_loss(percent)
        elif name == "rate" and 1 <= len(args) <= 2:
            kbit = _number(args[0], "rate")
            queue = int(_number(args[1], "queue")) if len(args) > 1 else DEFAULT_QUEUE_BYTES
            for pipe in pipes:
                pipe.set_rate(kbit, queue)
        elif name in self.COMMANDS:
            raise CommandError(f"bad arguments for {name!r}: {' '.join(args)!r}; see tunlink.py")
        else:
            raise CommandError(f"unknown command {name!r}; known: {', '.join(self.COMMANDS)}")
        return {"ok": True}

    def _trace(self, *args: str) -> dict[str, object]:
        if args[:1] == ("on",) and len(args) <= 2:
            limit = int(_number(args[1], "trace size")) if len(args) > 1 else 10000
            for pipe in self.pipes.values():
                pipe.trace = collections.deque(maxlen=limit)
            return {"ok": True}
        if args == ("off",):
            for pipe in self.pipes.values():
                pipe.trace = None
            return {"ok": True}
        if args in ((), ("dump",)):
            packets = sorted((t, pipe.name, head, size) for pipe in self.pipes.values()
                             for t, head, size in pipe.trace or ())
            return {"packets": [{"t": t, "dir": name, "len": size, **summarize(head, size)}
                                for t, name, head, size in packets]}
        raise CommandError("usage: trace on [MAX] | off | dump")

    def serve_client(self, conn: socket.socket) -> None:
        """Answer one client's commands; they are short, so blocking here is fine.

        A client that stalls or vanishes costs its connection, never the link.
        """
        conn.settimeout(5)
        try:
            with conn, conn.makefile("rw", encoding="utf-8") as stream:
                for line in stream:
                    stream.write(json.dumps(self.command(line)) + "\n")
                    stream.flush()
                    if not self.running:
                        return
        except OSError:  # includes the timeout
            pass

    def read_burst(self, pipe: Pipe, now: float) -> None:
        for _ in range(BURST):
            try:
                packet = os.read(pipe.src, MAX_PACKET)
            except BlockingIOError:
                return
            pipe.offer(packet, now)

    def run(self) -> None:
        while self.running:
            dues = [d for d in (p.next_due() for p in self.pipes.values()) if d is not None]
            timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
            for key, _ in self.sel.select(timeout):
                if isinstance(key.data, Pipe):
                    self.read_burst(key.data, time.monotonic())
                elif key.data == "accept":
                    self.serve_client(self.control.accept()[0])
                elif not sys.stdin.buffer.read1(4096):  # stdin EOF: the harness is gone
                    self.running = False
            now = time.monotonic()
            for pipe in self.pipes.values():
                pipe.flush(now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", help="name of the tun device to create for end A")
    parser.add_argument("--b", help="name of the tun device to create for end B")
    parser.add_argument("--a-fd", type=int, help="already-open tun descriptor for end A")
    parser.add_argument("--b-fd", type=int, help="already-open tun descriptor for end B")
    parser.add_argument("--control", required=True, help="unix socket path for commands")
    parser.add_argument("--seed", type=int, help="seed of loss and jitter, for repeatable runs")
    args = parser.parse_args(argv)
    if (args.a is None) == (args.a_fd is None) or (args.b is None) == (args.b_fd is None):
        parser.error("give each end exactly one of --a/--a-fd and --b/--b-fd")
    try:
        a = args.a_fd if args.a is None else open_tun(args.a)
        b = args.b_fd if args.b is None else open_tun(args.b)
    except OSError as exc:
        print(f"unavailable: cannot create tun device: {exc}", flush=True)
        return 2
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(args.control)
    control.listen()
    print("ready", flush=True)
    try:
        Link(a, b, control, seed=args.seed).run()
    finally:
        control.close()
        os.unlink(args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
