"""``tether run`` and ``tether commands ...``.

``run`` waits by long-polling the command's change counter, so each status
change is printed as soon as the server stores it, and its exit status says
whether every invocation succeeded (0) or not (1).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from tether.cli.client import Client
from tether.cli.node_arg import node_id_of
from tether.cli.output import device_output, emit, out, print_json, table, when
from tether.cli.parsing import parse_duration

TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
LIVE = {"Pending", "InProgress"}  # an invocation not yet ended
POLL_WAIT = 25.0
# Above this many nodes, progress is a line of counts, not a line per node.
PER_NODE_PROGRESS = 50
# Up to this many, the outputs of a counted fan-out still print as nodes finish, from
# its whole list read again at most every STREAM_EVERY seconds (a list of 1,000 is
# about 300 KB); above it, all at the end.
STREAM_OUTPUTS = 1000
STREAM_EVERY = 1.0


def _script(args: argparse.Namespace) -> str:
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if args.script:
        return " ".join(args.script)
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise ValueError("give a script after --, with --file, or on standard input")


def run(c: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "targets": args.target, "script": _script(args),
        "workdir": args.workdir, "comment": args.comment}
    # Unset, the server's defaults apply: one default, whichever client asks.
    for key, given in (("timeout", args.timeout), ("delivery_timeout", args.delivery_timeout)):
        if given is not None:
            body[key] = parse_duration(given)
    if args.output_cap is not None:
        body["output_cap"] = args.output_cap
    if args.online_only:
        body["online_only"] = True
    if args.no_wait:
        command = c.post("/commands", body)
        if args.json:
            print_json(command)
        else:
            out(command["command_id"])
        return 0
    # Counts only: the per-node list of a big fan-out is fetched when it is needed.
    command = c.request("POST", "/commands", body=body, query={"invocations": "false"})
    cid = command["command_id"]
    nodes = sum(command["counts"].values())
    left_out = _left_out(command)
    if not args.json:
        out(f"command {cid} on {nodes} node(s){left_out}", err=True)
        if command["offline"]:
            out(f"  {_offline(command['offline'], command)}; Ctrl-C stops waiting, the "
                "command goes on", err=True)
    per_node = args.progress == "nodes" or (args.progress == "auto"
                                            and nodes <= PER_NODE_PROGRESS)
    if per_node:
        command = {**c.get(f"/commands/{cid}"), "offline": command["offline"]}
    done: set[str] = set()

    def finished(inv: dict[str, Any], timeout: float) -> None:
        """Print a node's outcome and output once, as soon as it is known."""
        if not args.json and inv["node_id"] not in done:
            done.add(inv["node_id"])
            _print_invocation(inv, _outputs(c, cid, inv), args.raw, timeout)

    try:
        command = _wait(c, command, quiet=args.json, finished=finished, per_node=per_node)
    except KeyboardInterrupt:
        out(err=True)
        out(f"stopped waiting; the command goes on. Follow it with 'tether commands show "
            f"{cid}' or stop it with 'tether commands cancel {cid}'", err=True)
        return 130
    if args.json:
        outputs = {inv["node_id"]: _outputs(c, cid, inv) for inv in command["invocations"]}
        print_json({"command_id": cid, "status": command["status"],
                    "left_out": command.get("left_out", 0), "invocations": [
                        {**inv, **{k: v.decode("utf-8", "replace")
                                   for k, v in outputs[inv["node_id"]].items()}}
                        for inv in command["invocations"]]})
    else:
        for inv in command["invocations"]:  # a big fan-out's, all at the end
            finished(inv, command["timeout"])
        out(f"command {cid}: {command['status']} ({_counts(command)}){left_out}", err=True)
    return 0 if command["status"] == "Success" else 1


def _left_out(created: dict[str, Any]) -> str:
    """What ``--online-only`` left out, for the first and the last line."""
    n = created["left_out"]
    return f"; {n} node(s) not Online left out (--online-only)" if n else ""


def _offline(n: int, command: dict[str, Any]) -> str:
    deadline = when(command["created_at"] + command["delivery_timeout"])
    return f"{n} node(s) offline: delivery is attempted until {deadline} (--delivery-timeout)"


