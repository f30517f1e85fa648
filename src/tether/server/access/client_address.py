"""Who the client is: the one answer every limit, audit record and log line uses.

A peer's own address is the truth unless that peer is a proxy the operator named
(``--trusted-proxy CIDR``). Only then is ``X-Forwarded-For`` read, from the right:
each proxy appends the address it saw, so the right-most entry not written by a
trusted proxy is the first one nobody could forge. Anything left of it is whatever
the client chose to send. No proxy is trusted by default, loopback included: a
process on the server machine (or a forged header through an untrusted hop) would
otherwise choose the address that registration limits and audit records see.

``TrustedProxies`` rewrites the ASGI scope's ``client`` once, at the front door (app.py), so
``request.client`` (and ``client_host``) mean the same thing everywhere after it.
uvicorn's own proxy-header handling is off (server/runner.py): it trusts loopback
by default and takes any string as an address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.requests import HTTPConnection
from starlette.types import Scope

__all__ = ["TrustedProxies", "client_address", "client_host", "is_trusted_proxy", "limit_key",
           "parse_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"
# A header longer than this is not from a proxy chain anyone runs; read no further.
MAX_FORWARDED_FOR = 4096
# One IPv6 subscriber gets a /64 at least: per-address limits count the prefix, or
# one host could be 2**64 "addresses".
IPV6_LIMIT_PREFIX = 64


def parse_proxies(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values as networks; ValueError names a bad one."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {cidr!r} is not an address or CIDR "
                             "network") from None
    return tuple(out)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: Address | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in proxies)


def is_trusted_proxy(host: str, proxies: Sequence[Network]) -> bool:
    """``host`` (a peer address) is one of ``proxies``."""
    return _trusted(_address(host), proxies)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   proxies: Sequence[Network]) -> str | None:
    """The client's address, given the TCP peer and every ``X-Forwarded-For`` value.

    Walk right to left while the hop is a trusted proxy; the first hop that is not
    is the client. An entry that is not an address (only an untrusted party writes
    one) stops the walk at the last trusted hop; so does an over-long header.
    """
    current = peer
    if not proxies or not _trusted(_address(peer or ""), proxies):
        return peer
    joined = ",".join(forwarded_for)
    if len(joined) > MAX_FORWARDED_FOR:
        return peer
    for entry in reversed(joined.split(",")):
        if not entry.strip():
            continue
        hop = _address(entry)
        if hop is None:
            return current
        current = str(hop)
        if not _trusted(hop, proxies):
            return current
    return current


def limit_key(address: str) -> str:
    """What per-address limits count: the address, or its /64 for IPv6."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        net = ipaddress.IPv6Network((parsed, IPV6_LIMIT_PREFIX), strict=False)
        return str(net)
    return address


def client_host(conn: HTTPConnection) -> str:
    """The client of a request or WebSocket, after ``TrustedProxies``; "unknown" if none."""
    return conn.client.host if conn.client else UNKNOWN


class TrustedProxies:
    """Put the real client (per ``client_address``) in an ASGI scope's ``client``.

    With a trusted proxy in front, ``X-Forwarded-Proto`` sets the scheme too (the
    proxy terminated TLS); from anyone else both headers are ignored.
    """

    def __init__(self, proxies: Sequence[Network]) -> None:
        self.proxies = tuple(proxies)

    def rewrite(self, scope: Scope) -> Scope:
        """``scope`` itself when its peer is no trusted proxy, else a rewritten copy."""
        client = scope.get("client")
        peer = client[0] if client else None
        if not _trusted(_address(peer or ""), self.proxies):
            return scope
        forwarded: list[str] = []
        proto = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        scope = dict(scope)
        host = client_address(peer, forwarded, self.proxies)
        if host is not None and host != peer:
            scope["client"] = (host, 0)
        if proto in ("http", "https"):
            scope["scheme"] = (proto.replace("http", "ws") if scope["type"] == "websocket"
                               else proto)
        return scope
