"""``tether-agent doctor``: walk the path from this device to its server, one hop at a time.

A device that does not show up Online is usually at the end of an LTE link in
a closed network, and the person looking at it has a shell and nothing else.
The doctor answers "where does it stop?" in the order the agent itself goes:

=========== ===================================================================
identity    the state directory exists and ``identity.json`` parses
permissions the directory and the identity are the owner's alone
resolve     the server's host name resolves, and which source answered
route       the kernel has a route to that address, and through which interface
tcp         a TCP connection to host:port opens (timed)
tls         for ``https``: the handshake with the system trust store
websocket   the upgrade to ``/agent/v1/connect``
auth        a ``hello`` with this node's credential gets a ``welcome``
clock       the server's ``Date`` header against this device's clock
=========== ===================================================================

Each check needs the ones listed for it in ``REQUIRES``; a check whose needs
did not pass is *skipped*, with the check that failed named, instead of
failing again for a reason that says nothing new. Everything that decides
(parsing ``/etc/hosts`` and ``/etc/resolv.conf``, the dependency rule, the
verdicts and hints, the clock arithmetic, rendering) is a pure function; the
``_check_*`` functions around them only gather facts, each bounded by the
``--timeout``.

The ``auth`` check opens a real agent connection and says ``hello``: the
server then treats it as this node's connection, so an agent running at the
same time is replaced (close code 4005) and reconnects by itself after its
backoff, and commands waiting for the node are offered to the doctor, which
closes (1000) without accepting them; they stay Pending for the agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import enum
import errno
import http.client
import ipaddress
import json
import math
import os
import queue
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TextIO, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from tether import __version__
from tether.agent.inventory import list_interfaces
from tether.agent.link import MAX_FRAME, websocket_url
from tether.agent.state import IDENTITY_FILE, Identity
from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.ids import is_node_id
from tether.protocol.messages import SERVER_MESSAGES, Hello, Interface, Welcome, decode, encode
from tether.protocol.versions import PROTOCOL_VERSION

__all__ = [
    "CHECKS",
    "DATE_AGE",
    "DEFAULT_TIMEOUT",
    "MAX_CLOCK_SKEW",
    "REQUIRES",
    "CheckResult",
    "HostsEntry",
    "ResolvConf",
    "Skew",
    "Status",
    "Target",
    "blocking_failure",
    "clock_skew",
    "describe_certificate",
    "describe_close",
    "describe_resolution",
    "describe_route",
    "describe_welcome",
    "exit_code",
    "find_in_hosts",
    "iter_checks",
    "judge_clock",
    "judge_identity",
    "judge_permissions",
    "parse_hosts",
    "parse_resolv_conf",
    "render_json",
    "render_result",
    "render_summary",
    "resolution_error",
    "route_failure",
    "run",
    "server_target",
    "tcp_failure",
    "tls_failure",
    "upgrade_failure",
]

# Each network step (resolve, TCP, TLS, upgrade, hello, HTTP) gets this long.
# An LTE round trip is 50-500 ms and a radio waking from idle adds 1-2 s of
# connection setup, so a healthy step takes well under 3 s; 10 s still tells
# a black-holed path (no answer at all) from a slow one without making the
# person at the device wait a minute for the verdict.
DEFAULT_TIMEOUT = 10.0
# Above this the device's clock is wrong, not just drifting: TLS validity,
# command timestamps and logs stop lining up with the server's.
MAX_CLOCK_SKEW = 60.0
# How far an HTTP Date may trail the server's clock: whole seconds, and
# refreshed once a second by servers that cache it (uvicorn among them).
DATE_AGE = 2.0
# A certificate this close to its end gets a warning: time for an operator to
# renew it before every device starts refusing the server.
CERT_EXPIRY_WARNING_DAYS = 14
HOSTS_PATH = "/etc/hosts"
RESOLV_CONF_PATH = "/etc/resolv.conf"
CLOCK_PATH = "/api/v1/openapi.json"
EXIT_FAILED = 1
EXIT_USAGE = 2


class Status(str, enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"  # passed, but something deserves attention
    FAIL = "fail"
    SKIPPED = "skipped"  # not run: a check it needs did not pass
    NOT_APPLICABLE = "n/a"  # nothing to check here (TLS on an http:// URL)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    detail: str
    hint: Optional[str] = None

    @property
    def ok(self) -> Optional[bool]:
        """True when nothing is wrong, False on failure, None when not run."""
        if self.status is Status.FAIL:
            return False
        if self.status is Status.SKIPPED:
            return None
        return True

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "status": self.status.value,
                "detail": self.detail, "hint": self.hint}


# --- order and dependencies -------------------------------------------------

CHECKS: tuple[str, ...] = ("identity", "permissions", "resolve", "route", "tcp", "tls",
                           "websocket", "auth", "clock")
# What each check needs to have passed. The clock is read over the TCP path,
# not the verified TLS one, on purpose: a device clock stuck in 1970 is the
# usual reason a certificate looks "not yet valid", and it must still show.
REQUIRES: Mapping[str, tuple[str, ...]] = {
    "identity": (),
    "permissions": ("identity",),
    "resolve": ("identity",),
    "route": ("resolve",),
    "tcp": ("route",),
    "tls": ("tcp",),
    "websocket": ("tls",),
    "auth": ("websocket",),
    "clock": ("tcp",),
}


def blocking_failure(check: str, done: Mapping[str, CheckResult]) -> Optional[str]:
    """The failed check that keeps ``check`` from running, or None if it may run.

    A need that was itself skipped is followed to the failure behind it, so
    every skipped line names the one check to look at.
    """
    for need in REQUIRES[check]:
        result = done.get(need)
        if result is None:
            return need
        if result.status is Status.FAIL:
            return need
        if result.status is Status.SKIPPED:
            return blocking_failure(need, done) or need
    return None


# --- the server URL -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # any prefix the server lives under, without the trailing slash

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def server_target(url: str) -> Target:
    """Scheme, host, port and path prefix of an identity's ``server_url``.

    Raises:
        ValueError: not an http(s) URL with a host, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server_url must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"server_url has no host: {url!r}")
    port = parts.port  # ValueError when out of range
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))


