"""Who is calling, and may they: the token check and the policy checks of every route.

Routes ask for a ``Principal`` (any valid token) and then for the action they
perform: on the server as a whole (``require``) or on each node concerned
(``require_nodes``). A refusal is 403 ``forbidden`` naming the operator, the
action and the nodes refused, so an operator knows what to ask for.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from tether.server.access.policy import Node, Policy, effective_policy, parse_statements
from tether.server.api.errors import ApiError
from tether.server.state import ServerState

NAMED_REFUSALS = 20


@dataclasses.dataclass(frozen=True)
class Principal:
    operator: str
    token_id: str
    roles: tuple[str, ...]
    policy: Policy

    def require(self, action: str) -> None:
        if not self.policy.allows(action):
            raise ApiError(403, "forbidden", f"operator {self.operator} may not {action}")

    def refuse_nodes(self, action: str, refused: Sequence[str]) -> None:
        if refused:
            named = ", ".join(refused[:NAMED_REFUSALS])
            more = (f" and {len(refused) - NAMED_REFUSALS} more"
                    if len(refused) > NAMED_REFUSALS else "")
            raise ApiError(403, "forbidden",
                           f"operator {self.operator} may not {action} on {named}{more}")

    def require_node(self, action: str, node: dict[str, Any]) -> None:
        """``node`` is a node row with its ``tags``."""
        if not self.policy.allows(action, Node(node["node_id"], node["tags"])):
            self.refuse_nodes(action, [node["node_id"]])

    def readable(self, action: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The node rows (with ``tags``) this principal may ``action``."""
        if self.policy.allows_everywhere(action):
            return list(rows)
        return [r for r in rows if self.policy.allows(action, Node(r["node_id"], r["tags"]))]


async def principal(request: Request) -> Principal:
    return await authenticate(request)


BEARER_PROTOCOL = "tether.bearer."


def websocket_token(request: HTTPConnection) -> str | None:
    """A browser cannot set headers on a WebSocket: it offers the token as a subprotocol,
    ``tether.bearer.TOKEN`` beside ``tether`` (a header, so never in a URL or a log)."""
    offered = request.headers.get("sec-websocket-protocol", "")
    for proto in (p.strip() for p in offered.split(",")):
        if proto.startswith(BEARER_PROTOCOL):
            return proto[len(BEARER_PROTOCOL):]
    return None


async def authenticate(request: HTTPConnection) -> Principal:
    """The token's operator, for an HTTP request or a WebSocket alike."""
    header = request.headers.get("authorization", "")
    if not header and request.scope["type"] == "websocket":
        token = websocket_token(request)
        header = f"Bearer {token}" if token else ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send an operator token: Authorization: Bearer ...")
    s: ServerState = request.app.state.tether
    row = await s.store.operators.for_token(token.strip(), time.time())
    if row is None:
        raise ApiError(401, "unauthorized",
                       "the operator token is not valid (unknown, expired or revoked)")
    policy = effective_policy(row["roles"], parse_statements(row["statements"]))
    who = Principal(row["name"], row["token_id"], tuple(row["roles"]), policy)
    request.state.principal = who  # for the audit record
    return who


Who = Annotated[Principal, Depends(principal)]


async def require_nodes(s: ServerState, who: Principal, action: str,
                        node_ids: Sequence[str]) -> None:
    """Refuse unless ``action`` is allowed on every one of ``node_ids``."""
    if who.policy.allows_everywhere(action) or not node_ids:
        return
    tags = await s.store.tags_of(node_ids)
    who.refuse_nodes(action, who.policy.refused(
        action, (Node(n, tags.get(n, {})) for n in node_ids)))
