"""``tether activation ...`` and ``tether nodes ...``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from tether.cli.client import Client
from tether.cli.output import out, print_json, table, when
from tether.cli.parsing import parse_duration, parse_tags
from tether.protocol import trust
from tether.protocol.netaddr import plain_http_off_machine


def activation_create(c: Client, args: argparse.Namespace) -> int:
    body = {"registration_limit": args.limit, "expires_in": parse_duration(args.expires),
            "tags": parse_tags(args.tag), "name_prefix": args.name}
    act = c.post("/activations", body)
    if args.json:
        print_json(act)
        return 0
    if args.env:  # for eval: the agent's register reads both, the code kept off its argv
        out(f"export TETHER_ACTIVATION_ID={shlex.quote(act['activation_id'])} "
            f"TETHER_ACTIVATION_CODE={shlex.quote(act['activation_code'])}")
        return 0
    out(f"activation id:   {act['activation_id']}")
    out(f"activation code: {act['activation_code']}")
    out(f"registrations:   up to {act['registration_limit']}, until "
        f"{when(act['expires_at'])}")
    out("The code is shown once; the server keeps only its hash.")
    for line in device_lines(c, act):
        out(line)
    return 0


def device_lines(c: Client, act: dict[str, Any]) -> list[str]:
    """What to run on a device, for how this server is reached.

    A server on tether's private CA (``--tls auto``) says so in its answer, with the
    CA's fingerprint: the device then needs ``--ca ca.pem`` and a way to check that
    the copy it holds is that CA. A server with its own certificate that this CLI
    reaches through a CA of its own (TETHER_CA, ``login --ca``) needs the same CA on
    the device. Plain HTTP off this machine needs the agent's ``--insecure``.
    """
    server = c.server

    def register(flag: str = "") -> str:
        return (f"  tether-agent register --server {server}{flag} --activation-id "
                f"{act['activation_id']} --activation-code {act['activation_code']}")

    fingerprint: str | None = act.get("private_ca_fingerprint")
    ours = c.trusted_ca() if server.startswith("https://") else None
    our_fingerprint = trust.fingerprint(ours[0]) if ours else None
    if server.startswith("https://") and (fingerprint or our_fingerprint):
        where = ("the server's DATA/tls/ca.pem" if fingerprint else "the CA this CLI trusts")
        if ours and ours[1] and (our_fingerprint == fingerprint or not fingerprint):
            where += f" (here: {ours[1]})"
        return [f"On a device, with a copy of {where} as ca.pem, check that it is the "
                "server's CA:",
                "  openssl x509 -noout -fingerprint -sha256 -in ca.pem",
                f"  (it must show {fingerprint or our_fingerprint}), then:",
                register(" --ca ca.pem")]
    if plain_http_off_machine(server):
        return ["On a device (plain HTTP: the credential and commands cross the network "
                "readable):", register(" --insecure")]
    return ["On a device:", register()]


def activation_list(c: Client, args: argparse.Namespace) -> int:
    acts = c.get("/activations")
    if args.json:
        print_json(acts)
        return 0
    table(["ACTIVATION", "USED", "LIMIT", "EXPIRES", "REVOKED", "TAGS"],
          [[a["activation_id"], a["registrations"], a["registration_limit"],
            when(a["expires_at"]), when(a.get("revoked_at")), _tags(a["tags"])] for a in acts])
    return 0


def activation_revoke(c: Client, args: argparse.Namespace) -> int:
    act = c.request("DELETE", f"/activations/{args.activation_id}")
    if args.json:
        print_json(act)
    else:
        out(f"activation {act['activation_id']} revoked; the {act['registrations']} node(s) "
            "it registered stay registered")
    return 0


def nodes_rotate_credential(c: Client, args: argparse.Namespace) -> int:
    node = c.post(f"/nodes/{args.node_id}/rotate-credential")
    if args.json:
        print_json(node)
    else:
        out(f"{node['node_id']}: new credential sent; the old one stops working once the "
            "agent has stored it")
    return 0


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"


def nodes_list(c: Client, args: argparse.Namespace) -> int:
    nodes = c.get("/nodes", ping_status=args.ping_status, tag=args.tag or None,
                  name=args.name, activation_id=args.activation_id, ip=args.ip)
    if args.json:
        print_json(nodes)
        return 0
    table(["NODE", "NAME", "PING", "LAST SEEN", "ADDRESS", "TAGS"],
          [[n["node_id"], n["name"], n["ping_status"], when(n["last_seen_at"]),
            n["primary_address"] or n["peer_address"], _tags(n["tags"])] for n in nodes])
    return 0


def _show(node: dict[str, Any]) -> None:
    inv = node.get("inventory") or {}
    out(f"node:            {node['node_id']}  ({node['name'] or '-'})")
    out(f"ping status:     {node['ping_status']}  (last seen {when(node['last_seen_at'])})")
    out(f"primary address: {node['primary_address'] or '-'}")
    out(f"peer address:    {node['peer_address'] or '-'}  (as the server sees it)")
    if inv:
        out(f"os:              {inv.get('os_name')} {inv.get('os_version')}, kernel "
            f"{inv.get('kernel')}, {inv.get('arch')}")
        out(f"agent:           {inv.get('agent_version')} on Python "
            f"{inv.get('python_version')}")
    out(f"tags:            {_tags(node['tags'])}")
    out(f"registered:      {when(node['registered_at'])} by activation "
        f"{node['activation_id']}")
    if node["deregistered_at"]:
        out(f"deregistered:    {when(node['deregistered_at'])}")
    for iface in inv.get("interfaces", []):
        addrs = ", ".join(a["address"] + (f" peer {a['peer']}" if a.get("peer") else "")
                          for a in iface["addresses"]) or "no address"
        out(f"  {iface['name']:<12} [{','.join(iface['flags'])}] {addrs}")


def nodes_show(c: Client, args: argparse.Namespace) -> int:
    node = c.get(f"/nodes/{args.node_id}")
    if args.json:
        print_json(node)
    else:
        _show(node)
    return 0


def nodes_tag(c: Client, args: argparse.Namespace) -> int:
    node = c.request("PATCH", f"/nodes/{args.node_id}/tags",
                     body={"set": parse_tags(args.tags), "remove": args.remove})
    if args.json:
        print_json(node)
    else:
        out(f"{node['node_id']}: {_tags(node['tags'])}")
    return 0


def nodes_deregister(c: Client, args: argparse.Namespace) -> int:
    node = c.request("DELETE", f"/nodes/{args.node_id}")
    if args.json:
        print_json(node)
    else:
        out(f"deregistered {node['node_id']}; its credential is revoked")
    return 0
