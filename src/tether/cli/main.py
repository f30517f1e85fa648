"""``tether``: the operator's command line, and ``tether server``."""

from __future__ import annotations

import argparse
import getpass
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tether import __version__

if TYPE_CHECKING:
    from tether.server.tls import TlsFiles
from tether.cli import access, admin, commands, fleet, sessions
from tether.cli.client import ApiFailure, Client, load_login, missing_login, save_login
from tether.cli.output import closed_pipe, fail, out
from tether.protocol.netaddr import is_loopback_host, is_wildcard_host
from tether.protocol.statuses import CommandStatus
from tether.protocol.trust import pinned_context
from tether.server.config import (
    DEFAULT_AGENT_BYTE_BURST,
    DEFAULT_AGENT_BYTE_RATE,
    DEFAULT_AGENT_MESSAGE_BURST,
    DEFAULT_AGENT_MESSAGE_RATE,
    DEFAULT_AUDIT_REPEAT_WINDOW,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_CREDENTIAL_MAX_AGE,
    DEFAULT_FAILED_TOKENS_PER_ADDRESS,
    DEFAULT_HANDSHAKES_PER_ADDRESS,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HEADS_PER_ADDRESS,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_REGISTRATIONS_PER_ACTIVATION,
    DEFAULT_REGISTRATIONS_PER_ADDRESS,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_SESSION_IDLE_TIMEOUT,
    DEFAULT_SESSION_MAX_DURATION,
)