def _wait(c: Client, command: dict[str, Any], quiet: bool,
          finished: Callable[[dict[str, Any], float], None], per_node: bool
          ) -> dict[str, Any]:
    """Follow a command: one line per node change, or per count change for a big fleet.

    A node's outcome and output are handed to ``finished`` as soon as it ends; in a
    counted fan-out, once the whole list is read again (at most every STREAM_EVERY s,
    up to STREAM_OUTPUTS nodes: a bigger one's list is fetched once, at the end).
    While targets that were offline at submission still wait, a change says how
    many and until when.
    """
    path = f"/commands/{command['command_id']}"
    nodes = sum(command["counts"].values())
    offline = command.get("offline", 0)
    seen: dict[str, str] = {}
    last_counts = ""
    ended, listed_at = 0, 0.0  # ended invocations in the counts, when last listed whole
    while True:
        if per_node:
            for inv in command["invocations"]:
                if not quiet and seen.get(inv["node_id"]) != inv["status"]:
                    out(f"  {node_label(inv)}  {inv['status']}", err=True)
                    if inv["status"] not in LIVE:
                        finished(inv, command["timeout"])
                seen[inv["node_id"]] = inv["status"]
        elif not quiet and _counts(command) != last_counts:
            last_counts = _counts(command)
            out(f"  {last_counts}", err=True)
            now_ended = sum(n for s, n in command["counts"].items() if s not in LIVE)
            if (nodes <= STREAM_OUTPUTS and now_ended > ended
                    and time.monotonic() - listed_at >= STREAM_EVERY):
                ended, listed_at = now_ended, time.monotonic()
                whole = c.get(path)
                for inv in whole["invocations"]:
                    if inv["status"] not in LIVE:
                        finished(inv, whole["timeout"])
        # Nodes online at submission have it already; the Pending beyond them are offline.
        waiting = min(offline, command["counts"].get("Pending", 0))
        if command["status"] in TERMINAL:
            return command if per_node else c.get(path)
        if waiting < offline:
            offline = waiting
            if waiting and not quiet:
                out(f"  still {_offline(waiting, command)}", err=True)
        command = c.get(path, after=command["version"], wait=POLL_WAIT,
                        invocations=str(per_node).lower())