# --- 1. identity and permissions ----------------------------------------------


def judge_identity(state_dir: Path, text: str) -> tuple[CheckResult, Optional[Identity]]:
    """Verdict on the text of ``identity.json``, and the identity when it is good."""
    where = state_dir / IDENTITY_FILE
    hint = (f"the file is damaged: restore it from a backup, or register again with "
            f"tether-agent register --force --state-dir {state_dir}")
    try:
        body = json.loads(text)
    except ValueError as exc:
        return CheckResult("identity", Status.FAIL, f"{where} is not JSON: {exc}", hint), None
    if not isinstance(body, dict):
        return CheckResult("identity", Status.FAIL, f"{where} is not a JSON object", hint), None
    missing = [k for k in ("node_id", "credential", "server_url")
               if not isinstance(body.get(k), str) or not body[k]]
    if missing:
        return CheckResult("identity", Status.FAIL,
                           f"{where} lacks {', '.join(missing)}", hint), None
    identity = Identity(body["node_id"], body["credential"], body["server_url"])
    if not is_node_id(identity.node_id):
        return CheckResult("identity", Status.FAIL,
                           f"{where}: {identity.node_id!r} is not a node id", hint), None
    try:
        server_target(identity.server_url)
    except ValueError as exc:
        return CheckResult("identity", Status.FAIL, f"{where}: {exc}",
                           "register again with the server's http:// or https:// URL: "
                           "tether-agent register --force --server URL ..."), None
    return CheckResult("identity", Status.PASS,
                       f"node {identity.node_id}, server {identity.server_url}"), identity


def judge_permissions(state_dir: Path, dir_mode: int, file_mode: int) -> CheckResult:
    """Owner-only is the rule: the credential is the node's only proof of identity.

    Anyone who can read ``identity.json`` can act as this node, and anyone who
    can write the file or the directory can point the agent at another server:
    both fail. A directory others may only list or enter is a warning: the
    identity stays private, the spooled command output does not.
    """
    path = state_dir / IDENTITY_FILE
    modes = f"directory {stat.S_IMODE(dir_mode):04o}, {IDENTITY_FILE} {stat.S_IMODE(file_mode):04o}"
    fix = f"chmod 700 {state_dir} && chmod 600 {path}"
    if file_mode & 0o077:
        return CheckResult("permissions", Status.FAIL,
                           f"{path} is open to group or others ({modes}): they can read "
                           "the node's credential or change the server", fix)
    if dir_mode & 0o022:
        return CheckResult("permissions", Status.FAIL,
                           f"{state_dir} is writable by group or others ({modes})", fix)
    if dir_mode & 0o055:
        return CheckResult("permissions", Status.WARN,
                           f"{state_dir} can be listed or entered by group or others "
                           f"({modes}); spooled command output may be readable", fix)
    return CheckResult("permissions", Status.PASS, f"owner-only ({modes})")


# --- 2. name resolution -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostsEntry:
    line: int  # 1-based line number in the file
    address: str
    names: tuple[str, ...]
    text: str  # the line without its comment, whitespace collapsed


def parse_hosts(text: str) -> list[HostsEntry]:
    """hosts(5): an address, then names; ``#`` starts a comment. Bad lines are skipped,
    as the C library skips them."""
    entries: list[HostsEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        entries.append(HostsEntry(number, fields[0], tuple(fields[1:]), " ".join(fields)))
    return entries


def find_in_hosts(entries: Sequence[HostsEntry], host: str) -> list[HostsEntry]:
    """The lines naming ``host`` (canonical name or alias; case does not count)."""
    wanted = host.lower().rstrip(".")
    return [e for e in entries if any(n.lower().rstrip(".") == wanted for n in e.names)]


@dataclasses.dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...]
    search: tuple[str, ...]


