"""``tether sessions list|show|replay|terminate`` and the parsers of shell, forward and cp."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any, Callable

from tether.cli.client import Client
from tether.cli.node_arg import node_id_of
from tether.cli.output import emit, out, print_json, recording, table, when


def _run_of(module: str) -> Callable[[Client, argparse.Namespace], int]:
    """``tether.cli.<module>.run``, imported only once that command is chosen.

    The stream commands bring websockets and asyncio, about a third of the
    CLI's start-up, which every other ``tether`` call would otherwise pay.
    """
    def run(client: Client, args: argparse.Namespace) -> int:
        handler: Callable[[Client, argparse.Namespace], int] = importlib.import_module(
            f"tether.cli.{module}").run
        return handler(client, args)
    return run


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sh = sub.add_parser("shell", help="an interactive shell on a node (recorded)",
                        description="Open a terminal on the node through the server. Keys, "
                                    "Ctrl-C and window size reach the remote shell; the exit "
                                    "status is the shell's (255 if the session ended "
                                    "otherwise). The output is recorded: tether sessions "
                                    "replay ID.")
    sh.add_argument("node_id", metavar="NODE", help="a node id or name")
    sh.add_argument("--user", help="the account to log in as (needs sessions:choose-user; "
                                   "default: the agent's --run-as user)")
    sh.set_defaults(handler=_run_of("shell"))

    fw = sub.add_parser("forward", help="forward a local port to HOST:PORT as the node sees it",
                        description="Listen on LOCAL_PORT here; each connection reaches "
                                    "HOST:PORT from the node (localhost: the node itself). "
                                    "LOCAL_PORT 0 picks a free port. Ctrl-C stops it.")
    fw.add_argument("node_id", metavar="NODE", help="a node id or name")
    fw.add_argument("spec", metavar="LOCAL_PORT:HOST:PORT")
    fw.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                    help="local address to listen on (default 127.0.0.1)")
    fw.set_defaults(handler=_run_of("forward"))

    cp = sub.add_parser("cp", help="copy a file to or from a node (checked, resumable)",
                        description="tether cp LOCAL NODE:/PATH uploads; tether cp "
                                    "NODE:/PATH LOCAL downloads (NODE a node id or name). "
                                    "SHA-256 is checked and the "
                                    "permission bits kept, minus the receiver's umask (never "
                                    "setuid, setgid or sticky); a dropped link resumes where "
                                    "it stopped.")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.add_argument("--force", action="store_true", help="replace an existing file")
    cp.add_argument("--resume-for", type=float, default=300.0, metavar="SECONDS",
                    help="keep resuming after link drops for this long (default 300)")
    _json(cp)
    cp.set_defaults(handler=_run_of("copy"))

    ss = sub.add_parser("sessions", help="list, show, replay and terminate sessions")
    acts = ss.add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = acts.add_parser("list", help="recent sessions, newest first")
    sl.add_argument("--node", metavar="NODE", help="a node id or name")
    sl.add_argument("--operator", metavar="NAME")
    sl.add_argument("--active", action="store_true", help="only sessions still open")
    sl.add_argument("--limit", type=int, default=50)
    _json(sl)
    sl.set_defaults(handler=sessions_list)
    sw = acts.add_parser("show", help="one session")
    sw.add_argument("session_id")
    _json(sw)
    sw.set_defaults(handler=sessions_show)
    sr = acts.add_parser("replay", help="play a shell's recording in this terminal")
    sr.add_argument("session_id")
    sr.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast")
    sr.add_argument("--no-wait", action="store_true",
                    help="print the output at once, without the original pauses")
    sr.add_argument("--cast", action="store_true",
                    help="print the asciicast v2 file itself (for asciinema play)")
    sr.set_defaults(handler=sessions_replay)
    st = acts.add_parser("terminate", help="end a session (yours, or with sessions:terminate)")
    st.add_argument("session_id")
    _json(st)
    st.set_defaults(handler=sessions_terminate)


def _target(row: dict[str, Any]) -> str:
    t = row["target"]
    if row["kind"] == "shell":
        return f"user {t.get('user') or '(default)'}"
    if row["kind"] == "forward":
        return f"{t.get('host')}:{t.get('port')}"
    return f"{'->' if t.get('direction') == 'to_node' else '<-'} {t.get('path')}"


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    table(["SESSION", "NODE", "NAME", "OPERATOR", "KIND", "STATUS", "STARTED", "ENDED",
           "TARGET"],
          [[r["session_id"], r["node_id"], r.get("node_name"), r["operator"], r["kind"],
            r["status"], when(r["started_at"]), when(r["ended_at"]), _target(r)]
           for r in rows])


def ending(row: dict[str, Any]) -> str:
    """How the session ended, its exit code said once: a shell's reason is already
    "exited with N", and a forward or a copy has no exit code to show."""
    if row["ended_at"] is None:
        return "still open"
    reason = row["end_reason"] or row["status"]
    code = row["exit_code"]
    if code is not None and f"exited with {code}" not in reason:
        reason = f"{reason} (exit code {code})"
    return f"ended: {reason}"


def sessions_list(client: Client, args: argparse.Namespace) -> int:
    node_id = node_id_of(client, args.node) if args.node else None
    rows = client.get("/sessions", node_id=node_id, operator=args.operator,
                      active="true" if args.active else None, limit=args.limit)
    _print(rows, args.json)
    return 0


def sessions_show(client: Client, args: argparse.Namespace) -> int:
    row = client.get(f"/sessions/{args.session_id}")
    if args.json:
        print_json(row)
        return 0
    _print([row], False)
    out()
    out(f"{ending(row)}; "
        f"{row['bytes_to_node']} bytes to the node, {row['bytes_from_node']} from it; "
        f"recording {row['recording'] or '-'}")
    return 0


def sessions_replay(client: Client, args: argparse.Namespace) -> int:
    cast = client.request("GET", f"/sessions/{args.session_id}/recording", raw=True).decode()
    if args.cast:
        recording(cast)
        return 0
    last = 0.0
    for line in cast.splitlines()[1:]:
        at, code, data = json.loads(line)
        if code != "o":
            continue
        if not args.no_wait and at > last:
            time.sleep(min((at - last) / max(args.speed, 0.01), 5.0))
        last = at
        recording(data)
    return 0


def sessions_terminate(client: Client, args: argparse.Namespace) -> int:
    emit(args.json, client.post(f"/sessions/{args.session_id}/terminate"),
         lambda row: f"{row['session_id']}: {row['status']} ({row['end_reason'] or '-'})")
    return 0