EXIT_API = 3
Handler = Callable[[Client, argparse.Namespace], int]


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("server", help="run the tether server",
                       description="Run the control plane. By default everything lives in the "
                                   "data directory: an SQLite database and an outputs folder.")
    s.add_argument("--data-dir", type=Path, default=Path("data"), metavar="DIR",
                   help="database, outputs and the admin token (default ./data)")
    s.add_argument("--database-url", metavar="URL",
                   help="postgresql://... to keep state in PostgreSQL instead of SQLite")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1; use 0.0.0.0 to serve devices on the network)")
    s.add_argument("--port", type=int, default=8720, help="port (default 8720; 0 picks one)")
    s.add_argument("--keepalive-interval", type=float, default=DEFAULT_KEEPALIVE_INTERVAL,
                   metavar="SECONDS", help="agents send a keepalive after this much silence "
                   f"(default {DEFAULT_KEEPALIVE_INTERVAL:g}; see docs/benchmarks.md for "
                   "the traffic each setting costs)")
    s.add_argument("--keepalive-timeout", type=float, default=DEFAULT_KEEPALIVE_TIMEOUT,
                   metavar="SECONDS", help="a link silent for interval + timeout is "
                   f"ConnectionLost (default {DEFAULT_KEEPALIVE_TIMEOUT:g})")
    s.add_argument("--output-cap", type=int, default=16 * 1024 * 1024, metavar="BYTES",
                   help="default bytes kept per output stream (default 16 MiB)")
    s.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="serve HTTPS/WSS with this certificate (PEM, chain included)")
    s.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    s.add_argument("--tls", choices=["auto"], help="auto: make a private CA (once, in "
                   "DATA/tls) and a certificate for the --tls-name values; agents pin the CA")
    s.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="host name or address devices dial (repeatable; default: --host if "
                        "specific, this host's name, localhost, 127.0.0.1)")
    s.add_argument("--agent-message-rate", type=float, default=DEFAULT_AGENT_MESSAGE_RATE,
                   metavar="N", help="messages a second one agent may send after a burst "
                   f"(default {DEFAULT_AGENT_MESSAGE_RATE:g}; beyond: closed with 4008)")
    s.add_argument("--agent-message-burst", type=int, default=DEFAULT_AGENT_MESSAGE_BURST,
                   metavar="N", help=f"that burst (default {DEFAULT_AGENT_MESSAGE_BURST})")
    s.add_argument("--agent-byte-rate", type=float, default=DEFAULT_AGENT_BYTE_RATE,
                   metavar="BYTES", help="bytes a second one agent may send after a burst; "
                   "beyond, the server reads from it more slowly (default "
                   f"{DEFAULT_AGENT_BYTE_RATE:g}, 1 MiB; 0: no limit)")
    s.add_argument("--agent-byte-burst", type=int, default=DEFAULT_AGENT_BYTE_BURST,
                   metavar="BYTES", help=f"that burst (default {DEFAULT_AGENT_BYTE_BURST}, "
                   "16 MiB)")
    s.add_argument("--handshakes-per-address", type=int, metavar="N",
                   default=DEFAULT_HANDSHAKES_PER_ADDRESS,
                   help="agent WebSocket handshakes in progress at once from one address "
                        f"(default {DEFAULT_HANDSHAKES_PER_ADDRESS})")
    s.add_argument("--hello-timeout", type=float, metavar="SECONDS",
                   default=DEFAULT_HELLO_TIMEOUT,
                   help="how long a new agent connection may stay silent before its hello "
                        f"(default {DEFAULT_HELLO_TIMEOUT:g})")
    s.add_argument("--credential-max-age", type=float, metavar="SECONDS",
                   default=DEFAULT_CREDENTIAL_MAX_AGE,
                   help="rotate a connected node's credential once it is this old (default "
                        f"{DEFAULT_CREDENTIAL_MAX_AGE:g}, 30 days; 0: never)")
    s.add_argument("--session-idle-timeout", type=float, metavar="SECONDS",
                   default=DEFAULT_SESSION_IDLE_TIMEOUT,
                   help="end a shell, forward or copy after this long without traffic "
                        f"(default {DEFAULT_SESSION_IDLE_TIMEOUT:g}, 20 minutes)")
    s.add_argument("--session-max-duration", type=float, metavar="SECONDS",
                   default=DEFAULT_SESSION_MAX_DURATION,
                   help="end any session after this long (default "
                        f"{DEFAULT_SESSION_MAX_DURATION:g}, 12 hours)")
    s.add_argument("--record-input", action="store_true",
                   help="record what operators type in shells too (output is always "
                        "recorded); mind that typed passwords land in the recording")
    s.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP on an address other than loopback (no TLS)")
    s.add_argument("--registrations-per-address", type=int, metavar="N",
                   default=DEFAULT_REGISTRATIONS_PER_ADDRESS,
                   help="failed registrations allowed per minute from one address "
                        f"(default {DEFAULT_REGISTRATIONS_PER_ADDRESS})")
    s.add_argument("--registrations-per-activation", type=int, metavar="N",
                   default=DEFAULT_REGISTRATIONS_PER_ACTIVATION,
                   help="failed registrations allowed per minute for one activation "
                        f"(default {DEFAULT_REGISTRATIONS_PER_ACTIVATION})")
    s.add_argument("--failed-tokens-per-address", type=int, metavar="N",
                   default=DEFAULT_FAILED_TOKENS_PER_ADDRESS,
                   help="wrong operator tokens allowed per minute from one address; past "
                        "it, a wrong one is answered 429, a right one still accepted "
                        f"(default {DEFAULT_FAILED_TOKENS_PER_ADDRESS})")
    s.add_argument("--audit-repeat-window", type=float, metavar="SECONDS",
                   default=DEFAULT_AUDIT_REPEAT_WINDOW,
                   help="identical refused calls within this long are one audit record and "
                        f"a count (default {DEFAULT_AUDIT_REPEAT_WINDOW:g})")
    s.add_argument("--header-timeout", type=float, metavar="SECONDS",
                   default=DEFAULT_HEADER_TIMEOUT,
                   help="an HTTP request's head must arrive within this (default "
                        f"{DEFAULT_HEADER_TIMEOUT:g}; beyond: 408 and closed)")
    s.add_argument("--body-timeout", type=float, metavar="SECONDS",
                   default=DEFAULT_BODY_TIMEOUT,
                   help="...and its body within this after the head (default "
                        f"{DEFAULT_BODY_TIMEOUT:g})")
    s.add_argument("--send-timeout", type=float, metavar="SECONDS",
                   default=DEFAULT_SEND_TIMEOUT,
                   help="a client must take what the server has written for it within "
                        f"this (default {DEFAULT_SEND_TIMEOUT:g}; beyond: dropped)")
    s.add_argument("--heads-per-address", type=int, metavar="N",
                   default=DEFAULT_HEADS_PER_ADDRESS,
                   help="connections from one address (IPv6: /64) still sending their "
                        f"request head (default {DEFAULT_HEADS_PER_ADDRESS}; beyond: "
                        "closed at once; trusted proxies are exempt)")
    s.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="a reverse proxy whose X-Forwarded-For names the client "
                        "(repeatable; default none, not even loopback)")
    s.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                   help="auto (default): uvloop when installed, else asyncio's own loop")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _bundle_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("agent-bundle", help="prepare what the server serves to install agents")
    acts = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = acts.add_parser("fetch", help="download the agent's dependency wheels",
                        description="Download the pure-Python wheels the agent needs, for "
                                    "every supported Python, into DATA/agent-bundle. Run it "
                                    "where a package index (or a wheel folder) is reachable; "
                                    "devices then install from the server alone.")
    f.add_argument("--data-dir", type=Path, default=Path("data"), metavar="DIR")
    f.add_argument("--index-url", metavar="URL", help="package index to use instead of PyPI")
    f.add_argument("--find-links", metavar="DIR", help="a folder of wheels to use, offline")
    f.add_argument("--server", metavar="URL", help="the server's URL as devices dial it, "
                   "for the install line printed at the end (default: a SERVER placeholder, "
                   "https when DATA/tls has tether's private CA)")


