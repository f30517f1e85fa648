"""Who is calling, and may they: the token check and the policy checks of every route.

Routes ask for a ``Principal`` (any valid token) and then for the action they
perform: on the server as a whole (``require``) or on each node concerned
(``require_nodes``). A refusal is 403 ``forbidden`` naming the operator, the
action and the nodes refused, so an operator knows what to ask for.

Every refusal goes through ``Principal.refuse``, which marks the request so the
audit middleware records it as ``denied`` whatever the status (a 404 that hides
a node outside the operator's reach is a refusal too), with the true reason in the
record even when the answer must not say it. 401 and 429 are recorded from their
status. Wrong tokens are counted per client address: past
``--failed-tokens-per-address`` in a minute, that address's wrong tokens are
answered 429 instead of 401 until the minute ends. A right token is always
accepted, so whoever shares an address with a guesser is not locked out with it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from tether.server.access.client_address import client_host, limit_key
from tether.server.access.policy import Node, Policy, effective_policy, parse_statements
from tether.server.api.audit_note import REFUSED, note
from tether.server.api.errors import ApiError
from tether.server.state import ServerState

NAMED_REFUSALS = 20


@dataclasses.dataclass(frozen=True)
class Principal:
    operator: str
    token_id: str
    roles: tuple[str, ...]
    policy: Policy
    # The request or WebSocket this principal made: where ``refuse`` marks a refusal.
    connection: HTTPConnection | None = dataclasses.field(default=None, compare=False,
                                                          repr=False)

    def refuse(self, status: int, code: str, message: str, reason: str | None = None,
               headers: dict[str, str] | None = None) -> NoReturn:
        """Refuse this call: the one way a route says no, so no refusal goes unaudited.

        The answer is ``status``/``code``/``message``; the audit record (written by
        the middleware for HTTP, by ``api/audit.py`` ``refuse_stream`` for a
        WebSocket) is ``denied`` and carries ``reason`` (default: the message), so
        a 404 that hides a node outside the operator's reach records what was
        refused: ``who.refuse(404, "node_not_found", f"no node {node_id}",
        reason=f"nodes:read on {node_id} is outside its reach")``.
        """
        if self.connection is not None:
            note(self.connection, **{REFUSED: (reason or message)[:500]})
        raise ApiError(status, code, message, headers)

    def require(self, action: str) -> None:
        if not self.policy.allows(action):
            self.refuse(403, "forbidden", f"operator {self.operator} may not {action}")

    def refuse_nodes(self, action: str, refused: Sequence[str]) -> None:
        if refused:
            named = ", ".join(refused[:NAMED_REFUSALS])
            more = (f" and {len(refused) - NAMED_REFUSALS} more"
                    if len(refused) > NAMED_REFUSALS else "")
            self.refuse(403, "forbidden",
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
        note(request, error="unauthorized")
        raise ApiError(401, "unauthorized", "send an operator token: Authorization: Bearer ...")
    s: ServerState = request.app.state.tether
    # The token is looked up first, whoever sends it: one indexed query on its SHA-256,
    # as cheap as the answer. A right token is never refused for the wrong ones that
    # came before it from its address (a NAT, a proxy not named --trusted-proxy).
    row = await s.store.operators.for_token(token.strip(), time.time())
    if row is None:
        address, now = limit_key(client_host(request)), time.monotonic()
        wait = s.failed_tokens.wait(address, now)
        if wait is not None:
            note(request, error="too_many_failed_tokens")
            raise ApiError(429, "too_many_failed_tokens",
                           f"too many wrong tokens from this address; try again in "
                           f"{wait:.0f} s", headers={"Retry-After": str(max(1, round(wait)))})
        s.failed_tokens.failed(address, now)
        note(request, error="invalid_token")
        raise ApiError(401, "unauthorized",
                       "the operator token is not valid (unknown, expired or revoked)")
    policy = effective_policy(row["roles"], parse_statements(row["statements"]))
    who = Principal(row["name"], row["token_id"], tuple(row["roles"]), policy, request)
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