def parse_resolv_conf(text: str) -> ResolvConf:
    """resolv.conf(5): ``nameserver`` and ``search``/``domain`` lines; ``#`` and ``;``
    start comments. The last ``search`` or ``domain`` line wins, as in glibc."""
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    for raw in text.splitlines():
        fields = raw.split()
        if not fields or fields[0][0] in "#;":
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            nameservers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            search = tuple(fields[1:])
    return ResolvConf(tuple(nameservers), search)


def _nameservers_text(resolv: ResolvConf) -> str:
    if resolv.nameservers:
        return "nameservers " + ", ".join(resolv.nameservers) + f" from {RESOLV_CONF_PATH}"
    # glibc then asks a server on 127.0.0.1, which a device seldom runs.
    return f"no nameserver in {RESOLV_CONF_PATH}, so only 127.0.0.1 was asked"


PRIVATE_DNS_HINT = ("the device's resolver must know the server's name: add it to a "
                    "private DNS zone the carrier's resolver serves, or to /etc/hosts")


def describe_resolution(host: str, hosts_matches: Sequence[HostsEntry], resolv: ResolvConf,
                        addresses: Sequence[str], error: Optional[str]) -> CheckResult:
    """Which source answered for ``host``, or why none did.

    ``addresses`` is what the system resolver (getaddrinfo, as the agent uses)
    returned. When they are addresses from the ``/etc/hosts`` lines naming the
    host, the file answered; otherwise DNS did (``files`` comes before ``dns``
    in nearly every ``/etc/nsswitch.conf``).
    """
    if not addresses:
        looked = (f"{HOSTS_PATH} has {_hosts_lines(hosts_matches)}, but the resolver "
                  "did not use it" if hosts_matches else f"not in {HOSTS_PATH}")
        hint = PRIVATE_DNS_HINT
        if not resolv.nameservers:
            hint = (f"{RESOLV_CONF_PATH} lists no nameserver (the carrier's usually comes "
                    f"with the PPP session: pppd's usepeerdns); {hint}")
        return CheckResult("resolve", Status.FAIL,
                           f"{host} did not resolve: {looked}; DNS ({_nameservers_text(resolv)}): "
                           f"{error or 'no address'}", hint)
    listed = ", ".join(addresses)
    from_hosts = {_plain_address(e.address) for e in hosts_matches}
    if from_hosts & {_plain_address(a) for a in addresses}:
        return CheckResult("resolve", Status.PASS,
                           f"{host} -> {listed}, answered by {HOSTS_PATH} "
                           f"({_hosts_lines(hosts_matches)})")
    return CheckResult("resolve", Status.PASS,
                       f"{host} -> {listed}, answered by DNS ({_nameservers_text(resolv)})")


def _hosts_lines(entries: Sequence[HostsEntry]) -> str:
    return "; ".join(f'line {e.line}: "{e.text}"' for e in entries)


def _plain_address(address: str) -> str:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).compressed
    except ValueError:
        return address


def resolution_error(exc: BaseException) -> str:
    """What getaddrinfo's failure means, for the resolve check's detail."""
    if isinstance(exc, socket.gaierror):
        meaning = {socket.EAI_NONAME: "no such name",
                   socket.EAI_AGAIN: "no nameserver answered"}.get(exc.errno or 0)
        if meaning:
            return f"{meaning} ({exc.strerror})"
        return str(exc.strerror or exc)
    if isinstance(exc, UnicodeError):
        return f"not a valid host name ({exc})"
    return str(exc)


# --- 3. route -----------------------------------------------------------------


def describe_route(address: str, source: str, interfaces: Sequence[Interface]) -> CheckResult:
    """Name the interface that owns the source address the kernel picked."""
    wanted = _plain_address(source)
    for iface in interfaces:
        for addr in iface.addresses:
            if _plain_address(addr.address) != wanted:
                continue
            kind = ""
            if "pointopoint" in iface.flags:
                kind = ", point-to-point" + (f" (peer {addr.peer})" if addr.peer else "")
            elif "loopback" in iface.flags:
                kind = ", loopback"
            return CheckResult("route", Status.PASS,
                               f"{address} via {iface.name}{kind}, from {source}")
    return CheckResult("route", Status.PASS,
                       f"{address} from {source} (no interface lists that address)")


_NO_ROUTE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
                    errno.ENETDOWN}


