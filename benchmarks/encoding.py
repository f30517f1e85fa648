"""Is JSON a reasonable wire encoding for tether? Size and speed against msgpack.

Every byte on a device's LTE link costs money, so the question is how many
bytes each encoding puts on the wire for the messages that actually flow, and
what it costs in CPU to produce and parse them. Four encodings of the same
message body (the object ``encode`` builds, ``t`` included) are compared:

- ``json``: ``tether.protocol.encode`` / ``decode`` as shipped (UTF-8 bytes);
- ``msgpack``: the same body through ``msgpack.packb`` / ``unpackb``;
- both again after raw DEFLATE, the way permessage-deflate (RFC 7692) sends a
  message: once with a fresh compressor per message (``no_context_takeover``)
  and once in steady state on a long-lived connection (context takeover, the
  websockets default), where earlier messages serve as the dictionary.

Times are microseconds per round trip (encode + decode), best of several runs.
"json" times go through tether's own field validation; "msgpack" times are the
bare codec, so they flatter msgpack (see the "json codec" column for the bare
JSON codec on the same body).

Run: ``.venv/bin/python benchmarks/encoding.py`` (needs ``pip install msgpack``;
without it the msgpack columns are left out).
"""

from __future__ import annotations

import json
import random
import time
import uuid
import zlib
from typing import Any, Callable

from tether.protocol import (
    AGENT_MESSAGES,
    SERVER_MESSAGES,
    Command,
    Hello,
    Inventory,
    Message,
    Output,
    Ping,
    Result,
    ResultAck,
    decode,
    encode,
)
from tether.protocol.messages import Address, Interface

try:
    import msgpack
except ImportError:  # pragma: no cover - reported in the output
    msgpack = None

ALLOWED = {**AGENT_MESSAGES, **SERVER_MESSAGES}
TARGET_SECONDS = 0.02  # per timing run
RUNS = 5
STEADY_STATE_MESSAGES = 20


def _node_id(rng: random.Random) -> str:
    return "mi-" + "".join(rng.choice("0123456789abcdef") for _ in range(17))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _script(rng: random.Random) -> str:
    base = ("#!/bin/sh\nset -eu\nsystemctl restart modem-watchdog\n"
            "ip -4 addr show dev wwan0 | grep inet\n"
            "logger -t tether 'watchdog restarted on '\"$(hostname)\"\n"
            "df -h /var | tail -n 1\n")
    text = base + "# " + _uuid(rng) + "\n" + "echo done\n" * 10
    return text[:200]


