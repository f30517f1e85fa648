"""Outside an operator's read scope a node does not exist.

A 403 "may not nodes:read on mi-..." for a node that exists, beside a 404 for an id
that does not, told a scoped operator which ids are real; a ``tag:k=v`` target was
an oracle on nodes it could not read, and a preview of ``all`` counted the whole
fleet and named the nodes it would refuse. So every route that takes a node id (or
resolves targets to nodes) asks here: a node the operator may not ``nodes:read``
answers exactly as a missing one does (same status, same body), target expressions
resolve among readable nodes only, and a 403 stays for a node the operator can read
but may not act on (it knows the node; it learns which action to ask for).

Lists and details that name nodes (the nodes, commands and sessions lists, a
command's detail) need ``nodes:read`` beside their own action: ``reach_of`` is the
pair as SQL (``store/scope.py``), applied before the list's limit, and
``require_nodes`` hides a command any node of which the operator may not read.

The answer hides the node; the audit record does not: every hiding goes through
``hidden``, which marks the request as a refusal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request

from tether.protocol.ids import is_node_id
from tether.server.access.policy import Node
from tether.server.api.audit_note import REFUSED, note
from tether.server.api.auth import Principal
from tether.server.api.errors import ApiError
from tether.server.dispatch.dispatcher import NoTargetsError
from tether.server.dispatch.targets import TargetError, Targets
from tether.server.state import ServerState
from tether.server.store import NodeFilter
from tether.server.store.scope import Reach, reach
from tether.server.store.store import ONLINE

READ = "nodes:read"
# Ids an ambiguous name's refusal lists.
NAMED = 20
E = TypeVar("E", bound=Exception)


def node_not_found(node_id: str) -> ApiError:
    """The one answer for a node id that names no node, or none this operator may read."""
    return ApiError(404, "node_not_found", f"no node {node_id}")


def hidden(request: Request, who: Principal, action: str, node_ids: Sequence[str],
           answer: E) -> E:
    """Refuse ``action`` on nodes ``who`` may not read, answering as if they did not exist.

    The one place a node is hidden: the caller raises ``answer`` (a missing thing's
    404), and the audit record says what was refused and where.
    """
    named = ", ".join(node_ids[:20]) + (f" and {len(node_ids) - 20} more"
                                        if len(node_ids) > 20 else "")
    # Marked REFUSED, the call is recorded as denied whatever its status (api/audit.py).
    note(request, **{REFUSED: f"{action} on {named}: outside its nodes:read reach, "
                              "answered as missing"}, hidden=list(node_ids[:20]))
    return answer


def can_read(who: Principal, node: dict[str, Any]) -> bool:
    """``node`` is a node row with its ``tags``."""
    return who.policy.allows(READ, Node(node["node_id"], node["tags"]))


def reach_of(who: Principal, *actions: str) -> tuple[Reach, ...]:
    """Where ``who`` may read nodes and do every one of ``actions``, for a store query:
    what a list of things on nodes may show."""
    return reach(who.policy, READ, *actions)


def readable_filter(who: Principal, f: NodeFilter | None = None) -> NodeFilter:
    """``f`` narrowed, in SQL, to the nodes ``who`` may read."""
    return dataclasses.replace(f or NodeFilter(), reach=reach_of(who))


async def visible_node(request: Request, s: ServerState, who: Principal, node_id: str,
                       action: str = READ, *, registered: bool = False) -> dict[str, Any]:
    """The node row, or the missing node's 404 (also when ``who`` may not read it, or,
    with ``registered``, when it is deregistered). ``action`` is what the caller is about
    to check, for the audit record of a hidden node."""
    node = await s.store.get_node(node_id) if is_node_id(node_id) else None
    if node is not None and not can_read(who, node):
        raise hidden(request, who, action, [node_id], node_not_found(node_id))
    if node is None or (registered and node["deregistered_at"] is not None):
        raise node_not_found(node_id)
    return node


async def require_nodes(request: Request, s: ServerState, who: Principal, action: str,
                        node_ids: Sequence[str], missing: Exception) -> None:
    """Refuse unless ``who`` may read, and do ``action`` on, every one of ``node_ids``.

    When one of them is outside its read scope, the thing the nodes belong to (a
    command) is answered as ``missing``, since naming or counting that node would
    show it exists, even where ``action`` itself is allowed there. Otherwise a
    refusal names the nodes refused (403).
    """
    if not node_ids or all(who.policy.allows_everywhere(a) for a in (READ, action)):
        return
    tags = await s.store.tags_of(node_ids)
    nodes = [Node(n, tags.get(n, {})) for n in node_ids]
    unreadable = who.policy.refused(READ, nodes)
    if unreadable:
        raise hidden(request, who, action, unreadable, missing)
    refused = who.policy.refused(action, nodes)
    if refused:
        who.refuse_nodes(action, refused)


async def resolve_targets(request: Request, s: ServerState, who: Principal,
                          targets: Targets, action: str) -> list[str]:
    """The readable nodes ``targets`` select: ``all``, tags and names reach no other
    node, and a node id ``who`` may not read is refused as one that does not exist.

    Raises ``NoTargetsError`` as ``Dispatcher.resolve`` does (404 ``bad_targets``), and
    ``TargetError`` (400 ``bad_targets``) for a name several readable nodes share.
    """
    within = readable_filter(who)
    if targets.everything:
        return sorted(await s.store.node_ids(within))
    found: set[str] = set()
    for tags in sorted(targets.tag_sets):  # NodeFilter.tags is an AND
        found.update(await s.store.node_ids(dataclasses.replace(within, tags=tags)))
    for node_id in sorted(targets.node_ids):
        node = await s.store.get_node(node_id)
        missing = NoTargetsError(f"no registered node {node_id}")
        if node is not None and not can_read(who, node):
            raise hidden(request, who, action, [node_id], missing)
        if node is None or node["deregistered_at"] is not None:
            raise missing
        found.add(node_id)
    for name in sorted(targets.names):
        found.add(await node_named(request, s, who, name, action))
    return sorted(found)


async def node_named(request: Request, s: ServerState, who: Principal, name: str,
                     action: str) -> str:
    """The id of the one registered node called ``name`` that ``who`` may read.

    Only readable nodes count: a name only unreadable nodes have is answered as no
    node (and audited as hidden), and it is ambiguous only when several readable
    nodes have it, so neither answer tells of a node outside the operator's reach.
    """
    found = sorted(await s.store.node_ids(readable_filter(who, NodeFilter(exact_name=name))))
    if len(found) > 1:
        named = ", ".join(found[:NAMED]) + (f" and {len(found) - NAMED} more"
                                            if len(found) > NAMED else "")
        raise TargetError(f"{len(found)} nodes are named {name!r}: {named}; "
                          "target one by its id")
    if found:
        return found[0]
    missing = NoTargetsError(f"no registered node named {name!r}")
    unreadable = await s.store.node_ids(NodeFilter(exact_name=name))
    if unreadable:
        raise hidden(request, who, action, sorted(unreadable), missing)
    raise missing


async def split_online(s: ServerState, node_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """``node_ids`` (resolved targets) as the ones Online now and the others, both sorted:
    what ``online_only`` keeps, and what a run waits for (``offline`` in the answer)."""
    online = set(await s.store.node_ids(NodeFilter(ping_status=ONLINE)))
    return ([n for n in sorted(node_ids) if n in online],
            [n for n in sorted(node_ids) if n not in online])
