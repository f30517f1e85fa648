"""``tether-agent``: register a device, then run the agent.

Exit codes, so install scripts can react: 0 done, 2 bad usage, 3 refused by
the server (wrong code, expired, limit reached, deregistered), 4 already
registered, 5 server unreachable or not a tether server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import pwd
import shlex
import sys
from pathlib import Path
from typing import Optional, TextIO

from tether import __version__
from tether.agent import configure
from tether.agent.backoff import DEFAULT_BASE, DEFAULT_CAP, Backoff
from tether.agent.doctor import DEFAULT_TIMEOUT as DOCTOR_TIMEOUT
from tether.agent.doctor import run as run_doctor
from tether.agent.doctor.results import Status
from tether.agent.link import INVENTORY_CHECK_INTERVAL, Agent, FatalLinkError
from tether.agent.registration import RegistrationFailed, normalise_server_url, register
from tether.agent.spool import DEFAULT_CAP as DEFAULT_SPOOL_CAP
from tether.agent.state import (
    CA_FILE,
    DEFAULT_STATE_DIR,
    load_identity,
    pinned_context,
    save_ca,
    save_identity,
)
from tether.protocol.invocation import command_for
from tether.protocol.netaddr import plain_http_off_machine
from tether.protocol.terminal import log_to_stderr, visible
from tether.protocol.trust import fingerprint

EXIT_REFUSED = 3
EXIT_ALREADY_REGISTERED = 4
EXIT_UNREACHABLE = 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-agent",
                                description="The tether device agent. It dials out to a tether "
                                            "server; the device needs no inbound port.")
    p.add_argument("--version", action="version", version=f"tether-agent {__version__}")
    sub = p.add_subparsers(dest="action", required=True, metavar="COMMAND")

    r = sub.add_parser("register", help="register this device with an activation",
                       description="Register this device and keep its identity in the state "
                                   "directory (owner-only permissions).")
    r.add_argument("--server", required=True, metavar="URL",
                   help="the tether server, e.g. http://tether.internal:8720")
    r.add_argument("--activation-id", metavar="ID", default=os.environ.get("TETHER_ACTIVATION_ID"),
                   help="the activation's id (or set TETHER_ACTIVATION_ID; "
                        "'tether activation create --env' prints both)")
    r.add_argument("--activation-code", metavar="CODE",
                   default=os.environ.get("TETHER_ACTIVATION_CODE"),
                   help="the activation code (or set TETHER_ACTIVATION_CODE to keep it out "
                        "of the process list)")
    r.add_argument("--name", metavar="NAME", help="computer name to register (default: hostname)")
    r.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the identity is kept (default {DEFAULT_STATE_DIR})")
    r.add_argument("--ca", type=Path, metavar="FILE",
                   help="pin this CA (PEM) for an https:// server, e.g. the ca.pem of "
                        "'tether server --tls auto'; kept in the state directory")
    r.add_argument("--insecure", action="store_true",
                   help="allow a plain http:// server off this machine (no TLS: anyone on "
                        "the path can read and change the traffic)")
    r.add_argument("--force", action="store_true",
                   help="replace an existing identity; the old credential stops working")

    run = sub.add_parser("run", help="connect to the server and serve commands",
                         description="Connect to the server and serve until stopped, "
                                     "reconnecting with capped, jittered backoff.")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    run.add_argument("--reconnect-cap", type=float, default=DEFAULT_CAP, metavar="SECONDS",
                     help="longest time from the start of one reconnect attempt to the next, "
                          "a slow failed dial included (or that dial's own 20 s timeout, "
                          f"if longer) (default {DEFAULT_CAP:g})")
    run.add_argument("--run-as", metavar="USER",
                     help="user scripts run as (needs the agent to run as root; default: "
                          "the agent's own user)")
    run.add_argument("--spool-cap", type=int, default=DEFAULT_SPOOL_CAP, metavar="BYTES",
                     help="output kept on disk until the server stores it; beyond this the "
                          "oldest finished output is dropped and reported "
                          f"(default {DEFAULT_SPOOL_CAP // 2**20} MiB)")
    run.add_argument("--inventory-interval", type=float, default=INVENTORY_CHECK_INTERVAL,
                     metavar="SECONDS",
                     help="how often addresses are checked for changes (default "
                          f"{INVENTORY_CHECK_INTERVAL:g}); a change is sent at once")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])

    st = sub.add_parser("status", help="show this device's identity")
    st.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")

    dr = sub.add_parser("doctor", help="check, step by step, that this device can reach its server",
                        description="Check the identity, name resolution, route, TCP, TLS, "
                                    "WebSocket, authentication and clock toward the server, "
                                    "in that order, with a hint for each failure. The "
                                    "authentication check sends a probe hello, which the "
                                    "server answers without touching a running agent's "
                                    "connection.")
    dr.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    dr.add_argument("--json", action="store_true",
                    help="print a JSON list of {check, ok, status, detail, hint}")
    dr.add_argument("--timeout", type=float, default=DOCTOR_TIMEOUT, metavar="SECONDS",
                    help=f"for each network step (default {DOCTOR_TIMEOUT:g})")

    cf = sub.add_parser("configure", help="change the server URL or CA, keeping this identity",
                        description="Point this registered device at another server URL "
                                    "(http:// to https://, a new address) or CA, keeping "
                                    "its node id and credential. The new settings are "
                                    "checked first, as the doctor does (up to a probe "
                                    "hello with this node's credential); nothing is saved "
                                    "unless they work. Restart a running agent afterwards.")
    cf.add_argument("--server", required=True, metavar="URL",
                    help="the server's URL from now on, e.g. https://tether.internal:8720")
    cf.add_argument("--ca", type=Path, metavar="FILE",
                    help="pin this CA (PEM) for an https:// server (default: keep the CA "
                         "pinned now, if any)")
    cf.add_argument("--no-ca", action="store_true",
                    help="drop the pinned CA: trust the system's CA store")
    cf.add_argument("--insecure", action="store_true",
                    help="allow a plain http:// server off this machine (no TLS)")
    cf.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    cf.add_argument("--timeout", type=float, default=DOCTOR_TIMEOUT, metavar="SECONDS",
                    help=f"for each network step of the check (default {DOCTOR_TIMEOUT:g})")
    return p


def _say(message: str, file: TextIO = sys.stdout) -> None:
    """Print one line for people, every unsafe character shown as an escape.

    Messages quote what a server answered (a refusal, an error) and what the device
    holds: a wrong URL or a hostile host must not clear the installer's screen or
    write its clipboard. The agent writes to the terminal only through here.
    """
    print(visible(message), file=file)


def _register(args: argparse.Namespace) -> int:
    if not args.activation_id:
        _say("tether-agent: --activation-id (or TETHER_ACTIVATION_ID) is required",
              file=sys.stderr)
        return 2
    if not args.activation_code:
        _say("tether-agent: --activation-code (or TETHER_ACTIVATION_CODE) is required",
              file=sys.stderr)
        return 2
    existing = load_identity(args.state_dir)
    if existing is not None and not args.force:
        _say(f"tether-agent: already registered as {existing.node_id} with "
              f"{existing.server_url}; use --force to replace this identity", file=sys.stderr)
        return EXIT_ALREADY_REGISTERED
    if _plain_http_refused(args.server, args.insecure):
        return 2
    try:
        ca = args.ca.read_bytes() if args.ca is not None else None
        context = pinned_context(ca) if ca is not None else None
        if ca is not None and not args.server.startswith("https://"):
            raise ValueError("--ca is for an https:// server")
        identity = register(args.server, args.activation_id, args.activation_code,
                            args.name, existing, context)
    except OSError as exc:
        _say(f"tether-agent: cannot read --ca: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        _say(f"tether-agent: {exc}", file=sys.stderr)
        return 2
    except RegistrationFailed as exc:
        _say(f"tether-agent: registration failed: {exc}", file=sys.stderr)
        return EXIT_REFUSED if exc.kind == "refused" else EXIT_UNREACHABLE
    if ca is not None:
        save_ca(args.state_dir, ca)
    else:  # a new registration without --ca trusts the system store again
        with contextlib.suppress(FileNotFoundError):
            (args.state_dir / CA_FILE).unlink()
    save_identity(args.state_dir, identity)
    _say(f"registered as {identity.node_id} with {identity.server_url}")
    if existing is not None:
        _say(f"replaced {existing.node_id}; its credential no longer works")
    for line in _next_steps(args.state_dir, identity.node_id):
        _say(line)
    return 0


def _next_steps(state_dir: Path, node_id: str) -> list[str]:
    """What to type after ``register``: the exact ``run`` line, with the same state directory.

    A bare "registered as mi-..." left a first user guessing the next command, and a
    ``run`` without the ``--state-dir`` given to ``register`` looks in
    /var/lib/tether-agent and answers "not registered".
    """
    run = f"{command_for('tether-agent')} run"
    if state_dir != DEFAULT_STATE_DIR:
        run += f" --state-dir {shlex.quote(str(state_dir))}"
    return ["next, start the agent (it stays in the foreground; Ctrl-C stops it):",
            f"  {run}",
            f"then, on the operator's side, 'tether nodes list' shows {node_id} Online and "
            f"'tether run --target {node_id} -- uptime' runs a command on it"]


def _plain_http_refused(server: str, insecure: bool) -> bool:
    """Refuse plain HTTP off this machine unless --insecure (register and configure)."""
    if not plain_http_off_machine(server):
        return False
    if not insecure:
        _say(f"tether-agent: {server} is plain HTTP off this machine: the credential "
             "and every command would cross the network readable. Use the server's "
             "https:// URL (with --ca for its own CA), or pass --insecure to accept "
             "that", file=sys.stderr)
        return True
    _say(f"tether-agent: WARNING: --insecure: talking plain HTTP to {server}",
         file=sys.stderr)
    return False


def _configure(args: argparse.Namespace) -> int:
    identity = load_identity(args.state_dir)
    if identity is None:
        _say(f"tether-agent: not registered (no identity in {args.state_dir}); "
             "run 'tether-agent register' first", file=sys.stderr)
        return EXIT_REFUSED
    try:
        url = normalise_server_url(args.server)
        if args.ca is not None and args.no_ca:
            raise ValueError("--ca and --no-ca: give one")
        if not (args.timeout > 0 and math.isfinite(args.timeout)):
            raise ValueError("--timeout must be a positive number of seconds")
        if _plain_http_refused(url, args.insecure):
            return 2
        try:
            given = args.ca.read_bytes() if args.ca is not None else None
        except OSError as exc:
            raise ValueError(f"cannot read --ca: {exc}") from None
        ca = configure.new_trust(args.state_dir, url, given, args.no_ca)
    except ValueError as exc:
        _say(f"tether-agent: {exc}", file=sys.stderr)
        return 2
    moved = dataclasses.replace(identity, server_url=url)
    results = configure.check(args.state_dir, moved, ca, args.timeout)
    failed = configure.blocking(results)
    if failed:
        _say(f"tether-agent: {url} does not work for {identity.node_id}; nothing was "
             f"changed (still {identity.server_url}):", file=sys.stderr)
        for result in failed:
            _say(f"  {result.check}: {result.detail}", file=sys.stderr)
            if result.hint:
                _say(f"  hint: {result.hint}", file=sys.stderr)
        if failed[0].check == "auth":
            _say("  (configure keeps this node's credential: the server must be the one it "
                 "registered with, or one on the same database)", file=sys.stderr)
            return EXIT_REFUSED
        return EXIT_UNREACHABLE
    configure.apply(args.state_dir, identity, url, ca)
    pinned = f", pinning the CA with SHA-256 fingerprint {fingerprint(ca)}" if ca else ""
    _say(f"{identity.node_id} now uses {url}{pinned} (was {identity.server_url})")
    for result in results:
        if result.check == "auth" or result.status is Status.WARN:
            _say(f"  {result.check}: {result.detail}"
                 + (f" (hint: {result.hint})" if result.hint else ""))
    _say(f"restart a running agent to use it: tether-agent run --state-dir {args.state_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    log_to_stderr(args.log_level)
    identity = load_identity(args.state_dir)
    if identity is None:
        _say(f"tether-agent: not registered (no identity in {args.state_dir}); "
              "run 'tether-agent register' first", file=sys.stderr)
        return EXIT_REFUSED
    if not args.reconnect_cap > 0:
        _say("tether-agent: --reconnect-cap must be a positive number of seconds",
              file=sys.stderr)
        return 2
    run_as = None
    if args.run_as:
        try:
            run_as = pwd.getpwnam(args.run_as)
        except KeyError:
            _say(f"tether-agent: no user {args.run_as!r}", file=sys.stderr)
            return 2
        if os.getuid() != 0 and run_as.pw_uid != os.getuid():
            _say("tether-agent: --run-as needs the agent to run as root", file=sys.stderr)
            return 2
    backoff = Backoff(base=min(DEFAULT_BASE, args.reconnect_cap), cap=args.reconnect_cap)
    agent = Agent(identity, args.state_dir, backoff, run_as,
                  spool_cap=args.spool_cap, inventory_interval=args.inventory_interval)
    try:
        asyncio.run(agent.run_forever())
    except FatalLinkError as exc:
        _say(f"tether-agent: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 0
    return 0


def _doctor(args: argparse.Namespace) -> int:
    return run_doctor(args.state_dir, as_json=args.json, timeout=args.timeout)


def _status(args: argparse.Namespace) -> int:
    identity = load_identity(args.state_dir)
    if identity is None:
        _say(f"not registered (no identity in {args.state_dir})")
        return 1
    _say(f"node {identity.node_id} registered with {identity.server_url}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"register": _register, "run": _run, "status": _status,
               "doctor": _doctor, "configure": _configure}[args.action]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
