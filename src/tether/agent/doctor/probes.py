"""The doctor's I/O: each check gathers its facts, bounded by the timeout, and hands
them to a verdict in ``judgements``; the runner goes through the checks in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import math
import os
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional, TextIO, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tether import __version__
from tether.agent.doctor.judgements import (
    HOSTS_PATH,
    RESOLV_CONF_PATH,
    Target,
    clock_skew,
    describe_certificate,
    describe_close,
    describe_resolution,
    describe_route,
    find_in_hosts,
    judge_clock,
    judge_identity,
    judge_permissions,
    judge_probe_end,
    parse_hosts,
    parse_resolv_conf,
    resolution_error,
    route_failure,
    server_target,
    tcp_failure,
    tls_failure,
    upgrade_failure,
)
from tether.agent.doctor.results import (
    CHECKS,
    EXIT_USAGE,
    CheckResult,
    Status,
    blocking_failure,
    exit_code,
    render_json,
    render_result,
    render_summary,
)
from tether.agent.inventory import list_interfaces
from tether.agent.link import MAX_FRAME, websocket_url
from tether.agent.state import CA_FILE, IDENTITY_FILE, Identity, pinned_context
from tether.protocol.errors import ProtocolError
from tether.protocol.messages import SERVER_MESSAGES, Hello, Welcome, decode, encode
from tether.protocol.terminal import visible, visible_lines
from tether.protocol.versions import PROTOCOL_VERSION

__all__ = ["CLOCK_PATH", "DEFAULT_TIMEOUT", "iter_checks", "run"]

# Each network step (resolve, TCP, TLS, upgrade, hello, HTTP) gets this long.
# An LTE round trip is 50-500 ms and a radio waking from idle adds 1-2 s of
# connection setup, so a healthy step takes well under 3 s; 10 s still tells
# a black-holed path (no answer at all) from a slow one without making the
# person at the device wait a minute for the verdict.
DEFAULT_TIMEOUT = 10.0
CLOCK_PATH = "/api/v1/openapi.json"

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
    hello = Hello(PROTOCOL_VERSION, identity.node_id, identity.credential, __version__,
                  probe=True)
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
    # The server closes a probe once it has welcomed it; that close is the
    # expected end. Anything else first means it took the probe for a session.
    try:
        await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return judge_probe_end(message, identity.node_id, True, rcvd.code if rcvd else None,
                               rcvd.reason if rcvd else "")
    except asyncio.TimeoutError:
        pass
    return judge_probe_end(message, identity.node_id, False)


def _check_auth(ctx: _Context) -> CheckResult:
    assert ctx.ws is not None and ctx.identity is not None
    ws, ctx.ws = ctx.ws, None
    try:
        result: CheckResult = ctx.run_async(_say_hello(ws, ctx.identity, ctx.timeout))
    finally:
        # Nothing to do once the server closed the probe. If it kept the
        # connection instead, a normal close (1000) and nothing else: whatever
        # it offered (commands for this node) stays Pending for the real agent.
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


def _pinned(state_dir: Path) -> Optional[ssl.SSLContext]:
    """The CA pinned at registration, as the agent itself would use it."""
    try:
        return pinned_context((state_dir / CA_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def run(state_dir: Path, *, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT,
        out: Optional[TextIO] = None) -> int:
    """``tether-agent doctor``: print every check, return the exit code."""
    out = out or sys.stdout
    if not (timeout > 0 and math.isfinite(timeout)):
        print("tether-agent: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    results: list[CheckResult] = []
    if not as_json:
        print(visible(f"tether-agent {__version__} doctor: state directory {state_dir}"), file=out,
              flush=True)
    for result in iter_checks(state_dir, timeout, _pinned(state_dir)):
        results.append(result)
        if not as_json:
            # A check's detail quotes the server (a close reason, a refusal): shown, not obeyed.
            print(visible_lines(render_result(result)), file=out, flush=True)
    print(render_json(results) if as_json else visible_lines(render_summary(results)), file=out)
    return exit_code(results)