def route_failure(address: str, exc: OSError, interfaces: Sequence[Interface]) -> CheckResult:
    """No route: point at the link the device has, or say it has none."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    detail = (f"no route to {address} ({reason})" if exc.errno in _NO_ROUTE_ERRNOS
              else f"cannot route to {address}: {reason}")
    links = [i for i in interfaces if "pointopoint" in i.flags and "up" in i.flags]
    if links:
        name = links[0].name
        hint = (f"{name} is up but no route toward {address} uses it: add one (pppd's "
                f"defaultroute option, or: ip route add default dev {name}), then check "
                "with: ip route get " + address)
    else:
        hint = ("the device has no link toward the server: check that the modem is attached "
                "and the PPP/LTE session is up (ip link; the pppd or ModemManager log), "
                "then: ip route get " + address)
    return CheckResult("route", Status.FAIL, detail, hint)


# --- 4. TCP -------------------------------------------------------------------


def tcp_failure(address: str, port: int, exc: BaseException, timeout: float) -> CheckResult:
    """Refused, timed out or unreachable, each with where to look."""
    where = f"{address}:{port}"
    if isinstance(exc, ConnectionRefusedError):
        return CheckResult("tcp", Status.FAIL, f"connection to {where} refused",
                           "the server's host answered but nothing listens on that port: "
                           "check that the tether server runs and listens on this address "
                           "and port (tether server --host/--port), and that the port in "
                           "the server URL is right")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return CheckResult("tcp", Status.FAIL,
                           f"connection to {where} timed out after {timeout:g} s",
                           "packets are dropped on the way: check the link's signal, then "
                           "the carrier's APN and firewall rules between the device and the "
                           "server (the server's host must accept this port)")
    if isinstance(exc, OSError) and exc.errno in _NO_ROUTE_ERRNOS:
        return CheckResult("tcp", Status.FAIL,
                           f"{where} unreachable ({os.strerror(exc.errno)})",
                           "a router on the way has no route to the server: check the "
                           "carrier's routing between the device's network and the server's")
    return CheckResult("tcp", Status.FAIL, f"connection to {where} failed: {exc}", None)


# --- 5. TLS -------------------------------------------------------------------

_NAME_KEYS = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


def _x509_name(name: Any) -> str:
    parts = [f"{_NAME_KEYS.get(k, k)}={v}" for rdn in name or () for k, v in rdn]
    return ", ".join(parts) or "(empty)"


def describe_certificate(cert: Mapping[str, Any], version: Optional[str],
                         now: float) -> CheckResult:
    """Subject, issuer and end of a verified certificate; warn when it ends soon."""
    not_after = str(cert.get("notAfter", ""))
    try:
        days = math.floor((ssl.cert_time_to_seconds(not_after) - now) / 86400)
    except ValueError:
        days = None
    left = f"{days} days left" if days is not None else "end date unreadable"
    detail = (f"{version or 'TLS'}, subject {_x509_name(cert.get('subject'))}, issuer "
              f"{_x509_name(cert.get('issuer'))}, valid until {not_after} ({left})")
    if days is not None and days < CERT_EXPIRY_WARNING_DAYS:
        return CheckResult("tls", Status.WARN, detail,
                           "renew the server's certificate before it expires: devices "
                           "will refuse the server from then on")
    return CheckResult("tls", Status.PASS, detail)


# OpenSSL verify codes (x509_vfy.h) that have a more useful hint than the default.
_X509_NOT_YET_VALID = 9
_X509_EXPIRED = 10
_X509_HOSTNAME_MISMATCH = 62


def tls_failure(host: str, exc: BaseException, now: float) -> CheckResult:
    """The handshake failed: say whether it is trust, the clock, the name or the protocol."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, message = exc.verify_code, exc.verify_message
        detail = f"certificate verification failed: {message} (code {code})"
        if code in (_X509_NOT_YET_VALID, _X509_EXPIRED):
            clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
            hint = (f"this device's clock says {clock}: if that is wrong, set it (see the "
                    "clock check) and keep it synced; otherwise renew the server's "
                    "certificate")
        elif code == _X509_HOSTNAME_MISMATCH:
            hint = (f"the certificate is not issued for {host}: use the name it is issued "
                    "for in the server URL, or reissue it with this name in its "
                    "subjectAltName")
        else:
            hint = ("this device does not trust the CA that signed the server's certificate: "
                    "install that CA in the system trust store (copy it to "
                    "/usr/local/share/ca-certificates/ and run update-ca-certificates)")
        return CheckResult("tls", Status.FAIL, detail, hint)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return CheckResult("tls", Status.FAIL, "no TLS handshake within the timeout",
                           "the port accepts connections but does not answer TLS: is it a "
                           "TLS port, or is the link dropping larger packets (MTU)?")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc  # OpenSSL's short name, when it gave one
        return CheckResult("tls", Status.FAIL, f"TLS handshake failed: {reason}",
                           "the server did not speak TLS as expected: check the scheme "
                           "(http:// or https://) and the port in the server URL")
    return CheckResult("tls", Status.FAIL, f"TLS handshake failed: {exc}",
                       "the connection dropped during the handshake: check the server's "
                       "TLS settings and any proxy in between")


