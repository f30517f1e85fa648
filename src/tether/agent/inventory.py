"""What this device is and every address it can be reached at.

The inventory is how an operator finds a device in a closed network, so the
one interface that matters most is often the odd one: a ``ppp0`` or ``wwan0``
whose only address is point-to-point. Nothing here skips an interface for
being point-to-point, down or address-less; leaving one out would hide the
very device the operator is looking for.

Interfaces come from ``ip -j address show`` when iproute2 is there, because it
sees every address and the peer of every point-to-point link. Without it (a
busybox image, an iproute2 too old for JSON) the standard library still gets
names, flags, the primary IPv4 address and peer per interface through
``ioctl`` and IPv6 addresses from ``/proc/net/if_inet6``. The fallback sees
only one IPv4 address per interface (``SIOCGIFADDR`` has room for one) and no
IPv6 peers; that is the price of needing nothing installed.

Parsing is kept in pure functions (``parse_ip_json``, ``parse_if_inet6``,
``parse_os_release``) so it is tested on captured text, and the I/O around
them stays thin.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import platform
import shlex
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, TypeVar

import tether
from tether.protocol.limits import FIELD_LIMITS, Items, Limit, Over, Text, truncate_text
from tether.protocol.messages import Address, Interface, Inventory

__all__ = [
    "IP_COMMAND",
    "IP_TIMEOUT",
    "OS_RELEASE_PATHS",
    "collect_inventory",
    "interfaces_from_ioctl",
    "interfaces_from_ip",
    "inventory_fingerprint",
    "list_interfaces",
    "parse_if_inet6",
    "parse_ip_json",
    "parse_os_release",
    "read_os_release",
    "within_limits",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

IP_COMMAND = ("ip", "-j", "address", "show")
# `ip -j address show` takes about 2 ms here; a hung or wedged `ip` must not
# stall the agent's connect path, and 2 s is still ~1000x the normal run time.
IP_TIMEOUT = 2.0
# os-release(5): /etc/os-release wins, /usr/lib/os-release is the fallback.
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
IF_INET6_PATH = "/proc/net/if_inet6"
SYS_CLASS_NET = "/sys/class/net"

# Flag names in kernel bit order (linux/if.h). Both discovery paths report
# flags in this order so that the same interface gives the same list whichever
# path saw it; names not listed here follow, sorted.
_FLAG_BITS: tuple[tuple[str, int], ...] = (
    ("up", 0x1),
    ("broadcast", 0x2),
    ("debug", 0x4),
    ("loopback", 0x8),
    ("pointopoint", 0x10),
    ("notrailers", 0x20),
    ("running", 0x40),
    ("noarp", 0x80),
    ("promisc", 0x100),
    ("allmulti", 0x200),
    ("master", 0x400),
    ("slave", 0x800),
    ("multicast", 0x1000),
    ("portsel", 0x2000),
    ("automedia", 0x4000),
    ("dynamic", 0x8000),
    ("lower_up", 0x10000),
    ("dormant", 0x20000),
    ("echo", 0x40000),
)
_FLAG_RANK = {name: rank for rank, (name, _) in enumerate(_FLAG_BITS)}

SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
SIOCGIFDSTADDR = 0x8917
SIOCGIFNETMASK = 0x891B
# struct ifreq is 40 bytes on 64-bit Linux and 32 on 32-bit; the larger size
# serves both, since the kernel copies only what it needs.
_IFREQ_SIZE = 40
_IFNAMSIZ = 16
_IFR_DATA = 16  # offset of the ifr_ifru union inside struct ifreq


def collect_inventory(
    primary_address: Optional[str],
    os_release_paths: Sequence[str] = OS_RELEASE_PATHS,
) -> Inventory:
    """Build the inventory message sent on connect and again on change.

    Args:
        primary_address: the local address of the socket the agent uses
            toward the server. Only the caller knows which socket that is,
            and it is the address the server should prefer to show.
        os_release_paths: where to look for os-release, first found wins.
    """
    release = read_os_release(os_release_paths)
    return within_limits(Inventory(
        computer_name=socket.gethostname(),
        os_name=release.get("NAME") or release.get("PRETTY_NAME") or "unknown",
        os_version=release.get("VERSION_ID") or "unknown",
        kernel=platform.release(),
        arch=platform.machine(),
        agent_version=tether.__version__,
        python_version=platform.python_version(),
        interfaces=list_interfaces(),
        primary_address=primary_address,
    ))


def within_limits(inv: Inventory) -> Inventory:
    """``inv`` cut to the protocol's bounds (tether.protocol.limits), keeping what matters.

    The server would keep the *first* interfaces and addresses past its caps; a
    container host with hundreds of ``veth`` interfaces must not push its ``wwan0``
    out. So the most useful come first: point-to-point links, then interfaces with
    an address beyond link-local, then those that are up, then the rest (each group
    in the kernel's order); and global addresses before link-local ones. Strings
    are cut as the server would cut them, so the fingerprint is of what is stored.
    """
    limits = FIELD_LIMITS["Inventory"]
    iface_limits = FIELD_LIMITS["Interface"]
    text: dict[str, Any] = {}
    for f in dataclasses.fields(inv):
        value, limit = getattr(inv, f.name), limits[f.name]
        if isinstance(value, str) and isinstance(limit, Text):
            text[f.name] = truncate_text(value, limit) if limit.over is Over.TRUNCATE \
                or len(value) <= limit.max_chars else None
    kept = [Interface(name=i.name, flags=i.flags[:_cap(iface_limits["flags"])],
                      addresses=_first(i.addresses, _cap(iface_limits["addresses"]),
                                       _is_link_local))
            for i in _first(inv.interfaces, _cap(limits["interfaces"]), _usefulness)
            if len(i.name) <= _chars(iface_limits["name"])]
    if kept == inv.interfaces and all(text[k] == getattr(inv, k) for k in text):
        return inv  # the common case: nothing to cut
    return dataclasses.replace(inv, interfaces=kept, **text)


def _first(items: list[T], cap: int, rank: Callable[[T], Any]) -> list[T]:
    """``items`` as they are when within ``cap``; else the ``cap`` best by ``rank``."""
    if len(items) <= cap:
        return items
    return sorted(items, key=rank)[:cap]  # a stable sort: the kernel's order within a rank


def _cap(limit: Limit) -> int:
    assert isinstance(limit, Items)
    return limit.max_items


def _chars(limit: Limit) -> int:
    assert isinstance(limit, Text)
    return limit.max_chars


def _is_link_local(address: Address) -> bool:
    try:
        return ipaddress.ip_address(address.address.split("%")[0]).is_link_local
    except ValueError:
        return False


def _usefulness(iface: Interface) -> int:
    """0 is most useful: see ``within_limits``."""
    if "pointopoint" in iface.flags:
        return 0
    if any(not _is_link_local(a) for a in iface.addresses) and "loopback" not in iface.flags:
        return 1
    return 2 if "up" in iface.flags else 3


def inventory_fingerprint(inv: Inventory) -> str:
    """Hash of everything the server would store, so unchanged means unsent.

    Order does not count: a kernel that lists the same addresses in a new
    order has not changed the device, and resending for that would be noise.
    A new ``ppp0`` address after a re-dial, a new flag or a new primary
    address does change the fingerprint.
    """
    body = {f.name: getattr(inv, f.name) for f in dataclasses.fields(inv)}
    body["interfaces"] = _sorted_canonically(
        {
            "name": iface.name,
            "flags": sorted(iface.flags),
            "addresses": _sorted_canonically(dataclasses.asdict(a) for a in iface.addresses),
        }
        for iface in inv.interfaces
    )
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _sorted_canonically(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


# --- os-release -------------------------------------------------------------


def read_os_release(paths: Sequence[str] = OS_RELEASE_PATHS) -> dict[str, str]:
    """The first readable os-release; an empty dict rather than an error,
    because a device without one must still report the rest of its inventory."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return parse_os_release(f.read())
        except OSError:
            continue
    return {}


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release(5) text, which is shell-quoted KEY=value lines.

    Values are unquoted the way a shell would (quotes, backslash escapes), so
    ``PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"`` comes out without its
    quotes. A line a shell could not parse keeps its raw value, stripped of
    one pair of surrounding quotes, rather than losing the field.
    """
    result: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if not key:
            continue
        try:
            words = shlex.split(value, comments=False, posix=True)
            result[key] = " ".join(words)
        except ValueError:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            result[key] = value
    return result


# --- interfaces -------------------------------------------------------------


def list_interfaces() -> list[Interface]:
    """Every interface with its flags and addresses, by the best means available."""
    interfaces = interfaces_from_ip()
    if interfaces is not None:
        return interfaces
    return interfaces_from_ioctl()


def interfaces_from_ip(
    command: Sequence[str] = IP_COMMAND, timeout: float = IP_TIMEOUT
) -> Optional[list[Interface]]:
    """Interfaces as iproute2 reports them, or None when it cannot.

    None (not an exception) because a missing, old or failing ``ip`` is an
    expected state of an embedded image, and the caller has a fallback.
    """
    try:
        proc = subprocess.run(
            list(command), capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("cannot run %s: %s", command[0], exc)
        return None
    if proc.returncode != 0:
        logger.debug(
            "%s exited with %d: %s",
            " ".join(command),
            proc.returncode,
            proc.stderr.decode("utf-8", "replace").strip()[:200],
        )
        return None
    try:
        return parse_ip_json(proc.stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        logger.debug("cannot parse %s output: %s", " ".join(command), exc)
        return None


def parse_ip_json(text: str) -> list[Interface]:
    """Turn ``ip -j address show`` output into interfaces.

    iproute2 writes the address configured on this host as ``local`` and,
    when it differs, the far end of a point-to-point link as ``address``; an
    IPv6 address on an ordinary link comes as ``local`` alone. Entries this
    function cannot use (older iproute2 emits empty ``{}`` in ``addr_info``,
    other families) are skipped, never fatal.

    Raises:
        ValueError: the text is not JSON or not a list, i.e. not iproute2's.
    """
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("ip -j output is not a JSON list")
    interfaces: list[Interface] = []
    for link in data:
        if not isinstance(link, dict):
            continue
        name = link.get("ifname")
        if not isinstance(name, str) or not name:
            continue
        flags = [f.lower() for f in _json_list(link.get("flags")) if isinstance(f, str)]
        # iproute2 hides IFF_RUNNING; the kernel sets it exactly when the link
        # is up and its operstate is UP or UNKNOWN, so it can be put back.
        if "up" in flags and link.get("operstate") in ("UP", "UNKNOWN"):
            flags.append("running")
        found = (_ip_json_address(info) for info in _json_list(link.get("addr_info")))
        addresses = [a for a in found if a is not None]
        interfaces.append(Interface(name=name, flags=_canonical_flags(flags),
                                    addresses=addresses))
    return interfaces


def _json_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ip_json_address(info: Any) -> Optional[Address]:
    if not isinstance(info, dict):
        return None
    family = info.get("family")
    if family not in ("inet", "inet6"):
        return None
    local = info.get("local")
    remote = info.get("address")
    ours = local if isinstance(local, str) and local else remote
    if not isinstance(ours, str) or not ours:
        return None
    prefixlen = info.get("prefixlen")
    if not isinstance(prefixlen, int) or isinstance(prefixlen, bool):
        prefixlen = 32 if family == "inet" else 128
    peer = remote if isinstance(remote, str) and remote and remote != ours else None
    return Address(address=ours, prefixlen=prefixlen, family=family, peer=peer)


def interfaces_from_ioctl(if_inet6_path: str = IF_INET6_PATH) -> list[Interface]:
    """Interfaces from the standard library alone, for images without iproute2.

    Never raises for one interface's sake: an interface without IPv4 gets
    EADDRNOTAVAIL from ``SIOCGIFADDR`` and is kept, just without that address.
    """
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError as exc:
        logger.debug("if_nameindex failed: %s", exc)
        names = []
    ipv6 = _read_if_inet6(if_inet6_path)
    interfaces: list[Interface] = []
    try:
        sock: Optional[socket.socket] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        logger.debug("no AF_INET socket for ioctl: %s", exc)
        sock = None
    try:
        for name in names:
            flags: list[str] = []
            addresses: list[Address] = []
            if sock is not None:
                raw_flags = _ioctl(sock, SIOCGIFFLAGS, name)
                if raw_flags is None:
                    continue  # the interface vanished since if_nameindex()
                bits = struct.unpack_from("H", raw_flags, _IFR_DATA)[0]
                flags = [flag for flag, bit in _FLAG_BITS if bits & bit]
                flags.extend(_carrier_flags(name, up="up" in flags))
                ipv4 = _ioctl_ipv4(sock, name, pointopoint="pointopoint" in flags)
                if ipv4 is not None:
                    addresses.append(ipv4)
            addresses.extend(ipv6.get(name, []))
            interfaces.append(Interface(name=name, flags=_canonical_flags(flags),
                                        addresses=addresses))
    finally:
        if sock is not None:
            sock.close()
    return interfaces


def parse_if_inet6(text: str) -> dict[str, list[Address]]:
    """IPv6 addresses per interface from ``/proc/net/if_inet6`` text.

    Each line is: address (32 hex digits), ifindex, prefix length, scope and
    flags (all hex), then the interface name. Malformed lines are skipped.
    """
    result: dict[str, list[Address]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            prefixlen = int(fields[2], 16)
        except ValueError:
            continue
        result.setdefault(fields[5], []).append(
            Address(address=address.compressed, prefixlen=prefixlen, family="inet6")
        )
    return result


def _read_if_inet6(path: str) -> dict[str, list[Address]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_if_inet6(f.read())
    except OSError:
        return {}  # no IPv6 in this kernel, or no /proc


def _ioctl(sock: socket.socket, request: int, name: str) -> Optional[bytes]:
    encoded = os.fsencode(name)[: _IFNAMSIZ - 1]
    ifreq = struct.pack(f"{_IFNAMSIZ}s", encoded) + bytes(_IFREQ_SIZE - _IFNAMSIZ)
    try:
        return fcntl.ioctl(sock.fileno(), request, ifreq)
    except OSError as exc:
        if exc.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENXIO):
            logger.debug("ioctl %#x on %s failed: %s", request, name, exc)
        return None


def _ioctl_ipv4(sock: socket.socket, name: str, pointopoint: bool) -> Optional[Address]:
    raw = _ioctl(sock, SIOCGIFADDR, name)
    if raw is None:
        return None
    address = _sockaddr_in(raw)
    if address is None:
        return None
    raw_mask = _ioctl(sock, SIOCGIFNETMASK, name)
    mask = _sockaddr_in(raw_mask) if raw_mask is not None else None
    prefixlen = _prefixlen(mask) if mask is not None else 32
    peer = None
    if pointopoint:
        raw_dst = _ioctl(sock, SIOCGIFDSTADDR, name)
        dst = _sockaddr_in(raw_dst) if raw_dst is not None else None
        if dst is not None and dst != address and not ipaddress.IPv4Address(dst).is_unspecified:
            peer = dst
    return Address(address=address, prefixlen=prefixlen, family="inet", peer=peer)


def _prefixlen(netmask: str) -> int:
    """Prefix length of a dotted netmask; 32 for a non-contiguous one, which
    has no prefix length and of which /32 claims nothing more than we know."""
    host_bits = ~int(ipaddress.IPv4Address(netmask)) & 0xFFFFFFFF
    if host_bits & (host_bits + 1):
        return 32
    return 32 - host_bits.bit_length()


def _sockaddr_in(ifreq: bytes) -> Optional[str]:
    family = struct.unpack_from("H", ifreq, _IFR_DATA)[0]
    if family != socket.AF_INET:
        return None
    return socket.inet_ntoa(ifreq[_IFR_DATA + 4 : _IFR_DATA + 8])


def _carrier_flags(name: str, up: bool) -> list[str]:
    """``lower_up``/``no-carrier`` as iproute2 prints them.

    ``SIOCGIFFLAGS`` returns a 16-bit field, so IFF_LOWER_UP (bit 16) never
    arrives through it; sysfs has the carrier state instead, and only for an
    interface that is up (reading it otherwise is EINVAL).
    """
    if not up:
        return []
    try:
        with open(os.path.join(SYS_CLASS_NET, name, "carrier"), encoding="ascii") as f:
            carrier = f.read().strip()
    except OSError:
        return []
    if carrier == "1":
        return ["lower_up"]
    if carrier == "0":
        return ["no-carrier"]
    return []


def _canonical_flags(flags: Sequence[str]) -> list[str]:
    unique = set(flags)
    known = sorted((f for f in unique if f in _FLAG_RANK), key=_FLAG_RANK.__getitem__)
    return known + sorted(f for f in unique if f not in _FLAG_RANK)
