"""Fleet views for people: one page of a searched fleet, and what a target set hits.

The web console (and anyone else) pages through 10,000 nodes here instead of
fetching them all: the total and one page come from the database, filtered by
the caller's policy first, so the count is what this operator may see.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from tether.server.access.policy import Node
from tether.server.api import models
from tether.server.api.auth import Who
from tether.server.api.errors import ApiError
from tether.server.api.visibility import readable_filter, resolve_targets
from tether.server.dispatch.dispatcher import NoTargetsError
from tether.server.dispatch.targets import TargetError, parse_targets
from tether.server.state import ServerState
from tether.server.store import NodeFilter

router = APIRouter(prefix="/api/v1", tags=["nodes"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": models.ErrorBody} for s in (400, 401, 403, 404)}
NAMED = 20


def state(request: Request) -> ServerState:
    s: ServerState = request.app.state.tether
    return s


State = Annotated[ServerState, Depends(state)]


def primary_interface(node: dict[str, Any]) -> tuple[str | None, bool]:
    """The interface holding the node's primary address, and whether it is point-to-point.

    A PPP-only device is the case other consoles hide; this one marks it.
    """
    inventory = node.get("inventory") or {}
    address = node.get("primary_address")
    for iface in inventory.get("interfaces") or []:
        for a in iface.get("addresses") or []:
            if address is not None and a.get("address") == address:
                return iface.get("name"), "pointopoint" in (iface.get("flags") or [])
    return None, False


def _summary(node: dict[str, Any]) -> dict[str, Any]:
    inventory = node.get("inventory") or {}
    name, p2p = primary_interface(node)
    os_name = " ".join(x for x in (inventory.get("os_name"), inventory.get("os_version")) if x)
    return {**{k: node[k] for k in models.NodeSummary.model_fields if k in node},
            "os": os_name or None, "primary_interface": name, "point_to_point": p2p}


@router.get("/nodes/search", response_model=models.NodePage, responses=ERRORS)
async def search_nodes(s: State, who: Who,
                       q: Annotated[str, Query(max_length=400, description=(
                           "words that must all match: KEY=VALUE (a tag), or part of a "
                           "name or node id, an activation id, or an address"))] = "",
                       ping_status: Annotated[models.PingStatus | None, Query()] = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                       ) -> dict[str, Any]:
    """One page of the fleet (by name), with the total this operator may see."""
    # The policy as SQL: counted and paged by the database, not node by node here.
    f = readable_filter(who, NodeFilter(ping_status=ping_status, terms=tuple(_terms(q))))
    total = await s.store.count_nodes(f)
    rows = await s.store.node_page(f, limit, offset)
    return {"total": total, "offset": offset, "nodes": [_summary(r) for r in rows]}


STATES = ("Online", "ConnectionLost", "Deregistered")


@router.get("/nodes/counts", response_model=models.NodeCounts, responses=ERRORS)
async def count_nodes(s: State, who: Who,
                      q: Annotated[str, Query(max_length=400, description=(
                          "as for /nodes/search; deregistered nodes are counted too"))] = "",
                      by: Annotated[str | None, Query(min_length=1, max_length=128,
                                                      description=(
                          "a tag key: the counts by each of its values"))] = None,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20,
                      ) -> dict[str, Any]:
    """How many nodes this operator may see are Online, ConnectionLost, Deregistered
    (the fleet page's summary, refreshed with it): counted by the database, one query."""
    f = readable_filter(who, NodeFilter(terms=tuple(_terms(q)), include_deregistered=True))
    total = dict.fromkeys(STATES, 0)
    values: dict[str | None, dict[str, int]] = {}
    for value, node_state, count in await s.store.state_counts(f, by):
        key = node_state if node_state in total else "ConnectionLost"
        total[key] += count
        if by is not None:
            row = values.setdefault(value, dict.fromkeys(STATES, 0))
            row[key] += count
    ranked = sorted(values.items(), key=lambda kv: (-sum(kv[1].values()), kv[0] or ""))
    return {"total": total, "by": by, "more_values": max(0, len(ranked) - limit),
            "values": [{"value": v, **c} for v, c in ranked[:limit]]}


def _terms(q: str) -> list[str]:
    """Words of the query; an address is compared in its canonical spelling."""
    out = []
    for word in q.split():
        try:
            out.append(str(ipaddress.ip_address(word)))
        except ValueError:
            out.append(word)
    return out


@router.get("/targets/preview", response_model=models.TargetPreview, responses=ERRORS,
            tags=["commands"])
async def preview_targets(s: State, who: Who, request: Request,
                          target: Annotated[list[models.Target],
                                            Query(min_length=1, max_length=1000)],
                          ) -> dict[str, Any]:
    """How many nodes these targets hit, the first of them, and which of them this
    operator may not send to. ``name:NAME`` alone is how the CLI finds the node a name
    stands for (cli/node_arg.py), so names are resolved in this one place.

    Counted as ``POST /commands`` resolves them: among the nodes this operator may read
    only, so the preview tells nothing of the rest of the fleet.
    """
    try:
        node_ids = await resolve_targets(request, s, who, parse_targets(target),
                                         "commands:send")
    except TargetError as exc:
        raise ApiError(400, "bad_targets", str(exc)) from None
    except NoTargetsError as exc:
        raise ApiError(404, "bad_targets", str(exc)) from None
    refused: list[str] = []
    if not who.policy.allows_everywhere("commands:send"):
        tags = await s.store.tags_of(node_ids)
        refused = who.policy.refused("commands:send",
                                     (Node(n, tags.get(n, {})) for n in node_ids))
    online = sum(1 for n in node_ids if s.registry.get(n) is not None)
    return {"count": len(node_ids), "online": online, "refused_count": len(refused),
            "refused": refused[:NAMED], "node_ids": node_ids[:NAMED]}
