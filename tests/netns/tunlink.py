"""A userspace point-to-point link between two tun devices, for the netns tests.

Why userspace and not a veth pair: the device end has to look like the field's
``ppp0`` (POINTOPOINT, NOARP, no link-layer address), and the link itself has
to be under the test's control: it counts what crosses it, can be cut and
restored, and is meant to grow latency, loss and bandwidth limits without
needing tc/netem in the test kernel.

    python tunlink.py --a tdev123 --b tsrv123 --control /tmp/x/control.sock

creates both tun devices (IFF_TUN | IFF_NO_PI) in the caller's namespace,
binds the control socket, then prints ``ready`` (or ``unavailable: why`` and
exits 2). The harness then moves the devices into their namespaces; the open
descriptors follow them. ``--a-fd``/``--b-fd`` take already-open tun
descriptors instead of names. The relay stops when stdin reaches EOF, so it
never outlives the harness that started it.

Control: one command per line on the unix socket, one JSON line back.
``stats``, ``cut``, ``restore`` and ``quit``; see ``Link.COMMANDS``.
Stdlib only, so it runs under whatever interpreter runs the tests.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
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


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Pipe:
    """One direction of the link; decides what happens to each packet.

    Every packet enters through ``offer`` and leaves through ``due`` at its
    release time; the loop sleeps until ``next_due``. Today a packet is
    released at once, or dropped while the link is cut. Latency is a later
    release time, loss a random drop in ``offer``, a bandwidth limit a release
    time that accounts for the bytes already queued: all fit here.
    """

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self.cut = False
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.packets = self.bytes = self.dropped = 0

    def offer(self, packet: bytes, now: float) -> None:
        if self.cut:
            self.dropped += 1
        else:
            self.queue.append((now, packet))

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def flush(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            packet = self.queue.popleft()[1]
            try:
                os.write(self.dst, packet)
            except OSError:  # peer interface down or its queue full: the link loses it
                self.dropped += 1
            else:
                self.packets += 1
                self.bytes += len(packet)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self.dropped += len(self.queue)
            self.queue.clear()

    def stats(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes, "dropped": self.dropped}


class Link:
    """The relay loop: two pipes, a control socket, and stdin as a lifeline."""

    COMMANDS = ("stats", "cut", "restore", "quit")

    def __init__(self, a: int, b: int, control: socket.socket) -> None:
        self.pipes = {"a_to_b": Pipe(a, b), "b_to_a": Pipe(b, a)}
        self.control = control
        self.sel = selectors.DefaultSelector()
        self.running = True
        for pipe in self.pipes.values():
            os.set_blocking(pipe.src, False)
            self.sel.register(pipe.src, selectors.EVENT_READ, pipe)
        control.setblocking(False)
        self.sel.register(control, selectors.EVENT_READ, "accept")
        self.sel.register(sys.stdin, selectors.EVENT_READ, "stdin")

    def command(self, line: str) -> dict[str, object]:
        name, *_args = line.split() or [""]
        if name == "stats":
            return {"cut": self.pipes["a_to_b"].cut,
                    **{key: pipe.stats() for key, pipe in self.pipes.items()}}
        if name in ("cut", "restore"):
            for pipe in self.pipes.values():
                pipe.set_cut(name == "cut")
            return {"ok": True}
        if name == "quit":
            self.running = False
            return {"ok": True}
        return {"error": f"unknown command {name!r}; known: {', '.join(self.COMMANDS)}"}

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
        Link(a, b, control).run()
    finally:
        control.close()
        os.unlink(args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
