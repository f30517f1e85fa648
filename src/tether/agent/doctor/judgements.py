"""The doctor's verdicts: what the facts one check gathered mean, and what to do about them.

Pure functions of their arguments (file contents, modes, addresses,
exceptions, a certificate, close codes, times): the I/O that gathers those
facts is in ``probes``, so every verdict and hint is tested on given input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import errno
import ipaddress
import json
import math
import os
import socket
import ssl
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from websockets.exceptions import InvalidStatus

from tether.agent.doctor.results import CheckResult, Status
from tether.agent.state import IDENTITY_FILE, Identity
from tether.protocol.errors import CloseCode
from tether.protocol.ids import is_node_id
from tether.protocol.messages import Interface, Welcome

__all__ = [
    "CERT_EXPIRY_WARNING_DAYS",
    "DATE_AGE",
    "HOSTS_PATH",
    "MAX_CLOCK_SKEW",
    "RESOLV_CONF_PATH",
    "HostsEntry",
    "ResolvConf",
    "Skew",
    "Target",
    "clock_skew",
    "describe_certificate",
    "describe_close",
    "describe_resolution",
    "describe_route",
    "describe_welcome",
    "find_in_hosts",
    "judge_clock",
    "judge_identity",
    "judge_permissions",
    "judge_probe_end",
    "parse_hosts",
    "parse_resolv_conf",
    "resolution_error",
    "route_failure",
    "server_target",
    "tcp_failure",
    "tls_failure",
    "upgrade_failure",
]

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
    return CheckResult("auth", Status.FAIL, _closed_by_server(code, reason),
                       _CLOSE_HINTS.get(code))


def _closed_by_server(code: int, reason: str) -> str:
    try:
        name = CloseCode(code).name
    except ValueError:
        name = "close code"
    return f"closed by the server: {name} ({code})" + (f": {reason}" if reason else "")


def describe_welcome(welcome: Welcome, node_id: str) -> CheckResult:
    return CheckResult("auth", Status.PASS,
                       f"welcome for {node_id}: server {welcome.server_version}, protocol "
                       f"{welcome.protocol}, keepalive {welcome.keepalive_interval:g} s "
                       f"+ {welcome.keepalive_timeout:g} s")


def judge_probe_end(welcome: Welcome, node_id: str, closed: bool, code: Optional[int] = None,
                    reason: str = "") -> CheckResult:
    """The verdict on a welcomed probe hello, from how the server ended the connection.

    A server that knows probes closes right after the welcome with 1000
    (``probe answered``): the expected end, and a pass. One that predates them
    ignores the field, as the protocol tells receivers to, and keeps the
    connection as the node's: the running agent was replaced (4005).

    Args:
        welcome: the server's answer to the hello.
        node_id: the node the hello was for.
        closed: whether the server closed the connection after the welcome;
            False when it sent something else or kept it open past the timeout.
        code: the server's close code; None when the connection dropped without one.
        reason: the server's close reason.
    """
    welcomed = describe_welcome(welcome, node_id)
    if closed and code == CloseCode.NORMAL:
        return welcomed
    if not closed:
        return CheckResult("auth", Status.WARN,
                           f"{welcomed.detail}; but the server kept the connection open "
                           "instead of closing it: it predates probe hellos and took this "
                           "one for the node's connection",
                           "a running agent was replaced (close code 4005) and reconnects by "
                           "itself; upgrade the server so that the doctor leaves it alone")
    if code is None:
        return CheckResult("auth", Status.WARN,
                           f"{welcomed.detail}; then the connection dropped without a close",
                           "something on the way cut the connection (a proxy, or the link): "
                           "run the doctor again; if it repeats, check the server's log")
    return CheckResult("auth", Status.WARN,
                       f"{welcomed.detail}; then {_closed_by_server(code, reason)}",
                       _CLOSE_HINTS.get(code))


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