def _log_text(rng: random.Random, size: int) -> str:
    words = ["modem", "wwan0", "signal", "rsrp", "-97", "dBm", "link", "up", "ok",
             "retry", "sqlite", "sync", "queue", "flushed", "bytes", "sensor", "42.7"]
    lines: list[str] = []
    total = 0
    second = rng.randrange(86400)
    while total < size:
        second += rng.randrange(3)
        stamp = f"2025-03-{1 + second // 86400 % 28:02d}T{second // 3600 % 24:02d}:" \
                f"{second // 60 % 60:02d}:{second % 60:02d}Z"
        line = f"{stamp} app[{rng.randrange(100, 999)}]: " + " ".join(
            rng.choice(words) for _ in range(rng.randrange(4, 12)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:size]


def _interfaces(rng: random.Random) -> list[Interface]:
    return [
        Interface("lo", ["up", "loopback", "running"],
                  [Address("127.0.0.1", 8, "inet"), Address("::1", 128, "inet6")]),
        Interface("eth0", ["up", "broadcast", "running", "multicast"],
                  [Address(f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}", 24, "inet"),
                   Address("fe80::ba27:ebff:fe12:3456", 64, "inet6")]),
        Interface("wwan0", ["up", "pointopoint", "running", "noarp"],
                  [Address(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                           32, "inet", peer="10.64.64.64")]),
        Interface("tun0", ["up", "pointopoint", "running", "noarp", "multicast"],
                  [Address("172.16.0.17", 32, "inet", peer="172.16.0.1"),
                   Address("fd00:17::11", 128, "inet6")]),
    ]


def _messages(rng: random.Random) -> dict[str, Message]:
    """One representative instance of each message; ids vary with ``rng``."""
    invocation = _uuid(rng)
    return {
        "hello": Hello(1, _node_id(rng), "tcr_" + rng.randbytes(24).hex(), "0.1.0"),
        "inventory (4 interfaces)": Inventory(
            computer_name=f"pump-station-{rng.randrange(1000):03d}", os_name="Debian GNU/Linux",
            os_version="12 (bookworm)", kernel="6.1.0-rpi7-rpi-v8", arch="aarch64",
            agent_version="0.1.0", python_version="3.11.2", interfaces=_interfaces(rng),
            primary_address="10.20.30.40"),
        "ping": Ping(),
        "command (200 B script)": Command(invocation, _uuid(rng), _script(rng), 600.0, 65536),
        "output (4 KiB text)": Output(invocation, "stdout", rng.randrange(0, 1 << 20, 4096),
                                      _log_text(rng, 4096)),
        "output (4 KiB binary)": Output.from_bytes(invocation, "stdout", 0,
                                                   rng.randbytes(4096)),
        "result": Result(invocation, "Success", 4096, 0, exit_code=0),
        "result_ack": ResultAck(invocation),
    }


def _body(message: Message) -> dict[str, Any]:
    body = json.loads(encode(message))
    assert isinstance(body, dict)
    return body


def _deflate_fresh(data: bytes) -> int:
    """Bytes permessage-deflate sends for one message with a fresh compressor."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return len(out) - 4  # RFC 7692 strips the empty stored block's tail


def _deflate_steady(datas: list[bytes]) -> float:
    """Mean bytes per message after the first on one context-takeover stream."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    sizes = [len(c.compress(d) + c.flush(zlib.Z_SYNC_FLUSH)) - 4 for d in datas]
    return sum(sizes[1:]) / (len(sizes) - 1)


def _time_us(fn: Callable[[], object]) -> float:
    """Best-of-RUNS microseconds per call, each run lasting about TARGET_SECONDS."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= TARGET_SECONDS / 4:
            break
        n *= 2
    n = max(1, int(n * TARGET_SECONDS / elapsed))
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def _zlib_roundtrip(data: bytes) -> Callable[[], object]:
    def run() -> object:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        packed = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        return zlib.decompressobj(-15).decompress(packed)
    return run


def measure() -> tuple[list[str], list[list[str]]]:
    rng = random.Random(1234)
    samples = _messages(rng)
    variants = [_messages(random.Random(i)) for i in range(STEADY_STATE_MESSAGES)]
    rows: list[list[str]] = []
    for name, message in samples.items():
        wire = encode(message).encode("utf-8")
        assert decode(wire.decode("utf-8"), ALLOWED) == message
        body = _body(message)
        json_rt = _time_us(lambda m=message: decode(encode(m).encode("utf-8").decode("utf-8"),
                                                   ALLOWED))
        json_codec = _time_us(lambda b=body: json.loads(
            json.dumps(b, separators=(",", ":"), ensure_ascii=False).encode("utf-8")))
        json_z = _deflate_fresh(wire)
        json_zs = _deflate_steady([encode(v[name]).encode("utf-8") for v in variants])
        zlib_us = _time_us(_zlib_roundtrip(wire))
        row = [name, str(len(wire)), str(json_z), f"{json_zs:.0f}",
               f"{json_rt:.1f}", f"{json_codec:.1f}", f"{zlib_us:.1f}"]
        if msgpack is not None:
            packed = msgpack.packb(body)
            assert msgpack.unpackb(packed) == body
            mp_z = _deflate_fresh(packed)
            mp_zs = _deflate_steady([msgpack.packb(_body(v[name])) for v in variants])
            mp_rt = _time_us(lambda b=body: msgpack.unpackb(msgpack.packb(b)))
            mp_zlib_us = _time_us(_zlib_roundtrip(packed))
            row += [f"{len(packed)} ({len(packed) / len(wire):.2f})",
                    f"{mp_z} ({mp_z / json_z:.2f})",
                    f"{mp_zs:.0f} ({mp_zs / json_zs:.2f})" if json_zs else f"{mp_zs:.0f}",
                    f"{mp_rt:.1f} ({mp_rt / json_codec:.2f})",
                    f"{mp_zlib_us:.1f}"]
        rows.append(row)
    header = ["message", "json B", "json+deflate B", "json+deflate steady B",
              "json rt µs (tether)", "json codec µs", "deflate rt µs (json)"]
    if msgpack is not None:
        header += ["msgpack B (x json)", "msgpack+deflate B (x json)",
                   "msgpack+deflate steady B (x json)", "msgpack codec µs (x json codec)",
                   "deflate rt µs (msgpack)"]
    return header, rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([line(header), line(align)] + [line(r) for r in rows])


def main() -> None:
    import platform
    import sys

    start = time.perf_counter()
    header, rows = measure()
    mp = f"msgpack {'.'.join(map(str, msgpack.version))}" if msgpack else "msgpack: not installed"
    print(f"Python {platform.python_version()} on {platform.machine()}, {mp}, "
          f"zlib {zlib.ZLIB_VERSION} (raw deflate, level {zlib.Z_DEFAULT_COMPRESSION})\n")
    print(_table(header, rows))
    print("\nB = bytes of WebSocket payload (frame headers, 2-8 B + 4 B client mask, excluded).")
    print("steady = mean over messages 2..20 of one permessage-deflate stream with context "
          "takeover, ids varying per message.")
    print(f"\n(measured in {time.perf_counter() - start:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