# --- 6./7. WebSocket and authentication ---------------------------------------

_CLOSE_HINTS: Mapping[int, str] = {
    CloseCode.AUTH_FAILED: ("the server does not know this credential: re-register with "
                            "tether-agent register --force"),
    CloseCode.DEREGISTERED: ("this node was deregistered on the server: register the device "
                             "again with a new activation (tether-agent register --force)"),
    CloseCode.UNSUPPORTED_VERSION: (
        "agent and server speak no common protocol version (the reason names both): "
        "upgrade the agent from the server (its /agent/install.sh) or the server"),
    CloseCode.REPLACED: ("another connection of this node took over (a running agent "
                         "reconnecting): run the doctor again"),
    CloseCode.GOING_AWAY: "the server is shutting down: try again once it is back",
    CloseCode.MALFORMED: ("the server could not read the hello: compare tether-agent "
                          "--version with the server's version"),
    CloseCode.UNKNOWN_TYPE: ("the server could not read the hello: compare tether-agent "
                             "--version with the server's version"),
    CloseCode.UNEXPECTED: ("the server did not expect a hello (or got none in time): retry, "
                           "and check the server's log"),
    1011: "the server failed internally: check the server's log",
}


def describe_close(code: Optional[int], reason: str) -> CheckResult:
    """The server closed instead of answering the hello: what its close code means."""
    if code is None:
        return CheckResult("auth", Status.FAIL,
                           "the connection dropped before the server answered the hello",
                           "something on the way cut the connection (a proxy, or the link): "
                           "run the doctor again; if it repeats, check the server's log")
    try:
        name = CloseCode(code).name
    except ValueError:
        name = "close code"
    detail = f"closed by the server: {name} ({code})" + (f": {reason}" if reason else "")
    return CheckResult("auth", Status.FAIL, detail, _CLOSE_HINTS.get(code))


def describe_welcome(welcome: Welcome, node_id: str) -> CheckResult:
    return CheckResult("auth", Status.PASS,
                       f"welcome for {node_id}: server {welcome.server_version}, protocol "
                       f"{welcome.protocol}, keepalive {welcome.keepalive_interval:g} s "
                       f"+ {welcome.keepalive_timeout:g} s")


def upgrade_failure(url: str, exc: BaseException, timeout: float) -> CheckResult:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = ("no tether agent endpoint answers at this URL: check the server URL (scheme, "
                "port, path) and any proxy in between")
        if status in (301, 302, 307, 308):
            location = exc.response.headers.get("Location", "?")
            hint = f"the server redirects to {location}: register with that URL instead"
        return CheckResult("websocket", Status.FAIL,
                           f"{url}: the server answered HTTP {status} instead of switching "
                           "protocols", hint)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return CheckResult("websocket", Status.FAIL,
                           f"{url}: no upgrade within {timeout:g} s",
                           "the server accepted the connection but did not answer the "
                           "upgrade: check the server's log and any proxy in between")
    return CheckResult("websocket", Status.FAIL, f"{url}: upgrade failed: {exc}",
                       "check that this URL is a tether server and that nothing in between "
                       "(a proxy, a captive portal) rewrites the request")


# --- 8. clock -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Skew:
    seconds: float  # the server's clock minus this device's: positive = server ahead
    uncertainty: float  # +- seconds: the Date header's resolution and age, and the round trip


def clock_skew(date_header: str, sent_at: float, received_at: float) -> Skew:
    """Estimate server-minus-local from an HTTP ``Date`` and local send/receive times.

    The server answered at some instant between ``sent_at`` and
    ``received_at`` (local wall clock). ``Date`` has whole seconds, and
    servers refresh it once a second rather than per response (uvicorn does),
    so the server's clock then read somewhere in ``[date, date + DATE_AGE)``.
    The skew therefore lies in ``[date - received_at, date + DATE_AGE -
    sent_at]``; the estimate is the middle of that interval and the
    uncertainty its half width (1 s plus half the round trip).

    Raises:
        ValueError: ``date_header`` is not an HTTP date, or times run backwards.
    """
    if received_at < sent_at:
        raise ValueError("received before sent")
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"not an HTTP date: {date_header!r}") from None
    if server is None or server.tzinfo is None:  # no zone: not an HTTP date
        raise ValueError(f"not an HTTP date: {date_header!r}")
    stamp = server.timestamp()
    low, high = stamp - received_at, stamp + DATE_AGE - sent_at
    return Skew((low + high) / 2, (high - low) / 2)