def _bundle(args: argparse.Namespace) -> int:
    from tether.server.agent_dist.bundle import AgentBundle, fetch_dependencies, install_line
    from tether.server.agent_dist.wheel import agent_wheel_name
    from tether.server.config import Settings

    settings = Settings.for_data_dir(args.data_dir)
    folder = settings.agent_bundle_dir
    index: list[str] = []
    if args.index_url:
        index += ["--index-url", args.index_url]
    if args.find_links:
        index += ["--no-index", "--find-links", args.find_links]
    try:
        wheels = fetch_dependencies(folder, index)
    except subprocess.CalledProcessError:
        fail("pip could not download the wheels (see above)")
        return 1
    AgentBundle(folder).prepare()
    for wheel in wheels:
        out(str(wheel))
    out(f"{len(wheels)} dependency wheel(s) in {folder}, and the agent's own wheel "
        f"({folder / agent_wheel_name()}, packed from this code at each server start)")
    ca = settings.tls_dir / "ca.pem"
    out("devices can now run:")
    for line in install_line(args.server, ca if ca.is_file() else None):
        out(f"  {line}")
    return 0


def _history_flags(p: argparse.ArgumentParser) -> None:
    """The filters and paging ``commands list`` and ``nodes history`` share."""
    p.add_argument("--status", choices=[s.value for s in CommandStatus],
                   help="only the commands with this status")
    p.add_argument("--since", metavar="DURATION", help="only the last 30m, 12h, 7d...")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--before", metavar="COMMAND_ID", help="the page after this command "
                   "(the last of the page before: list says it when there is more)")
    _json(p)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether", description="Operate a fleet of devices "
                                "through a tether server. Set TETHER_SERVER and TETHER_TOKEN, "
                                "or run 'tether login'.")
    p.add_argument("--version", action="version", version=f"tether {__version__}")
    sub = p.add_subparsers(dest="area", required=True, metavar="COMMAND")
    _server_parser(sub)
    _bundle_parser(sub)

    lg = sub.add_parser("login", help="save the server URL and an operator token")
    lg.add_argument("--server", required=True, metavar="URL")
    lg.add_argument("--token", help="the token (default: read it from standard input or a "
                                    "prompt, so it stays out of your shell history)")
    lg.add_argument("--ca", type=Path, metavar="FILE",
                    help="pin this CA (PEM) for an https:// server, e.g. the ca.pem of "
                         "'tether server --tls auto'; kept with the login (TETHER_CA, if "
                         "set, still overrides it)")

    act = sub.add_parser("activation", help="create, list and revoke activations").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    ac = act.add_parser("create", help="create an activation (its code is shown once)")
    ac.add_argument("--limit", type=int, default=1, help="devices it may register (default 1)")
    ac.add_argument("--expires", default="24h", metavar="DURATION",
                    help="how long it is valid: 30m, 12h, 7d... (default 24h)")
    ac.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="tag given to every node it registers (repeatable)")
    ac.add_argument("--name", metavar="PREFIX", help="prefix for the registered nodes' names")
    ac.add_argument("--env", action="store_true",
                    help="print only 'export TETHER_ACTIVATION_ID=... TETHER_ACTIVATION_CODE=...',"
                         " for eval before 'tether-agent register' on the same machine")
    _json(ac)
    ac.set_defaults(handler=fleet.activation_create)
    al = act.add_parser("list", help="list activations")
    _json(al)
    al.set_defaults(handler=fleet.activation_list)
    ar = act.add_parser("revoke", help="refuse every later registration with an activation")
    ar.add_argument("activation_id")
    _json(ar)
    ar.set_defaults(handler=fleet.activation_revoke)

    nodes = sub.add_parser("nodes", help="see and manage nodes").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    nl = nodes.add_parser("list", help="list registered nodes")
    nl.add_argument("--ping-status", choices=["Online", "ConnectionLost", "Deregistered"])
    nl.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    nl.add_argument("--name", metavar="SUBSTRING")
    nl.add_argument("--activation-id", metavar="ID")
    nl.add_argument("--ip", metavar="ADDR", help="any address of the node, or its peer address")
    _json(nl)
    nl.set_defaults(handler=fleet.nodes_list)
    ns = nodes.add_parser("show", help="one node with its inventory")
    ns.add_argument("node_id")
    _json(ns)
    ns.set_defaults(handler=fleet.nodes_show)
    nt = nodes.add_parser("tag", help="set (or --remove) tags on a node")
    nt.add_argument("node_id")
    nt.add_argument("tags", nargs="*", metavar="KEY=VALUE")
    nt.add_argument("--remove", action="append", default=[], metavar="KEY")
    _json(nt)
    nt.set_defaults(handler=fleet.nodes_tag)
    nd = nodes.add_parser("deregister", help="revoke a node's credential and disconnect it")
    nd.add_argument("node_id")
    _json(nd)
    nd.set_defaults(handler=fleet.nodes_deregister)
    nr = nodes.add_parser("rotate-credential", help="give a connected node a new credential "
                          "(the old one stops once the agent has it)")
    nr.add_argument("node_id")
    _json(nr)
    nr.set_defaults(handler=fleet.nodes_rotate_credential)
    nh = nodes.add_parser("history", help="the node's invocations across commands, newest "
                          "first")
    nh.add_argument("node_id", metavar="NODE", help="a node id or name")
    _history_flags(nh)
    nh.set_defaults(handler=commands.nodes_history)

    access.add_parsers(sub)
    access.add_audit_parsers(sub)
    admin.add_parsers(sub)
    sessions.add_parsers(sub)

    r = sub.add_parser("run", help="run a script on nodes",
                       description="Run a script on every target and wait for the results. "
                                   "The exit status is 0 only if every invocation succeeded.")
    r.add_argument("--target", action="append", required=True, metavar="T",
                   help="a node id or name (name:NAME if it holds a colon; a name several "
                   "nodes share is refused, with their ids), tag:KEY=VALUE or all; repeated, "
                   "the nodes any of them selects (OR); tags joined by a comma, "
                   "tag:site=a,tag:role=gw, the nodes with all of them (AND)")
    r.add_argument("--timeout", metavar="DURATION",
                   help="execution timeout, e.g. 90s, 10m, 2h; the whole process group is "
                   "killed (default: the server's, 1h)")
    r.add_argument("--delivery-timeout", metavar="DURATION",
                   help="how long to wait for offline nodes (default: the server's, 1h)")
    r.add_argument("--workdir", metavar="DIR", help="working directory on the node "
                   "(default: the agent user's home)")
    r.add_argument("--comment", metavar="TEXT")
    r.add_argument("--output-cap", type=int, metavar="BYTES",
                   help="bytes kept per stream (default: the server's, 16 MiB)")
    r.add_argument("--file", metavar="PATH", help="read the script from a file")
    r.add_argument("--online-only", action="store_true", help="target only the nodes "
                   "Online now; the others get no invocation (the summary counts them)")
    r.add_argument("--progress", choices=["auto", "nodes", "counts"], default="auto",
                   help="while waiting, a line per node change (nodes) or per change of "
                   "the status counts (counts); auto: nodes up to 50 targets. Outputs "
                   "print as nodes finish either way (up to 1,000 nodes; beyond, at the end)")
    r.add_argument("--no-wait", action="store_true", help="print the command id and return")
    r.add_argument("--raw", action="store_true", help="write the output's bytes to a "
                   "terminal as they are, escape sequences included (default: shown, not "
                   "obeyed; a pipe or a file always gets the exact bytes)")
    _json(r)
    r.add_argument("script", nargs=argparse.REMAINDER, help="the script, after --")
    r.set_defaults(handler=commands.run)

    cmds = sub.add_parser("commands", help="follow and manage commands").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    cl = cmds.add_parser("list", help="recent commands, newest first")
    cl.add_argument("--node", metavar="NODE", help="only the commands that ran (or will "
                    "run) on this node (its id or name)")
    cl.add_argument("--operator", metavar="NAME", help="only the commands NAME sent")
    _history_flags(cl)
    cl.set_defaults(handler=commands.commands_list)
    cs = cmds.add_parser("show", help="one command, per node")
    cs.add_argument("command_id")
    _json(cs)
    cs.set_defaults(handler=commands.commands_show)
    co = cmds.add_parser("output", help="a node's whole output")
    co.add_argument("command_id")
    co.add_argument("node_id", nargs="?", help="the node (needed only when the command "
                    "ran on more than one)")
    co.add_argument("--stream", choices=["stdout", "stderr"], help="only this stream, "
                    "written to standard output (so '> file' captures it)")
    co.add_argument("--raw", action="store_true", help="write the output's bytes to a "
                    "terminal as they are, escape sequences included (default: shown, not "
                    "obeyed; a pipe or a file always gets the exact bytes)")
    co.set_defaults(handler=commands.commands_output)
    cc = cmds.add_parser("cancel", help="cancel a command on every node")
    cc.add_argument("command_id")
    _json(cc)
    cc.set_defaults(handler=commands.commands_cancel)
    return p


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    """The TlsFiles to serve with, or None; a usage error is a ValueError."""
    from tether.server import tls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert and args.tls:
        raise ValueError("give --tls-cert/--tls-key or --tls auto, not both")
    if args.tls_name and not args.tls:
        raise ValueError("--tls-name is for --tls auto")
    if args.tls_cert:
        for path in (args.tls_cert, args.tls_key):
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
        tls.check_pair(args.tls_cert, args.tls_key)
        return tls.TlsFiles(args.tls_cert, args.tls_key)
    if args.tls == "auto":
        names = args.tls_name or [n for n in (
            None if is_wildcard_host(args.host) else args.host,
            socket.gethostname(), "localhost", "127.0.0.1") if n]
        return tls.auto(args.data_dir / "tls", list(dict.fromkeys(names)))
    return None


