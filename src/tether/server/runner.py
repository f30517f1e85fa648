"""Run the server under uvicorn on a socket we bind ourselves.

Binding first lets ``--port 0`` work (tests and benchmarks ask the kernel for
a free port) and lets us print the real address once it is listening.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn

from tether.protocol.invocation import command_for
from tether.protocol.netaddr import is_loopback_host, is_wildcard_host
from tether.protocol.terminal import log_to_stderr
from tether.server import collector
from tether.server.access.client_address import is_trusted_proxy, parse_proxies
from tether.server.admin_access import AdminAccess
from tether.server.app import build_app
from tether.server.config import Settings
from tether.server.http_guard import (
    ErrorBodyWebSocketProtocol,
    HttpGuard,
    HttpLimits,
    guarded_h11,
)

# An output frame carries at most 64 KiB of output; JSON escaping can grow it.
WS_MAX_FRAME = 2 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def http_guard(settings: Settings) -> HttpGuard:
    proxies = parse_proxies(settings.trusted_proxies)
    return HttpGuard(HttpLimits(settings.header_timeout, settings.body_timeout,
                                settings.heads_per_address, settings.send_timeout),
                     exempt=lambda host: is_trusted_proxy(host, proxies))


def url_of(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _first_steps(settings: Settings, url: str, access: AdminAccess | None = None) -> str:
    """How to register a first device, in the words that work for this server's address.

    A copied command that fails is worse than none: the agent refuses plain HTTP to
    another machine without ``--insecure``, and pins a private CA with ``--ca``; and
    the token line names ``DATA/admin-token`` only when ``access`` found a working
    token there (None: assume it, as on a first start).
    """
    token = access.token_shell() if access else f"$(cat {settings.admin_token_file})"
    sign_in = access.sign_in() if access else f"the token in {settings.admin_token_file}"
    wildcard = is_wildcard_host(settings.host)
    if wildcard:  # the address it prints is no device's to dial
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://SERVER:{rest.rsplit(':', 1)[1]}"
    register = ("tether-agent register --server {url}{extra} "
                "--activation-id ID --activation-code CODE")
    tether, agent = command_for("tether"), command_for("tether-agent")
    state = f"--state-dir {shlex.quote(str(settings.data_dir / 'agent'))}"  # no root needed
    operator = f"export TETHER_SERVER={url} TETHER_TOKEN={token}"
    create = f"{tether} activation create            # prints an activation id and code"
    device: list[str]
    if settings.tls is not None and settings.tls.ca is not None:
        operator += f" TETHER_CA={settings.tls.ca}"
        device = [f"# on the device, with a copy of {settings.tls.ca} (compare its fingerprint):",
                  register.format(url=url, extra=" --ca ca.pem"), "tether-agent run"]
    elif settings.tls is not None or not is_loopback_host(settings.host):
        extra = "" if settings.tls is not None else " --insecure"
        device = ["# on the device:", register.format(url=url, extra=extra), "tether-agent run"]
    else:
        # Every line runs as pasted, in order: register reads the id and code from the
        # environment (tests/integration/test_readme_quickstart.py runs them).
        create = (f'eval "$({tether} activation create --env)"   '
                  "# TETHER_ACTIVATION_ID and _CODE, for register")
        device = ["# on this machine (for devices elsewhere, serve TLS: --host 0.0.0.0 "
                  "--tls auto --tls-name NAME):",
                  f"{agent} register --server {url} {state}",
                  f"{agent} run {state}"]
    lines = [f"Web console: {url}/ (sign in with {sign_in})",
             "To register a first device:", operator, create, *device]
    if wildcard:
        lines.append("# SERVER: this machine's name or address as devices reach it"
                     + (" (one the certificate names: --tls-name)" if settings.tls else ""))
    return "\n".join(lines[:2] + ["  " + line for line in lines[2:]])


def serve(settings: Settings, log_level: str = "info") -> None:
    log_to_stderr(log_level)  # uvicorn's records too (log_config=None): one visible line each
    sock = bind(settings.host, settings.port)
    # h11 rather than httptools: httptools accepts headers of any size (a 1 MB header was
    # taken whole); h11 stops at MAX_HEADER_BYTES. The cost is in docs/benchmarks.md.
    # Our h11 protocol adds the head and body deadlines and the per-address cap
    # (http_guard.py), where the WebSocket protocol's refused handshakes become
    # ErrorBodies too. Proxy headers are ours too (access/client_address.py): uvicorn's
    # would trust X-Forwarded-For from loopback.
    front = build_app(settings)
    config = uvicorn.Config(front, http=guarded_h11(http_guard(settings)), proxy_headers=False,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            ws=ErrorBodyWebSocketProtocol, ws_max_size=WS_MAX_FRAME,
                            ws_ping_interval=None, ws_per_message_deflate=False,
                            log_level=log_level, log_config=None, access_log=False,
                            lifespan="on",
                            ssl_certfile=settings.tls.cert if settings.tls else None,
                            ssl_keyfile=settings.tls.key if settings.tls else None)
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.05)
        if server.started:
            collector.settle()  # start-up is done: see collector.py
            url = url_of(sock, settings.tls is not None)
            print(f"tether server listening on {url}", flush=True)
            fingerprint = settings.tls.fingerprint() if settings.tls else None
            if fingerprint and settings.tls and settings.tls.ca:
                print(f"TLS with tether's private CA {settings.tls.ca}\n"
                      f"  SHA-256 fingerprint {fingerprint}\n"
                      f"  devices pin it: tether-agent register --ca ca.pem ...", flush=True)
            print(_first_steps(settings, url, front.app.state.tether.admin_access), flush=True)
        await task

    run_on_loop(main(), settings.event_loop)


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for or, on ``auto``, when installed (uvicorn[standard] brings it).

    The profile of a 10,000-agent fan-out spent a tenth of the server's time in the
    stdlib selector's bookkeeping for each WebSocket frame; see docs/benchmarks.md.
    """
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """``asyncio.run`` on the chosen loop (uvloop needs ``asyncio.Runner``, Python 3.11+)."""
    factory = loop_factory(event_loop)
    if factory is not None and sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:
        asyncio.run(main)