def judge_clock(skew: Skew, limit: float = MAX_CLOCK_SKEW, note: str = "") -> CheckResult:
    if abs(skew.seconds) <= skew.uncertainty:
        detail = f"server and device clocks agree within {skew.uncertainty:.1f} s{note}"
    else:
        side = "ahead of" if skew.seconds > 0 else "behind"
        detail = (f"server clock {abs(skew.seconds):.1f} s {side} this device's "
                  f"(+- {skew.uncertainty:.1f} s){note}")
    if abs(skew.seconds) > limit:
        return CheckResult("clock", Status.FAIL, f"{detail}; more than {limit:g} s",
                           "set this device's clock and keep it synced: devices on closed "
                           "networks often have no NTP, so point chrony or systemd-timesyncd "
                           "at an NTP server inside the private network (the carrier's, or "
                           "one on the tether server's host)")
    return CheckResult("clock", Status.PASS, detail)


# --- rendering ----------------------------------------------------------------

_LABELS = {Status.PASS: "[ ok ]", Status.WARN: "[warn]", Status.FAIL: "[FAIL]",
           Status.SKIPPED: "[skip]", Status.NOT_APPLICABLE: "[ -- ]"}
_NAME_WIDTH = max(len(c) for c in CHECKS)


def render_result(result: CheckResult) -> str:
    line = f"{_LABELS[result.status]} {result.check:<{_NAME_WIDTH}}  {result.detail}"
    if result.hint:
        line += f"\n{'':{len(_LABELS[result.status]) + _NAME_WIDTH + 3}}hint: {result.hint}"
    return line


def render_summary(results: Sequence[CheckResult]) -> str:
    failed = [r.check for r in results if r.status is Status.FAIL]
    skipped = sum(1 for r in results if r.status is Status.SKIPPED)
    warned = sum(1 for r in results if r.status is Status.WARN)
    if failed:
        text = f"FAILED at {failed[0]}: {len(failed)} failed"
        if skipped:
            text += f", {skipped} skipped"
        return text
    if warned:
        return f"passed with {warned} warning{'s' if warned > 1 else ''}"
    return "all checks passed"


def render_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2)


def exit_code(results: Sequence[CheckResult]) -> int:
    return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else 0


# --- the checks' I/O ----------------------------------------------------------


_T = TypeVar("_T")


class _Context:
    """What one check learns and a later one needs."""

    def __init__(self, state_dir: Path, timeout: float,
                 ssl_context: Optional[ssl.SSLContext]) -> None:
        self.state_dir = state_dir
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.identity: Optional[Identity] = None
        self.target: Optional[Target] = None
        self.address = ""
        self.tls_verified = False
        self.upgraded = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.ws: Optional[ClientConnection] = None

    def run_async(self, awaitable: Awaitable[_T]) -> _T:
        """One loop for the whole run, so the WebSocket opened by one check
        is still there for the next."""
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        if self.loop is None:
            return
        try:
            if self.ws is not None:
                self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.ws = None
            self.loop.close()
            self.loop = None

    def tls_context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()


def _check_identity(ctx: _Context) -> CheckResult:
    where = ctx.state_dir / IDENTITY_FILE
    register = ("register this device first (tether-agent register --server URL "
                "--activation-id ID), or pass --state-dir where the agent keeps its identity")
    if not ctx.state_dir.exists():
        return CheckResult("identity", Status.FAIL,
                           f"state directory {ctx.state_dir} does not exist", register)
    if not ctx.state_dir.is_dir():
        return CheckResult("identity", Status.FAIL, f"{ctx.state_dir} is not a directory",
                           "pass --state-dir with the agent's state directory")
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CheckResult("identity", Status.FAIL, f"no {IDENTITY_FILE} in {ctx.state_dir}",
                           register)
    except PermissionError:
        owner = where.stat().st_uid if where.exists() else "?"
        return CheckResult("identity", Status.FAIL,
                           f"cannot read {where}: permission denied (running as uid "
                           f"{os.geteuid()}, the file belongs to uid {owner})",
                           "run the doctor as the agent's user (often root: sudo "
                           "tether-agent doctor)")
    except (OSError, UnicodeDecodeError) as exc:
        return CheckResult("identity", Status.FAIL, f"cannot read {where}: {exc}", None)
    result, identity = judge_identity(ctx.state_dir, text)
    if identity is not None:
        ctx.identity = identity
        ctx.target = server_target(identity.server_url)
    return result


def _check_permissions(ctx: _Context) -> CheckResult:
    dir_mode = ctx.state_dir.stat().st_mode
    file_mode = (ctx.state_dir / IDENTITY_FILE).stat().st_mode
    return judge_permissions(ctx.state_dir, dir_mode, file_mode)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _with_timeout(fn: Callable[[], Any], timeout: float, name: str) -> Any:
    """Run a call that has no timeout of its own (getaddrinfo) in a daemon thread.

    A resolver stuck past the timeout is left behind; the thread is a daemon,
    so it cannot keep the doctor from exiting.
    """
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)  # (ok, value or error)

    def work() -> None:
        try:
            box.put((True, fn()))
        except BaseException as exc:  # handed to the caller, re-raised there
            box.put((False, exc))

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout:g} s") from None
    if not ok:
        raise value
    return value