def _outputs(c: Client, cid: str, inv: dict[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for stream in ("stdout", "stderr"):
        size = inv[f"{stream}_size"]
        out[stream] = (c.request("GET", f"/commands/{cid}/invocations/{inv['node_id']}/"
                                 f"{stream}", raw=True) if size else b"")
    return out


def _counts(command: dict[str, Any]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(command["counts"].items()))


def ending(inv: dict[str, Any], timeout: float) -> tuple[str | None, str | None]:
    """How an invocation ended, in words, and what its reason adds to them: the one
    place the CLI says it (``run``'s headers, ``commands show``'s rows).

    A negative exit code is the signal that killed the script: a TimedOut ``exit -15``
    is ``killed by SIGTERM after the 2 s timeout`` (which is the agent's reason, said
    once). None when there is no exit code (never started, still running).
    """
    code, reason = inv["exit_code"], inv["reason"]
    if code is None:
        return None, reason
    if code >= 0:
        return f"exit {code}", reason
    try:
        killed = f"killed by {signal.Signals(-code).name}"
    except ValueError:
        killed = f"killed by signal {-code}"
    if inv["status"] == "TimedOut":
        return f"{killed} after the {timeout:g} s timeout", None
    return killed, reason


def cut(inv: dict[str, Any], streams: tuple[str, ...] = ("stdout", "stderr")) -> list[str]:
    """What the output cap cut off, a line a stream (the server's ``*_truncated``)."""
    return [f"{s} was cut at the output cap ({inv[f'{s}_size']} bytes)"
            for s in streams if inv[f"{s}_truncated"]]


def node_label(inv: dict[str, Any]) -> str:
    """A node as the CLI names it beside a result: its id (what one pastes) and, when
    it has one, its name in brackets (what people read): ``mi-... (gw-12)``."""
    name = inv.get("node_name")
    return f"{inv['node_id']} ({name})" if name else str(inv["node_id"])


def _print_invocation(inv: dict[str, Any], outputs: dict[str, bytes], raw: bool,
                      timeout: float) -> None:
    said, reason = ending(inv, timeout)
    how = f"  {said}" if said else ""
    extra = f": {reason}" if reason else ""
    out(f"=== {node_label(inv)}  {inv['status']}{how}{extra}")
    device_output(outputs["stdout"], raw=raw)
    device_output(outputs["stderr"], err=True, raw=raw)
    for line in cut(inv):
        out(f"--- {line}")


def _listed(c: Client, args: argparse.Namespace, node_id: str | None) -> list[dict[str, Any]]:
    """One page of ``GET /commands`` as the flags filter it (on the server, in SQL,
    before the limit); when the page is full, how to get the next, on stderr."""
    since = time.time() - parse_duration(args.since) if args.since else None
    cmds: list[dict[str, Any]] = c.get(
        "/commands", limit=args.limit, node_id=node_id, status=args.status, since=since,
        operator=getattr(args, "operator", None), before=args.before)
    if cmds and len(cmds) == args.limit and not args.json:
        out(f"more: the same with --before {cmds[-1]['command_id']}", err=True)
    return cmds


def commands_list(c: Client, args: argparse.Namespace) -> int:
    cmds = _listed(c, args, node_id_of(c, args.node) if args.node else None)
    if args.json:
        print_json(cmds)
        return 0
    table(["COMMAND", "STATUS", "CREATED", "BY", "TARGETS", "INVOCATIONS", "SCRIPT"],
          [[x["command_id"], x["status"], when(x["created_at"]), x["created_by"],
            " ".join(x["targets"]), _counts(x), x["script_line"]] for x in cmds])
    return 0


def nodes_history(c: Client, args: argparse.Namespace) -> int:
    """``tether nodes history NODE``: the node's invocations across commands, newest
    first, with how each ended there (``GET /commands?node_id=``, each with its
    ``invocation``). The node is looked up first, so one this operator may not read,
    or none, is said as such rather than as an empty history; its name goes on stderr."""
    node_id = node_id_of(c, args.node_id)
    node = c.get(f"/nodes/{node_id}")
    if not args.json:
        named = {"node_id": node_id, "node_name": node.get("name")}
        out(f"history of {node_label(named)}, newest first", err=True)
    cmds = _listed(c, args, node_id)
    if args.json:
        print_json(cmds)
        return 0
    rows = []
    for x in cmds:
        inv = x["invocation"] or {"status": None, "exit_code": None, "reason": None,
                                  "started_at": None, "ended_at": None}
        said, _ = ending(inv, x["timeout"]) if inv["status"] else (None, None)
        rows.append([x["command_id"], inv["status"], said, when(x["created_at"]),
                     when(inv["ended_at"]), x["created_by"], x["script_line"]])
    table(["COMMAND", "STATUS", "EXIT", "CREATED", "ENDED", "BY", "SCRIPT"], rows)
    return 0


def commands_show(c: Client, args: argparse.Namespace) -> int:
    cmd = c.get(f"/commands/{args.command_id}")
    if args.json:
        print_json(cmd)
        return 0
    out(f"command:  {cmd['command_id']}  {cmd['status']}")
    out(f"created:  {when(cmd['created_at'])} by {cmd['created_by']}")
    if cmd["comment"]:
        out(f"comment:  {cmd['comment']}")
    out(f"targets:  {' '.join(cmd['targets'])}")
    out(f"script:   {cmd['script_line']}")
    rows = []
    for i in cmd["invocations"]:
        said, reason = ending(i, cmd["timeout"])
        rows.append([i["node_id"], i.get("node_name"), i["status"], said, when(i["started_at"]),
                     when(i["ended_at"]), reason])
    table(["NODE", "NAME", "STATUS", "EXIT", "STARTED", "ENDED", "REASON"], rows)
    for i in cmd["invocations"]:
        for line in cut(i):
            out(f"--- {i['node_id']}: {line}")
    return 0


def _one_node(command: dict[str, Any]) -> str:
    """The node a command ran on, when it ran on one: ``commands output ID`` needs no more."""
    nodes: list[str] = [i["node_id"] for i in command["invocations"]]
    cid = command["command_id"]
    if len(nodes) != 1:
        raise ValueError(f"command {cid} ran on {len(nodes)} nodes: name one, as in "
                         f"'tether commands output {cid} {nodes[0] if nodes else 'NODE'}'")
    return nodes[0]


def commands_output(c: Client, args: argparse.Namespace) -> int:
    """Both streams to where they belong, or the one ``--stream`` names to standard
    output (the place ``> file`` and ``| grep`` read). A stream the output cap cut is
    said on standard error, after the bytes, so a file of the output stays exact."""
    command = c.get(f"/commands/{args.command_id}")
    node = args.node_id or _one_node(command)
    streams = (args.stream,) if args.stream else ("stdout", "stderr")
    for stream in streams:
        data = c.request("GET", f"/commands/{args.command_id}/invocations/{node}/"
                         f"{stream}", raw=True)
        device_output(data, err=stream == "stderr" and not args.stream, raw=args.raw)
    for inv in command["invocations"]:
        if inv["node_id"] == node:
            for line in cut(inv, streams):
                out(f"tether: {line}", err=True)
    return 0


def commands_cancel(c: Client, args: argparse.Namespace) -> int:
    emit(args.json, c.post(f"/commands/{args.command_id}/cancel"),
         lambda cmd: f"command {cmd['command_id']}: {cmd['status']} ({_counts(cmd)})")
    return 0


def commands_wait_until(c: Client, command_id: str, deadline: float) -> dict[str, Any]:
    """Wait for a terminal status or the deadline (used by benchmarks and tests)."""
    cmd = c.get(f"/commands/{command_id}")
    while cmd["status"] not in TERMINAL and time.monotonic() < deadline:
        cmd = c.get(f"/commands/{command_id}", after=cmd["version"],
                    wait=min(POLL_WAIT, max(0.1, deadline - time.monotonic())))
    result: dict[str, Any] = cmd
    return result
