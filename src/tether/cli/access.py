"""``tether operators|tokens|whoami|audit``: who may use the API, and what they did."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tether.cli.client import Client
from tether.cli.output import fail, json_line, out, print_json, table, when
from tether.cli.parsing import parse_duration


def _statements(path: str | None) -> list[dict[str, Any]] | None:
    """A policy file: a JSON list of statements, or {"statements": [...]}."""
    if path is None:
        return None
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and "statements" in doc:
        doc = doc["statements"]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: a policy is a JSON list of statements")
    return doc


def _print_statements(statements: list[dict[str, Any]]) -> None:
    for st in statements:
        out(f"  {st['effect']:<5} {','.join(st['actions'])} on {','.join(st['resources'])}")


def _show_operator(op: dict[str, Any]) -> None:
    disabled = f"  (disabled {when(op['disabled_at'])})" if op["disabled_at"] else ""
    out(f"operator:   {op['name']}{disabled}")
    out(f"roles:      {', '.join(op['roles']) or '-'}")
    out(f"created:    {when(op['created_at'])} by {op['created_by']}")
    _print_statements(op["statements"])


def operators_create(c: Client, args: argparse.Namespace) -> int:
    op = c.post("/operators", {"name": args.name, "roles": args.role,
                               "statements": _statements(args.policy) or []})
    print_json(op) if args.json else _show_operator(op)
    return 0


def operators_list(c: Client, args: argparse.Namespace) -> int:
    ops = c.get("/operators")
    if args.json:
        print_json(ops)
        return 0
    table(["OPERATOR", "ROLES", "STATEMENTS", "DISABLED"],
          [[o["name"], ",".join(o["roles"]) or "-", len(o["statements"]),
            when(o["disabled_at"])] for o in ops])
    return 0


def operators_show(c: Client, args: argparse.Namespace) -> int:
    op = c.get(f"/operators/{args.name}")
    print_json(op) if args.json else _show_operator(op)
    return 0


def operators_update(c: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.role is not None:
        body["roles"] = args.role
    statements = _statements(args.policy)
    if statements is not None:
        body["statements"] = statements
    if not body:
        raise ValueError("nothing to change: give --role and/or --policy")
    op = c.request("PATCH", f"/operators/{args.name}", body=body)
    print_json(op) if args.json else _show_operator(op)
    return 0


def operators_disable(c: Client, args: argparse.Namespace) -> int:
    op = c.request("DELETE", f"/operators/{args.name}")
    print_json(op) if args.json else out(f"operator {op['name']} disabled; its tokens revoked")
    return 0


def tokens_create(c: Client, args: argparse.Namespace) -> int:
    body = {"operator": args.operator, "label": args.label,
            "expires_in": parse_duration(args.expires) if args.expires else None}
    tok = c.post("/tokens", body)
    if args.json:
        print_json(tok)
        return 0
    out(f"token id: {tok['token_id']}  (operator {tok['operator']}, expires "
        f"{when(tok['expires_at']) if tok['expires_at'] else 'never'})")
    out(f"token:    {tok['token']}")
    out("The token is shown once; the server keeps only its hash.")
    return 0


def tokens_list(c: Client, args: argparse.Namespace) -> int:
    toks = c.get("/tokens", operator=args.operator)
    if args.json:
        print_json(toks)
        return 0
    table(["TOKEN", "OPERATOR", "LABEL", "CREATED", "EXPIRES", "REVOKED"],
          [[t["token_id"], t["operator"], t["label"], when(t["created_at"]),
            when(t["expires_at"]), when(t["revoked_at"])] for t in toks])
    return 0


def tokens_revoke(c: Client, args: argparse.Namespace) -> int:
    tok = c.request("DELETE", f"/tokens/{args.token_id}")
    print_json(tok) if args.json else out(f"token {tok['token_id']} revoked")
    return 0


def whoami(c: Client, args: argparse.Namespace) -> int:
    who = c.get("/whoami")
    if args.json:
        print_json(who)
        return 0
    out(f"operator {who['operator']} (roles: {', '.join(who['roles']) or '-'}), server "
        f"{who['server_version']}")
    _print_statements(who["statements"])
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    roles = "admin (everything), operator (nodes, commands, activations, sessions), viewer " \
            "(read nodes and commands)"
    ops = sub.add_parser("operators", help="manage operators and their policies").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    oc = ops.add_parser("create", help="create an operator",
                        description="Create an operator with roles and/or a policy file: a JSON "
                                    "list of {effect: allow|deny, actions: [...], resources: "
                                    "[*, mi-..., tag:k=v]}. An explicit deny wins.")
    oc.add_argument("name")
    oc.add_argument("--role", action="append", default=[], help=roles + " (repeatable)")
    oc.add_argument("--policy", metavar="FILE", help="JSON policy statements")
    oc.set_defaults(handler=operators_create)
    ol = ops.add_parser("list", help="list operators")
    ol.set_defaults(handler=operators_list)
    osh = ops.add_parser("show", help="one operator with its statements")
    osh.add_argument("name")
    osh.set_defaults(handler=operators_show)
    ou = ops.add_parser("update", help="replace an operator's roles and/or policy")
    ou.add_argument("name")
    ou.add_argument("--role", action="append", help=roles + " (repeatable; replaces all)")
    ou.add_argument("--policy", metavar="FILE", help="JSON policy statements (replaces all)")
    ou.set_defaults(handler=operators_update)
    od = ops.add_parser("disable", help="disable an operator and revoke its tokens")
    od.add_argument("name")
    od.set_defaults(handler=operators_disable)

    toks = sub.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    tc = toks.add_parser("create", help="a new token for an operator (shown once)")
    tc.add_argument("--operator", required=True)
    tc.add_argument("--label", help="what the token is for")
    tc.add_argument("--expires", metavar="DURATION", help="30d, 12h... (default: never)")
    tc.set_defaults(handler=tokens_create)
    tl = toks.add_parser("list", help="list tokens (never their secret)")
    tl.add_argument("--operator")
    tl.set_defaults(handler=tokens_list)
    tr = toks.add_parser("revoke", help="revoke a token at once")
    tr.add_argument("token_id")
    tr.set_defaults(handler=tokens_revoke)
    wh = sub.add_parser("whoami", help="the operator this token acts for, and what it may do")
    wh.set_defaults(handler=whoami)
    for p in (oc, ol, osh, ou, od, tc, tl, tr, wh):
        p.add_argument("--json", action="store_true", help="print JSON for scripts")


def audit_list(c: Client, args: argparse.Namespace) -> int:
    since = time.time() - parse_duration(args.since) if args.since else None
    records = c.get("/audit", since=since, actor=args.actor, target=args.node,
                    action=args.action, limit=args.limit)
    if args.json:
        print_json(records)
        return 0
    table(["SEQ", "WHEN", "ACTOR", "ACTION", "TARGET", "FROM", "OUTCOME"],
          [[r["seq"], when(r["at"]), r["actor"], r["action"], r["target"], r["source"],
            r["outcome"]] for r in records])
    return 0


def audit_export(c: Client, args: argparse.Namespace) -> int:
    """Every record as JSON lines, oldest first, with its hashes (for off-site keeping),
    then ``{"checkpoint": ...}``: the head the server verified, signed, for a later
    ``tether audit verify --checkpoint FILE`` to hold the log to."""
    verdict = c.get("/audit/verify")
    for r in c.get("/audit", limit=args.limit):
        json_line(r)
    if verdict["checkpoint"] is None:
        fail(f"no checkpoint written: {_verdict_line(verdict)}")
        return 1
    json_line({"checkpoint": verdict["checkpoint"]})
    return 0


def _checkpoint_of(path: Path) -> dict[str, Any]:
    """The checkpoint an export ends with (or a file holding just one)."""
    for line in reversed(path.read_text().splitlines()):
        if line.strip():
            value = json.loads(line)
            if isinstance(value, dict) and isinstance(value.get("checkpoint"), dict):
                found: dict[str, Any] = value["checkpoint"]
                return found
            if isinstance(value, dict) and {"seq", "hash", "at", "mac"} <= value.keys():
                return value
            break
    raise ValueError(f"{path} ends with no checkpoint (the last line of `tether audit "
                     "export`)")


def _verdict_line(v: dict[str, Any]) -> str:
    if v["ok"]:
        anchored = (f"; nothing cut off before record {v['anchored']} (anchored)"
                    if v.get("anchored") else "; not anchored yet")
        return f"audit log intact: {v['records']} records, hash chain verified{anchored}"
    if v.get("state") == "truncated":
        return f"audit log TRUNCATED: {v['problem']}"
    where = f"record {v['seq']} " if v["seq"] is not None else ""
    return f"audit log TAMPERED: {where}{v['problem']}"


def audit_verify(c: Client, args: argparse.Namespace) -> int:
    query: dict[str, Any] = {}
    if args.checkpoint:
        from tether.server.access.audit_chain import Checkpoint  # pure, stdlib only

        try:
            checkpoint = Checkpoint.from_dict(_checkpoint_of(args.checkpoint))
        except (OSError, ValueError) as exc:
            fail(f"{args.checkpoint}: {exc}" if str(args.checkpoint) not in str(exc)
                 else str(exc))
            return 2
        query = {"checkpoint": checkpoint.as_param()}
    verdict = c.get("/audit/verify", **query)
    if args.json:
        print_json(verdict)
    else:
        out(_verdict_line(verdict))
    return 0 if verdict["ok"] else 1


def add_audit_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    au = sub.add_parser("audit", help="read and verify the audit trail").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    al = au.add_parser("list", help="recent records, oldest first")
    al.add_argument("--since", metavar="DURATION", help="only the last 30m, 12h, 7d...")
    al.add_argument("--actor", help="operator name (or activation:ID, agent, anonymous)")
    al.add_argument("--node", help="records whose target is this node id")
    al.add_argument("--action", help="a part of the action, e.g. /commands or DELETE")
    al.add_argument("--limit", type=int, default=1000)
    al.add_argument("--json", action="store_true", help="print JSON for scripts")
    al.set_defaults(handler=audit_list)
    ae = au.add_parser("export", help="every record as JSON lines, with its hashes")
    ae.add_argument("--limit", type=int, default=100_000)
    ae.set_defaults(handler=audit_export)
    av = au.add_parser("verify", help="recompute the hash chain (exit 1 if it was tampered "
                       "or truncated)")
    av.add_argument("--checkpoint", type=Path, metavar="FILE",
                    help="also hold the log to the checkpoint a `tether audit export` ended "
                         "with: records cut or rewritten since then are caught")
    av.add_argument("--json", action="store_true", help="print JSON for scripts")
    av.set_defaults(handler=audit_verify)