def _check_resolve(ctx: _Context) -> CheckResult:
    assert ctx.target is not None
    host, port = ctx.target.host, ctx.target.port
    if ctx.target.literal:
        ctx.address = host
        return CheckResult("resolve", Status.PASS, f"{host}: literal address, nothing to resolve")
    matches = find_in_hosts(parse_hosts(_read_text(HOSTS_PATH)), host)
    resolv = parse_resolv_conf(_read_text(RESOLV_CONF_PATH))
    addresses: list[str] = []
    error: Optional[str] = None
    try:
        infos = _with_timeout(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                              ctx.timeout, "doctor-resolve")
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
    except (OSError, UnicodeError) as exc:
        error = resolution_error(exc)
    result = describe_resolution(host, matches, resolv, addresses, error)
    if addresses:
        ctx.address = addresses[0]
    return result


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _check_route(ctx: _Context) -> CheckResult:
    assert ctx.target is not None
    # connect() on a UDP socket only asks the kernel for a route and a source
    # address; nothing is sent.
    with socket.socket(_family(ctx.address), socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((ctx.address, ctx.target.port))
            source = str(sock.getsockname()[0])
        except OSError as exc:
            return route_failure(ctx.address, exc, list_interfaces())
    return describe_route(ctx.address, source, list_interfaces())


def _check_tcp(ctx: _Context) -> CheckResult:
    assert ctx.target is not None
    port = ctx.target.port
    started = time.monotonic()
    try:
        sock = socket.create_connection((ctx.address, port), timeout=ctx.timeout)
    except OSError as exc:
        return tcp_failure(ctx.address, port, exc, ctx.timeout)
    elapsed = time.monotonic() - started
    sock.close()
    return CheckResult("tcp", Status.PASS,
                       f"connected to {ctx.address}:{port} in {_milliseconds(elapsed)}")


def _check_tls(ctx: _Context) -> CheckResult:
    assert ctx.target is not None
    if not ctx.target.secure:
        return CheckResult("tls", Status.NOT_APPLICABLE,
                           "not used: the server URL is http://, so the link is not encrypted")
    host, port = ctx.target.host, ctx.target.port
    try:
        sock = socket.create_connection((ctx.address, port), timeout=ctx.timeout)
    except OSError as exc:
        return tcp_failure(ctx.address, port, exc, ctx.timeout)
    started = time.monotonic()
    try:
        with ctx.tls_context().wrap_socket(sock, server_hostname=host) as tls:
            cert = tls.getpeercert()
            version = tls.version()
    except OSError as exc:  # ssl.SSLError is an OSError
        return tls_failure(host, exc, time.time())
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    ctx.tls_verified = True
    result = describe_certificate(cert or {}, version, time.time())
    return dataclasses.replace(result, detail=f"{result.detail}; handshake in "
                                              f"{_milliseconds(elapsed)}")


def _check_websocket(ctx: _Context) -> CheckResult:
    assert ctx.identity is not None and ctx.target is not None
    url = websocket_url(ctx.identity.server_url)
    options: dict[str, Any] = {}
    if ctx.target.secure and ctx.ssl_context is not None:
        options["ssl"] = ctx.ssl_context
    started = time.monotonic()
    try:
        ctx.ws = ctx.run_async(connect(
            url, open_timeout=ctx.timeout, ping_interval=None, close_timeout=ctx.timeout,
            max_size=MAX_FRAME, compression=None,
            user_agent_header=f"tether-agent/{__version__} (doctor)", **options))
    except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as exc:
        return upgrade_failure(url, exc, ctx.timeout)
    elapsed = time.monotonic() - started
    ctx.upgraded = True
    return CheckResult("websocket", Status.PASS, f"{url} upgraded in {_milliseconds(elapsed)}")


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


async def _say_hello(ws: ClientConnection, identity: Identity, timeout: float) -> CheckResult:
    hello = Hello(PROTOCOL_VERSION, identity.node_id, identity.credential, __version__)
    try:
        await ws.send(encode(hello))
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return describe_close(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
    except asyncio.TimeoutError:
        return CheckResult("auth", Status.FAIL, f"no answer to the hello within {timeout:g} s",
                           "the server took the connection but did not answer: check the "
                           "server's log")
    try:
        message = decode(frame, SERVER_MESSAGES)
    except ProtocolError as exc:
        return CheckResult("auth", Status.FAIL, f"the server's answer is not valid: {exc}",
                           "compare tether-agent --version with the server's version")
    if not isinstance(message, Welcome):
        return CheckResult("auth", Status.FAIL,
                           f"the server answered the hello with {message.TYPE!r}, not welcome",
                           "compare tether-agent --version with the server's version")
    return describe_welcome(message, identity.node_id)


def _check_auth(ctx: _Context) -> CheckResult:
    assert ctx.ws is not None and ctx.identity is not None
    ws, ctx.ws = ctx.ws, None
    try:
        result: CheckResult = ctx.run_async(_say_hello(ws, ctx.identity, ctx.timeout))
    finally:
        # A normal close (1000) and nothing else: whatever the server offered
        # (commands for this node) stays Pending for the real agent.
        ctx.run_async(ws.close(1000, "tether-agent doctor"))
    return result


def _check_clock(ctx: _Context) -> CheckResult:
    assert ctx.target is not None
    target = ctx.target
    note = ""
    conn: http.client.HTTPConnection
    if target.secure:
        tls = ctx.tls_context()
        if not ctx.tls_verified:
            # Only the Date header is read and nothing secret is sent; a wrong
            # clock is the common reason verification failed, so still look.
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
            note = " (read without verifying the certificate, which failed)"
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=ctx.timeout,
                                           context=tls)
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=ctx.timeout)
    try:
        sent_at = time.time()
        conn.request("GET", target.path + CLOCK_PATH,
                     headers={"User-Agent": f"tether-agent/{__version__} (doctor)"})
        response = conn.getresponse()
        received_at = time.time()
        date = response.getheader("Date")
    except (OSError, http.client.HTTPException) as exc:
        if target.secure and not ctx.tls_verified:
            return CheckResult("clock", Status.SKIPPED,
                               f"skipped: tls failed, and no Date could be read without it "
                               f"either ({exc})")
        return CheckResult("clock", Status.FAIL, f"GET {target.path + CLOCK_PATH} failed: {exc}",
                           "the server answered the WebSocket but not plain HTTP: check any "
                           "proxy in between" if ctx.upgraded else
                           "the server did not answer an HTTP GET: check the server's log")
    finally:
        conn.close()
    if not date:
        return CheckResult("clock", Status.WARN,
                           f"the server's answer (HTTP {response.status}) has no Date header, "
                           "so the clock cannot be compared",
                           "a proxy in between may strip it; compare the clocks by hand "
                           "(date -u on both)")
    try:
        skew = clock_skew(date, sent_at, received_at)
    except ValueError as exc:
        return CheckResult("clock", Status.WARN, f"cannot read the server's Date: {exc}", None)
    return judge_clock(skew, note=note)


