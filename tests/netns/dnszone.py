"""A private DNS zone for the test network: the carrier's resolver, as a device sees it.

Why: in the field the device learns the server's address from DNS, a private
zone that the carrier's resolver serves (pppd's ``usepeerdns`` hands the device
that resolver with the PPP session). A name in ``/etc/hosts`` would test a
different path: no UDP on the link, no timeout when the link is cut, no
"no nameserver answered". So the test network runs this small authoritative
server on the carrier's end of ``ppp0`` and the device's ``resolv.conf`` points
at it.

It answers A queries for the names it was given, an empty answer (NODATA) for
other types of those names, and NXDOMAIN for every other name, so a lookup of
an unknown name fails at once, as it would against a real private zone. Only
UDP: the answers are far below 512 bytes. Standard library only.

    python dnszone.py --listen 10.64.0.1 --record tether.carrier.internal=10.65.0.1
"""

from __future__ import annotations

import argparse
import socket
import struct

TYPE_A = 1
CLASS_IN = 1
TTL = 60
RCODE_NXDOMAIN = 3
RCODE_FORMERR = 1
FLAG_RESPONSE = 0x8000
FLAG_AUTHORITATIVE = 0x0400
FLAG_RECURSION_DESIRED = 0x0100
HEADER = struct.Struct("!HHHHHH")


def parse_question(query: bytes) -> tuple[str, int, int, int]:
    """The first question's name, type, class, and where the question ends."""
    offset = HEADER.size
    labels: list[str] = []
    while True:
        length = query[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(query[offset:offset + length].decode("ascii").lower())
        offset += length
    qtype, qclass = struct.unpack_from("!HH", query, offset)
    return ".".join(labels), qtype, qclass, offset + 4


def answer(query: bytes, records: dict[str, str]) -> bytes:
    """The response to one query datagram."""
    ident, flags, qdcount = HEADER.unpack_from(query)[:3]
    reply_flags = FLAG_RESPONSE | FLAG_AUTHORITATIVE | (flags & FLAG_RECURSION_DESIRED)
    try:
        if qdcount != 1:
            raise ValueError("one question per query")
        name, qtype, qclass, end = parse_question(query)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return HEADER.pack(ident, reply_flags | RCODE_FORMERR, 0, 0, 0, 0)
    question = query[HEADER.size:end]
    address = records.get(name.rstrip("."))
    if address is None:
        return HEADER.pack(ident, reply_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != TYPE_A or qclass != CLASS_IN:
        return HEADER.pack(ident, reply_flags, 1, 0, 0, 0) + question
    record = struct.pack("!HHHIH", 0xC000 | HEADER.size, TYPE_A, CLASS_IN, TTL, 4)
    return (HEADER.pack(ident, reply_flags, 1, 1, 0, 0) + question + record
            + socket.inet_aton(address))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address to serve on (port 53)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[], metavar="NAME=ADDRESS")
    args = parser.parse_args()
    records = {}
    for item in args.record:
        name, _, address = item.partition("=")
        records[name.lower().rstrip(".")] = address
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.listen, args.port))
    print("ready", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        if len(query) >= HEADER.size:
            sock.sendto(answer(query, records), peer)


if __name__ == "__main__":
    main()