def _serve(args: argparse.Namespace) -> int:
    from tether.server.access.client_address import parse_proxies
    from tether.server.config import Settings
    from tether.server.runner import serve

    try:
        tls_files = _tls(args)
        parse_proxies(args.trusted_proxy)
    except ValueError as exc:
        fail(str(exc))
        return 2
    if tls_files is None and not is_loopback_host(args.host):
        if not args.insecure:
            fail(f"refusing to serve plain HTTP on {args.host}: tokens, node credentials and "
                 "commands would cross the network readable. Use --tls auto (a private CA), "
                 "--tls-cert/--tls-key, or a TLS reverse proxy in front of a server on "
                 "127.0.0.1; --insecure to do it anyway")
            return 2
        out(f"tether: WARNING: --insecure: plain HTTP on {args.host}", err=True)

    settings = Settings.for_data_dir(
        args.data_dir, args.database_url, host=args.host, port=args.port,
        keepalive_interval=args.keepalive_interval, keepalive_timeout=args.keepalive_timeout,
        output_cap=args.output_cap, event_loop=args.event_loop,
        registrations_per_address=args.registrations_per_address,
        registrations_per_activation=args.registrations_per_activation, tls=tls_files,
        failed_tokens_per_address=args.failed_tokens_per_address,
        audit_repeat_window=args.audit_repeat_window,
        agent_message_rate=args.agent_message_rate,
        agent_message_burst=args.agent_message_burst,
        agent_byte_rate=args.agent_byte_rate, agent_byte_burst=args.agent_byte_burst,
        handshakes_per_address=args.handshakes_per_address,
        hello_timeout=args.hello_timeout, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, send_timeout=args.send_timeout,
        heads_per_address=args.heads_per_address,
        trusted_proxies=tuple(args.trusted_proxy),
        credential_max_age=args.credential_max_age,
        session_idle_timeout=args.session_idle_timeout,
        session_max_duration=args.session_max_duration, record_input=args.record_input)
    try:
        serve(settings, args.log_level)
    except OSError as exc:
        fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _login(args: argparse.Namespace) -> int:
    token = args.token
    if not token:
        token = (getpass.getpass("operator token: ") if sys.stdin.isatty()
                 else sys.stdin.readline()).strip()
    ca = None
    if args.ca is not None:
        if not args.server.startswith("https://"):
            raise ValueError("--ca is for an https:// server")
        try:
            ca = args.ca.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read --ca: {exc}") from None
        pinned_context(ca)  # a file that is no CA is refused before anything is saved
    client = Client(args.server, token, ca=ca)
    if ca is not None:  # checked with exactly the CA that will be saved
        client.context = pinned_context(ca)
    who = client.get("/whoami")
    path = save_login(args.server, token, ca)
    out(f"logged in to {args.server} as {who['operator']}; saved in {path} (owner-only"
        + (", with the CA" if ca is not None else "") + ")")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # every command's output, read by '| head' and closed
        return closed_pipe()


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.area == "server":
        return _serve(args)
    if args.area == "agent-bundle":
        return _bundle(args)
    if args.area == "admin":  # on the server machine, with no token
        return admin.main(args)
    try:
        if args.area == "login":
            return _login(args)
        server, token, ca = load_login()
        if not server or not token:
            fail(missing_login(server))
            return 2
        handler: Handler = args.handler
        if getattr(args, "script", None) and args.script[0] == "--":
            args.script = args.script[1:]
        return handler(Client(server, token, ca=ca), args)
    except ApiFailure as exc:
        fail(f"{exc} ({exc.code})" if exc.code not in ("unreachable",) else str(exc))
        return EXIT_API
    except BrokenPipeError:
        raise
    except (ValueError, OSError) as exc:
        fail(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