_STEPS: Mapping[str, Callable[[_Context], CheckResult]] = {
    "identity": _check_identity,
    "permissions": _check_permissions,
    "resolve": _check_resolve,
    "route": _check_route,
    "tcp": _check_tcp,
    "tls": _check_tls,
    "websocket": _check_websocket,
    "auth": _check_auth,
    "clock": _check_clock,
}


def iter_checks(state_dir: Path, timeout: float = DEFAULT_TIMEOUT,
                ssl_context: Optional[ssl.SSLContext] = None) -> Iterator[CheckResult]:
    """Run every check in order, yielding each result as soon as it is known.

    Args:
        state_dir: the agent's state directory.
        timeout: seconds allowed for each network step.
        ssl_context: trust to verify the server with; the system trust store
            (``ssl.create_default_context()``, as the agent uses) when None.
    """
    ctx = _Context(state_dir, timeout, ssl_context)
    done: dict[str, CheckResult] = {}
    try:
        for check in CHECKS:
            blocker = blocking_failure(check, done)
            if blocker is not None:
                result = CheckResult(check, Status.SKIPPED, f"skipped: {blocker} failed")
            else:
                try:
                    result = _STEPS[check](ctx)
                except Exception as exc:  # a diagnostic tool must report, not crash
                    result = CheckResult(check, Status.FAIL,
                                         f"the doctor itself failed: {type(exc).__name__}: "
                                         f"{exc}", "please report this output as a bug")
            done[check] = result
            yield result
    finally:
        ctx.close()


def run(state_dir: Path, *, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT,
        out: Optional[TextIO] = None) -> int:
    """``tether-agent doctor``: print every check, return the exit code."""
    out = out or sys.stdout
    if not (timeout > 0 and math.isfinite(timeout)):
        print("tether-agent: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    results: list[CheckResult] = []
    if not as_json:
        print(f"tether-agent {__version__} doctor: state directory {state_dir}", file=out,
              flush=True)
    for result in iter_checks(state_dir, timeout):
        results.append(result)
        if not as_json:
            print(render_result(result), file=out, flush=True)
    print(render_json(results) if as_json else render_summary(results), file=out)
    return exit_code(results)
