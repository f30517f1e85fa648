"""Authorization matrix: every operator route, run by an allowed and by a denied operator.

Real server (SQLite and PostgreSQL), real agent registrations, plain HTTP. For
each route the table below names the action it needs; each route is called by
operators whose policy allows that action (on ``*``, through a ``:*`` prefix,
a built-in role, the node's tag, the node's id) and by operators whose policy
does not (nothing at all, every other action, an explicit deny over an admin
role or over an allow, an allow on another node only). Allowed calls answer
2xx; denied ones answer 403 ``forbidden`` naming the action (and the node), and
change nothing. Lists filtered by policy (``GET /nodes``, ``GET /commands``)
answer 200 and leave out what the operator may not read. A node the operator may
not ``nodes:read`` does not exist for it: a denied call on it answers exactly
what the same call on an id that names nothing answers (404, same body), so the
allowed operators of node actions also hold ``nodes:read``.

``test_every_route_is_in_the_matrix`` fails when a route under /api/v1 is added
without a row here, so no new route can skip the matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from starlette.routing import Mount, Route

from harness import Agent, Server, postgres_database
from tether.server.access.policy import (
    ACTIONS,
    NODE_ACTIONS,
    ROLES,
    Node,
    effective_policy,
    parse_statements,
)
from tether.server.app import build_app
from tether.server.config import Settings

API = "/api/v1"
# Routes outside the matrix: registration is authenticated by the activation code,
# whoami needs only a valid token, and the docs are public.
# Any valid token: registration (an activation code instead), whoami, and the target
# preview, which tells what POST /commands would (the count, the nodes it would refuse).
# The fleet page's counts count only the nodes the operator may read (as the preview).
UNMATRIXED = {("POST", "/api/v1/registrations"), ("GET", "/api/v1/whoami"),
              ("GET", "/api/v1/targets/preview"), ("GET", "/api/v1/nodes/counts")}
UNMATRIXED_PATHS = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/oauth2-redirect"}
# No proxy from the environment may sit between the tests and the loopback server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Statement = dict[str, Any]


# -- HTTP --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    data: Any  # parsed JSON, or the raw bytes of a non-JSON answer

    def __str__(self) -> str:
        return f"{self.status} {self.data!r}"


def call(url: str, method: str, path: str, body: Any = None,
         authorization: str | None = None) -> Reply:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + API + path, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            status, ctype, payload = resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, ctype, payload = exc.code, exc.headers.get("content-type", ""), exc.read()
    return Reply(status, json.loads(payload) if "json" in ctype else payload)


class Api:
    """Calls as one operator token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None) -> Reply:
        return call(self.url, method, path, body, f"Bearer {self.token}")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self(method, path, body)
        assert 200 <= reply.status < 300, f"{method} {path}: {reply}"
        return reply.data


# -- the fleet shared by the module ------------------------------------------


@dataclasses.dataclass
class Fleet:
    server: Server
    admin: Api
    lab: str        # a real agent's node, tagged env=lab
    prod: str       # a real agent's node, tagged env=prod
    cmd_lab: str    # a command on the lab node only
    cmd_prod: str   # a command on the prod node only
    cmd_both: str   # a command on both
    spare_activation: tuple[str, str]  # registers throwaway nodes tagged env=lab
    target_operator: str               # an operator the operator routes act on
    live_lab: str = ""                 # a connected agent's node, tagged env=lab (sessions)
    lab_session: str = ""              # a shell session on it, started by the admin

    def session(self) -> str:
        """A fresh shell session of the admin's on the connected lab node."""
        sid: str = self.admin.ok("POST", "/sessions",
                                 {"node_id": self.live_lab, "kind": "shell"})["session_id"]
        return sid

    def session_ids(self) -> set[str]:
        return {r["session_id"] for r in self.admin.ok(
            "GET", f"/sessions?node_id={self.live_lab}&limit=1000")}

    def operator(self, roles: list[str], statements: list[Statement]) -> tuple[str, Api]:
        name = f"op-{uuid.uuid4().hex[:10]}"
        self.admin.ok("POST", "/operators",
                      {"name": name, "roles": roles, "statements": statements})
        token = self.admin.ok("POST", "/tokens", {"operator": name})["token"]
        return name, Api(self.server.url, token)

    def spare_node(self) -> str:
        """A throwaway node tagged env=lab, registered as an agent registers."""
        activation_id, code = self.spare_activation
        reply = call(self.server.url, "POST", "/registrations",
                     {"activation_id": activation_id, "activation_code": code,
                      "computer_name": "spare"})
        assert reply.status == 201, reply
        node_id: str = reply.data["node_id"]
        return node_id

    def command(self, *targets: str) -> str:
        cmd = self.admin.ok("POST", "/commands", {
            "targets": list(targets), "script": "true", "delivery_timeout": 3600})
        command_id: str = cmd["command_id"]
        return command_id

    def command_ids(self) -> set[str]:
        return {c["command_id"] for c in self.admin.ok("GET", "/commands?limit=1000")}

    def can_read(self, roles: list[str], statements: list[Statement], node_id: str) -> bool:
        """Whether such an operator may read the node (the evaluator, unit-tested apart)."""
        policy = effective_policy(roles, parse_statements(statements))
        return policy.allows("nodes:read", Node(node_id, self.tags(node_id)))

    def tags(self, node_id: str) -> dict[str, str]:
        tags: dict[str, str] = self.admin.ok("GET", f"/nodes/{node_id}")["tags"]
        return tags


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """conftest's server, with room for the throwaway nodes' registrations."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    # test_no_valid_token_is_401 sends ~240 wrong tokens from this one address.
    extra = ["--registrations-per-address", "10000", "--registrations-per-activation", "10000",
             "--failed-tokens-per-address", "100000"]
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database()) if request.param == "postgresql" else None
        srv = Server(data_dir, database_url=url, extra=extra).start()
        yield srv
        srv.stop()


@pytest.fixture(scope="module")
def fleet(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    admin = Api(server.url, server.token)
    act = admin.ok("POST", "/activations", {"registration_limit": 2})
    state = tmp_path_factory.mktemp("authz-agents")
    lab, prod = (Agent(server, state / name).register(act["activation_id"],
                                                      act["activation_code"]).node_id
                 for name in ("lab", "prod"))
    admin.ok("PATCH", f"/nodes/{lab}/tags", {"set": {"env": "lab"}, "remove": []})
    admin.ok("PATCH", f"/nodes/{prod}/tags", {"set": {"env": "prod"}, "remove": []})
    spare = admin.ok("POST", "/activations",
                     {"registration_limit": 10_000, "tags": {"env": "lab"}})
    target = f"target-{uuid.uuid4().hex[:8]}"
    admin.ok("POST", "/operators", {"name": target, "roles": ["viewer"]})
    f = Fleet(server, admin, lab, prod, "", "", "", (spare["activation_id"],
              spare["activation_code"]), target)
    f.cmd_lab, f.cmd_prod, f.cmd_both = f.command(lab), f.command(prod), f.command(lab, prod)
    # Sessions need a connected node; the commands above target the others only.
    live = Agent(server, state / "live").register(spare["activation_id"],
                                                  spare["activation_code"])
    live.start().connected()
    f.live_lab = live.node_id
    f.lab_session = f.session()
    yield f
    live.stop()


# -- the matrix --------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One concrete call of a route, made fresh for each attempt."""

    path: str
    body: Any = None
    node: str | None = None  # the node a node-scoped action concerns
    # For a list filtered by policy: (field, value) of a row shown only when allowed.
    listed: tuple[str, str] | None = None
    # Checks the call's effect (allowed=True) or its absence (allowed=False).
    after: Callable[[bool], None] | None = None
    # The id in the path or body (a node's, or its command's or session's) that a caller
    # who may not read ``node`` must get the same answer for as for an id naming nothing.
    hides: str | None = None

    def missing(self) -> tuple[str, Any, str]:
        """The same call with ``hides`` replaced by a fresh id of its kind naming nothing."""
        assert self.hides is not None
        absent = ("mi-" + uuid.uuid4().hex[:17] if self.hides.startswith("mi-")
                  else str(uuid.uuid4()))
        return (self.path.replace(self.hides, absent),
                _swap(self.body, self.hides, absent), absent)


def _swap(data: Any, old: str, new: str) -> Any:
    return None if data is None else json.loads(json.dumps(data).replace(old, new))


@dataclasses.dataclass(frozen=True)
class Case:
    method: str
    route: str    # the route's path as FastAPI has it, without /api/v1
    action: str
    status: int   # the answer when allowed
    prepare: Callable[[Fleet], Call]

    @property
    def listing(self) -> bool:
        return self.method == "GET" and self.route in ("/nodes", "/nodes/search", "/commands",
                                                        "/sessions")

    def __str__(self) -> str:
        return f"{self.method} {self.route}"


def _create_activation(f: Fleet) -> Call:
    marker = uuid.uuid4().hex

    def after(allowed: bool) -> None:
        prefixes = {a["name_prefix"] for a in f.admin.ok("GET", "/activations")}
        assert (marker in prefixes) is allowed

    return Call("/activations", {"registration_limit": 1, "expires_in": 600,
                                 "name_prefix": marker}, after=after)


def _revoke_activation(f: Fleet) -> Call:
    act = f.admin.ok("POST", "/activations", {"registration_limit": 5, "expires_in": 600})

    def after(allowed: bool) -> None:
        rows = f.admin.ok("GET", "/activations")
        row = next(a for a in rows if a["activation_id"] == act["activation_id"])
        assert (row["revoked_at"] is not None) is allowed
        if allowed:
            reply = call(f.server.url, "POST", "/registrations", {
                "activation_id": act["activation_id"],
                "activation_code": act["activation_code"]})
            assert reply.status == 403, reply

    return Call(f"/activations/{act['activation_id']}", after=after)


def _tag_node(f: Fleet) -> Call:
    marker = uuid.uuid4().hex

    def after(allowed: bool) -> None:
        tags = f.tags(f.lab)
        assert tags["env"] == "lab"
        assert (tags.get("touched") == marker) is allowed

    return Call(f"/nodes/{f.lab}/tags", {"set": {"touched": marker}, "remove": []},
                node=f.lab, after=after, hides=f.lab)


def _deregister_node(f: Fleet) -> Call:
    node = f.spare_node()

    def after(allowed: bool) -> None:
        gone = f.admin.ok("GET", f"/nodes/{node}")["deregistered_at"] is not None
        assert gone is allowed

    return Call(f"/nodes/{node}", node=node, after=after, hides=node)


def _send_command(f: Fleet) -> Call:
    marker = uuid.uuid4().hex

    def after(allowed: bool) -> None:
        comments = {c["comment"] for c in f.admin.ok("GET", "/commands?limit=1000")}
        assert (marker in comments) is allowed

    return Call("/commands", {"targets": [f.lab], "script": "true", "comment": marker,
                              "delivery_timeout": 3600}, node=f.lab, after=after,
                hides=f.lab)


def _cancel_command(f: Fleet) -> Call:
    command_id = f.command(f.lab)

    def after(allowed: bool) -> None:
        status = f.admin.ok("GET", f"/commands/{command_id}")["status"]
        assert status == ("Cancelled" if allowed else "Pending")

    return Call(f"/commands/{command_id}/cancel", node=f.lab, after=after, hides=command_id)


def _start_session(f: Fleet) -> Call:
    before = f.session_ids()

    def after(allowed: bool) -> None:
        assert (len(f.session_ids() - before) == 1) is allowed

    return Call("/sessions", {"node_id": f.live_lab, "kind": "shell"}, node=f.live_lab,
                after=after, hides=f.live_lab)


def _terminate_session(f: Fleet) -> Call:
    session_id = f.session()

    def after(allowed: bool) -> None:
        status = f.admin.ok("GET", f"/sessions/{session_id}")["status"]
        assert status == ("Terminated" if allowed else "Connected")

    return Call(f"/sessions/{session_id}/terminate", node=f.live_lab, after=after,
                hides=session_id)


def _create_operator(f: Fleet) -> Call:
    name = f"new-{uuid.uuid4().hex[:10]}"

    def after(allowed: bool) -> None:
        assert (f.admin("GET", f"/operators/{name}").status == 200) is allowed

    return Call("/operators", {"name": name, "roles": ["viewer"], "statements": []},
                after=after)


def _disable_operator(f: Fleet) -> Call:
    name = f"doomed-{uuid.uuid4().hex[:10]}"
    f.admin.ok("POST", "/operators", {"name": name, "roles": ["viewer"]})

    def after(allowed: bool) -> None:
        assert (f.admin.ok("GET", f"/operators/{name}")["disabled_at"] is not None) is allowed

    return Call(f"/operators/{name}", after=after)


def _create_token(f: Fleet) -> Call:
    marker = uuid.uuid4().hex

    def after(allowed: bool) -> None:
        labels = {t["label"] for t in f.admin.ok("GET", f"/tokens?operator={f.target_operator}")}
        assert (marker in labels) is allowed

    return Call("/tokens", {"operator": f.target_operator, "label": marker}, after=after)


def _revoke_token(f: Fleet) -> Call:
    token = f.admin.ok("POST", "/tokens", {"operator": f.target_operator})

    def after(allowed: bool) -> None:
        rows = f.admin.ok("GET", f"/tokens?operator={f.target_operator}")
        row = next(t for t in rows if t["token_id"] == token["token_id"])
        assert (row["revoked_at"] is not None) is allowed
        status = call(f.server.url, "GET", "/whoami",
                      authorization=f"Bearer {token['token']}").status
        assert status == (401 if allowed else 200)

    return Call(f"/tokens/{token['token_id']}", after=after)


CASES = [
    Case("POST", "/activations", "activations:create", 201, _create_activation),
    Case("GET", "/activations", "activations:read", 200, lambda f: Call("/activations")),
    Case("DELETE", "/activations/{activation_id}", "activations:revoke", 200,
         _revoke_activation),
    Case("GET", "/nodes", "nodes:read", 200,
         lambda f: Call("/nodes", node=f.lab, listed=("node_id", f.lab))),
    Case("GET", "/nodes/search", "nodes:read", 200,
         lambda f: Call(f"/nodes/search?q={f.lab}", node=f.lab, listed=("node_id", f.lab))),
    Case("GET", "/nodes/{node_id}", "nodes:read", 200,
         lambda f: Call(f"/nodes/{f.lab}", node=f.lab, hides=f.lab)),
    Case("PATCH", "/nodes/{node_id}/tags", "nodes:tag", 200, _tag_node),
    Case("DELETE", "/nodes/{node_id}", "nodes:deregister", 200, _deregister_node),
    # Past the policy check the node must be connected; the matrix's nodes are not, so
    # "allowed" reads 409 node_offline (test_rotation.py covers the rest).
    Case("POST", "/nodes/{node_id}/rotate-credential", "nodes:rotate-credential", 409,
         lambda f: Call(f"/nodes/{f.lab}/rotate-credential", node=f.lab, hides=f.lab)),
    Case("POST", "/commands", "commands:send", 201, _send_command),
    Case("GET", "/commands", "commands:read", 200,
         lambda f: Call("/commands?limit=1000", node=f.lab,
                        listed=("command_id", f.cmd_lab))),
    Case("GET", "/commands/{command_id}", "commands:read", 200,
         lambda f: Call(f"/commands/{f.cmd_lab}", node=f.lab, hides=f.cmd_lab)),
    Case("POST", "/commands/{command_id}/cancel", "commands:cancel", 200, _cancel_command),
    Case("GET", "/commands/{command_id}/invocations/{node_id}/{stream}",
         "commands:read-output", 200,
         lambda f: Call(f"/commands/{f.cmd_lab}/invocations/{f.lab}/stdout", node=f.lab,
                        hides=f.lab)),
    Case("POST", "/operators", "operators:manage", 201, _create_operator),
    Case("GET", "/operators", "operators:manage", 200, lambda f: Call("/operators")),
    Case("GET", "/operators/{name}", "operators:manage", 200,
         lambda f: Call(f"/operators/{f.target_operator}")),
    Case("PATCH", "/operators/{name}", "operators:manage", 200,
         lambda f: Call(f"/operators/{f.target_operator}", {"roles": ["viewer"]})),
    Case("DELETE", "/operators/{name}", "operators:manage", 200, _disable_operator),
    Case("POST", "/tokens", "operators:manage", 201, _create_token),
    Case("GET", "/tokens", "operators:manage", 200, lambda f: Call("/tokens")),
    Case("DELETE", "/tokens/{token_id}", "operators:manage", 200, _revoke_token),
    Case("GET", "/audit", "audit:read", 200, lambda f: Call("/audit?limit=10")),
    Case("POST", "/sessions", "sessions:start", 201, _start_session),
    Case("GET", "/sessions", "sessions:read", 200,
         lambda f: Call("/sessions?limit=1000", node=f.live_lab,
                        listed=("session_id", f.lab_session))),
    Case("GET", "/sessions/{session_id}", "sessions:read", 200,
         lambda f: Call(f"/sessions/{f.lab_session}", node=f.live_lab, hides=f.lab_session)),
    Case("GET", "/sessions/{session_id}/recording", "sessions:read-recording", 200,
         lambda f: Call(f"/sessions/{f.lab_session}/recording", node=f.live_lab,
                        hides=f.lab_session)),
    Case("POST", "/sessions/{session_id}/terminate", "sessions:terminate", 200,
         _terminate_session),
    Case("GET", "/audit/verify", "audit:read", 200, lambda f: Call("/audit/verify")),
]


def rows_of(data: Any) -> list[dict[str, Any]]:
    """A listing's rows: the list itself, or a page's ``nodes``."""
    rows: list[dict[str, Any]] = data["nodes"] if isinstance(data, dict) else data
    return rows


def _allow(actions: list[str], resources: list[str]) -> Statement:
    return {"effect": "allow", "actions": actions, "resources": resources}


def _deny(actions: list[str], resources: list[str]) -> Statement:
    return {"effect": "deny", "actions": actions, "resources": resources}


def _smallest_role(action: str) -> str:
    return next(r for r in ("viewer", "operator", "admin") if ROLES[r].allows_everywhere(action))


# A policy: (roles, statements), given the action and the node concerned (None if
# server-wide) and the fleet (for the other node).
Grant = Callable[[str, Optional[str], Fleet], tuple[list[str], list[Statement]]]

ALLOWED: dict[str, Grant] = {
    "action-on-star": lambda a, n, f: ([], [_allow([a], ["*"])]),
    "prefix-on-star": lambda a, n, f: ([], [_allow([a.split(":")[0] + ":*"], ["*"])]),
    "smallest-role": lambda a, n, f: ([_smallest_role(a)], []),
}
ALLOWED_ON_NODE: dict[str, Grant] = {
    "action-on-tag": lambda a, n, f: ([], [_allow([a], ["tag:env=lab"])]),
    "action-on-node-id": lambda a, n, f: ([], [_allow([a], [str(n)])]),
    "deny-on-other-node": lambda a, n, f: ([], [_allow([a], ["*"]),
                                                _deny([a], ["tag:env=prod", f.prod])]),
}
DENIED: dict[str, Grant] = {
    "no-policy": lambda a, n, f: ([], []),
    "every-other-action": lambda a, n, f: ([], [_allow(sorted(ACTIONS - {a}), ["*"])]),
    "admin-with-deny": lambda a, n, f: (["admin"], [_deny([a], ["*"])]),
    "allow-all-deny-prefix": lambda a, n, f: ([], [_allow(["*"], ["*"]),
                                                   _deny([a.split(":")[0] + ":*"], ["*"])]),
}
DENIED_ON_NODE: dict[str, Grant] = {
    "other-node-only": lambda a, n, f: ([], [_allow([a], ["tag:env=prod", f.prod])]),
    "deny-on-tag": lambda a, n, f: ([], [_allow([a], ["*"]), _deny([a], ["tag:env=lab"])]),
    "deny-on-node-id": lambda a, n, f: (["operator"], [_allow([a], ["*"]),
                                                       _deny([a], [str(n)])]),
    "other-tag-value": lambda a, n, f: ([], [_allow([a], ["tag:env=la", "tag:en=lab"])]),
}


def _matrix(allowed: bool) -> Iterator[Any]:
    for case in CASES:
        node_scoped = case.action in NODE_ACTIONS
        grants = {**(ALLOWED if allowed else DENIED),
                  **((ALLOWED_ON_NODE if allowed else DENIED_ON_NODE) if node_scoped else {})}
        if not allowed and not ROLES["viewer"].allows_everywhere(case.action):
            grants["viewer"] = lambda a, n, f: (["viewer"], [])
        for name, grant in grants.items():
            yield pytest.param(case, grant, id=f"{case}-{name}")


@pytest.mark.parametrize(("case", "grant"), list(_matrix(allowed=True)))
def test_allowed(fleet: Fleet, case: Case, grant: Grant) -> None:
    c = case.prepare(fleet)
    roles, statements = grant(case.action, c.node, fleet)
    if c.node is not None:  # a node it may not read does not exist for it
        statements = [*statements, _allow(["nodes:read"], [c.node])]
    _, api = fleet.operator(roles, statements)
    reply = api(case.method, c.path, c.body)
    assert reply.status == case.status, reply
    if c.listed is not None:
        field, value = c.listed
        assert value in {row[field] for row in rows_of(reply.data)}
    if c.after is not None:
        c.after(True)


@pytest.mark.parametrize(("case", "grant"), list(_matrix(allowed=False)))
def test_denied(fleet: Fleet, case: Case, grant: Grant) -> None:
    c = case.prepare(fleet)
    roles, statements = grant(case.action, c.node, fleet)
    name, api = fleet.operator(roles, statements)
    reply = api(case.method, c.path, c.body)
    if case.listing:  # a filtered list: allowed to ask, shown nothing it may not read
        assert reply.status == 200, reply
        assert c.listed is not None
        field, value = c.listed
        assert value not in {row[field] for row in rows_of(reply.data)}
    elif c.node is not None and not fleet.can_read(roles, statements, c.node):
        assert c.hides is not None, "a node-id route without its missing-id twin"
        assert_hidden(api, case.method, c, reply)
    else:
        assert reply.status == 403, reply
        assert reply.data["error"] == "forbidden"
        message = reply.data["message"]
        assert name in message and f"may not {case.action}" in message, message
        if c.node is not None:
            assert c.node in message, message
    if c.after is not None:
        c.after(False)


def assert_hidden(api: Api, method: str, c: Call, reply: Reply | None = None) -> None:
    """The answer to ``c`` is, status and body, the answer to its twin on an id naming
    nothing (with that id in place of the real one)."""
    reply = reply or api(method, c.path, c.body)
    path, body, absent = c.missing()
    twin = api(method, path, body)
    assert twin.status == 404, twin
    assert c.hides is not None
    assert reply.status == 404 and reply.data == _swap(twin.data, absent, c.hides), (reply,
                                                                                     twin)


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every HTTP route, through included routers and mounts."""
    for route in routes:
        if hasattr(route, "original_router"):  # newer FastAPI keeps included routers whole
            yield from _walk(route.original_router.routes,
                             prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield from ((m, prefix + route.path) for m in route.methods or () if m != "HEAD")


def test_every_route_is_in_the_matrix(tmp_path: Path) -> None:
    app = build_app(Settings.for_data_dir(tmp_path)).app
    routes = set(_walk(app.routes))
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert documented and documented <= routes, "the route walk missed documented routes"
    in_app = {(m, p) for m, p in routes
              if p.startswith(API + "/") and p not in UNMATRIXED_PATHS} - UNMATRIXED
    in_table = {(case.method, API + case.route) for case in CASES}
    assert len(in_table) == len(CASES), "a route is in the table twice"
    assert in_app - in_table == set(), "routes without a row in the authorization matrix"
    assert in_table - in_app == set(), "rows for routes the server does not have"
    assert routes >= UNMATRIXED, "an excluded route is gone: update UNMATRIXED"


# -- no token, bad tokens ----------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_no_valid_token_is_401(fleet: Fleet, case: Case) -> None:
    c = case.prepare(fleet)
    for authorization in (None, "", "Bearer", "Bearer ", "Bearer tth-not-a-token",
                          f"Basic {fleet.server.token}", fleet.server.token,
                          f"Token {fleet.server.token}"):
        reply = call(fleet.server.url, case.method, c.path, c.body, authorization)
        assert reply.status == 401, (authorization, reply)
        assert reply.data["error"] == "unauthorized"
    if c.after is not None:
        c.after(False)


def test_revoked_token_is_401(fleet: Fleet) -> None:
    name, api = fleet.operator(["admin"], [])
    assert api("GET", "/nodes").status == 200
    token_id = next(t["token_id"] for t in fleet.admin.ok("GET", f"/tokens?operator={name}"))
    fleet.admin.ok("DELETE", f"/tokens/{token_id}")
    for method, path in (("GET", "/nodes"), ("GET", "/whoami"), ("GET", "/operators")):
        reply = api(method, path)
        assert reply.status == 401 and reply.data["error"] == "unauthorized", reply


def test_expired_token_is_401(fleet: Fleet) -> None:
    name, _ = fleet.operator(["admin"], [])
    created = fleet.admin.ok("POST", "/tokens", {"operator": name, "expires_in": 1})
    api = Api(fleet.server.url, created["token"])
    expires_at = created["expires_at"]
    assert expires_at <= time.time() + 1
    deadline = time.monotonic() + 15
    while True:
        before = time.time()
        reply = api("GET", "/nodes")
        if reply.status == 401:
            break
        assert reply.status == 200, reply
        assert before < expires_at, "the token was still accepted after it expired"
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.05)  # polling interval of a deadline-bound poll
    assert time.time() >= expires_at, "the token was refused before it expired"
    assert reply.data["error"] == "unauthorized"
    assert api("GET", "/whoami").status == 401


def test_disabled_operator_tokens_are_401(fleet: Fleet) -> None:
    name, api = fleet.operator(["admin"], [])
    second = Api(fleet.server.url,
                 fleet.admin.ok("POST", "/tokens", {"operator": name})["token"])
    assert api("GET", "/whoami").status == 200
    assert second("GET", "/operators").status == 200
    disabled = fleet.admin.ok("DELETE", f"/operators/{name}")
    assert disabled["disabled_at"] is not None
    for token in (api, second):
        for method, path in (("GET", "/whoami"), ("GET", "/nodes"), ("GET", "/operators")):
            reply = token(method, path)
            assert reply.status == 401 and reply.data["error"] == "unauthorized", reply
    assert all(t["revoked_at"] is not None
               for t in fleet.admin.ok("GET", f"/tokens?operator={name}"))
    reply = fleet.admin("POST", "/tokens", {"operator": name})
    assert reply.status == 409 and reply.data["error"] == "operator_disabled", reply


def test_operator_cannot_disable_itself(fleet: Fleet) -> None:
    name, api = fleet.operator(["admin"], [])
    reply = api("DELETE", f"/operators/{name}")
    assert reply.status == 409 and reply.data["error"] == "cannot_disable_self", reply
    assert api("GET", "/whoami").status == 200


def test_policy_change_applies_to_the_next_request(fleet: Fleet) -> None:
    name, api = fleet.operator(["viewer"], [])
    assert api("GET", f"/nodes/{fleet.lab}").status == 200
    fleet.admin.ok("PATCH", f"/operators/{name}",
                   {"statements": [_deny(["nodes:read"], ["tag:env=lab"])]})
    assert_hidden(api, "GET", Call(f"/nodes/{fleet.lab}", hides=fleet.lab))
    assert api("GET", f"/nodes/{fleet.prod}").status == 200
    fleet.admin.ok("PATCH", f"/operators/{name}", {"roles": [], "statements": []})
    assert_hidden(api, "GET", Call(f"/nodes/{fleet.prod}", hides=fleet.prod))


# -- scoping by tag ----------------------------------------------------------


def test_node_list_shows_only_the_allowed_tag(fleet: Fleet) -> None:
    _, api = fleet.operator([], [_allow(["nodes:read"], ["tag:env=lab"])])
    nodes = api.ok("GET", "/nodes")
    ids = {n["node_id"] for n in nodes}
    assert fleet.lab in ids and fleet.prod not in ids
    assert all(n["tags"].get("env") == "lab" for n in nodes)
    # A filter for the other tag finds nothing, rather than the node.
    assert api.ok("GET", "/nodes?tag=env%3Dprod") == []
    assert_hidden(api, "GET", Call(f"/nodes/{fleet.prod}", hides=fleet.prod))


def test_send_to_a_node_outside_the_policy_sends_nothing(fleet: Fleet) -> None:
    """A node it may read but not send to is refused by name; one it may not read is not
    there: its id is answered as an id naming nothing, a tag or ``all`` do not reach it."""
    _, api = fleet.operator([], [_allow(["commands:send", "commands:read", "nodes:read"],
                                        ["tag:env=lab"])])
    before = fleet.command_ids()
    for targets in ([fleet.lab, fleet.prod], [fleet.prod]):
        assert_hidden(api, "POST", Call("/commands", {"targets": targets, "script": "true"},
                                        hides=fleet.prod))
    reply = api("POST", "/commands", {"targets": ["tag:env=prod"], "script": "true"})
    nobody = api("POST", "/commands", {"targets": ["tag:env=nobody"], "script": "true"})
    assert reply.status == 404 and reply.data == nobody.data, (reply, nobody)
    # An allow on * with a deny on the prod tag, for an operator who can read prod,
    # refuses the same sends and names the node.
    _, denied = fleet.operator(["viewer"], [_allow(["commands:send"], ["*"]),
                                            _deny(["commands:send"], ["tag:env=prod"])])
    for targets in ([fleet.lab, fleet.prod], ["all"], ["tag:env=prod"]):
        reply = denied("POST", "/commands", {"targets": targets, "script": "true"})
        assert reply.status == 403 and fleet.prod in reply.data["message"], (targets, reply)
        assert "commands:send" in reply.data["message"] and fleet.lab not in reply.data["message"]
    assert fleet.command_ids() == before
    # ``all`` is all it may read: the lab nodes, never prod.
    sent = api.ok("POST", "/commands", {"targets": ["all"], "script": "true",
                                        "delivery_timeout": 3600})
    reached = {i["node_id"] for i in sent["invocations"]}
    assert fleet.lab in reached and fleet.prod not in reached
    assert all(fleet.tags(n).get("env") == "lab" for n in reached)
    # The same operator may send to the lab node alone.
    sent = api.ok("POST", "/commands", {"targets": [fleet.lab], "script": "true"})
    assert [i["node_id"] for i in sent["invocations"]] == [fleet.lab]


def test_session_list_limit_counts_only_sessions_the_policy_reaches(
        fleet: Fleet, tmp_path: Path) -> None:
    """The policy filters before the limit: a newer session on a node the operator may
    not read must not push theirs off the page (a filter after LIMIT returned none)."""
    act = fleet.admin.ok("POST", "/activations",
                         {"registration_limit": 1, "tags": {"env": "prod"}})
    other = Agent(fleet.server, tmp_path / "live-prod").register(
        act["activation_id"], act["activation_code"])
    other.start().connected()
    try:
        newest = fleet.admin.ok("POST", "/sessions",
                                {"node_id": other.node_id, "kind": "shell"})["session_id"]
        _, api = fleet.operator([], [_allow(["sessions:read", "nodes:read"], ["tag:env=lab"])])
        (row,) = api.ok("GET", "/sessions?limit=1")
        assert row["node_id"] == fleet.live_lab and row["session_id"] != newest, row
        for statements in ([_allow(["sessions:read", "nodes:read"], ["*"]),
                            _deny(["sessions:read"], ["tag:env=prod"])],
                           [_allow(["sessions:read"], ["*"]),  # #16: two scopes, ANDed
                            _allow(["nodes:read"], ["tag:env=lab"])]):
            _, denied = fleet.operator([], statements)
            (row,) = denied.ok("GET", "/sessions?limit=1")
            assert row["node_id"] == fleet.live_lab, row
        assert fleet.admin.ok("GET", "/sessions?limit=1")[0]["session_id"] == newest
        fleet.admin.ok("POST", f"/sessions/{newest}/terminate", {})
    finally:
        other.stop()


def test_command_list_hides_commands_touching_other_nodes(fleet: Fleet) -> None:
    actions = ["commands:read", "commands:read-output", "commands:cancel"]
    # It may read prod: each refusal names it.
    _, api = fleet.operator(["viewer"], [_allow(actions, ["*"]),
                                         _deny(actions, ["tag:env=prod"])])
    # It may not read prod: a command reaching prod does not exist for it.
    _, blind = fleet.operator([], [_allow([*actions, "nodes:read"], ["tag:env=lab"])])
    for who in (api, blind):
        listed = {c["command_id"] for c in who.ok("GET", "/commands?limit=1000")}
        assert fleet.cmd_lab in listed
        assert fleet.cmd_prod not in listed and fleet.cmd_both not in listed
    for command_id in (fleet.cmd_prod, fleet.cmd_both):
        for method, path, hides in (
                ("GET", f"/commands/{command_id}", command_id),
                ("GET", f"/commands/{command_id}/invocations/{fleet.prod}/stdout", fleet.prod),
                ("POST", f"/commands/{command_id}/cancel", command_id)):
            reply = api(method, path)
            assert reply.status == 403, (method, path, reply)
            assert fleet.prod in reply.data["message"], reply
            assert_hidden(blind, method, Call(path, hides=hides))
    assert fleet.admin.ok("GET", f"/commands/{fleet.cmd_both}")["status"] == "Pending"


def test_command_list_limit_counts_only_commands_the_policy_reaches(fleet: Fleet) -> None:
    """Filtered before the limit: newer commands touching a node the operator may not
    read must not push theirs off the page."""
    newer = {fleet.command(fleet.prod), fleet.command(fleet.lab, fleet.prod)}
    for statements in ([_allow(["commands:read", "nodes:read"], ["tag:env=lab"])],
                       [_allow(["commands:read", "nodes:read"], ["*"]),
                        _deny(["commands:read"], [fleet.prod])],
                       [_allow(["commands:read"], ["*"]),  # #16: two scopes, ANDed
                        _allow(["nodes:read"], ["*"]), _deny(["nodes:read"], [fleet.prod])]):
        _, api = fleet.operator([], statements)
        (row,) = api.ok("GET", "/commands?limit=1")
        assert row["command_id"] not in newer, row
        api.ok("GET", f"/commands/{row['command_id']}")  # it may read the whole command
    assert {c["command_id"] for c in fleet.admin.ok("GET", "/commands?limit=2")} == newer


def test_tag_scope_cannot_be_escaped_by_retagging(fleet: Fleet) -> None:
    _, api = fleet.operator([], [_allow(["nodes:tag", "nodes:read"], ["tag:env=lab"])])
    node = fleet.spare_node()  # a lab node of its own: a wrong answer must not move the fleet
    for body in ({"set": {"env": "prod"}, "remove": []},
                 {"set": {}, "remove": ["env"]},
                 {"set": {"env": "lab2"}, "remove": []}):
        reply = api("PATCH", f"/nodes/{node}/tags", body)
        assert reply.status == 403, (body, reply)
        assert reply.data["error"] == "forbidden" and node in reply.data["message"], reply
        assert fleet.tags(node) == {"env": "lab"}
    for body in ({"set": {"env": "lab"}, "remove": []}, {"set": {"x": "y"}, "remove": []}):
        assert_hidden(api, "PATCH", Call(f"/nodes/{fleet.prod}/tags", body, hides=fleet.prod))
    assert fleet.tags(fleet.prod) == {"env": "prod"}
    tagged = api.ok("PATCH", f"/nodes/{node}/tags", {"set": {"rack": "r7"}, "remove": []})
    assert tagged["tags"] == {"env": "lab", "rack": "r7"}
    tagged = api.ok("PATCH", f"/nodes/{node}/tags", {"set": {}, "remove": ["rack"]})
    assert tagged["tags"] == {"env": "lab"}


def test_explicit_deny_beats_the_viewer_role(fleet: Fleet) -> None:
    _, api = fleet.operator(["viewer"], [_deny(["nodes:read"], ["*"]),
                                         _deny(["commands:read"], ["tag:env=prod"])])
    assert_hidden(api, "GET", Call(f"/nodes/{fleet.lab}", hides=fleet.lab))
    assert {n["node_id"] for n in api.ok("GET", "/nodes")} & {fleet.lab, fleet.prod} == set()
    # Reading no node, it reads no command either: each names a node (finding 16).
    for command_id in (fleet.cmd_lab, fleet.cmd_both):
        assert_hidden(api, "GET", Call(f"/commands/{command_id}", hides=command_id))
    assert api.ok("GET", "/commands?limit=1000") == []
    _, reads = fleet.operator(["viewer"], [_deny(["commands:read"], ["tag:env=prod"])])
    reply = reads("GET", f"/commands/{fleet.cmd_both}")
    assert reply.status == 403 and fleet.prod in reply.data["message"], reply
    listed = {c["command_id"] for c in reads.ok("GET", "/commands?limit=1000")}
    assert fleet.cmd_lab in listed and fleet.cmd_both not in listed


def test_unknown_command_is_404_not_500(fleet: Fleet) -> None:
    _, scoped = fleet.operator([], [_allow(["commands:*"], ["tag:env=lab"])])
    missing = str(uuid.uuid4())
    for api in (fleet.admin, scoped):
        for method, path in (("GET", f"/commands/{missing}"),
                             ("POST", f"/commands/{missing}/cancel")):
            reply = api(method, path)
            assert reply.status == 404, (method, path, reply)


# -- reach: retags, activations, recordings, previews (issue 12) --------------


def test_retag_may_not_widen_the_operators_own_reach(fleet: Fleet) -> None:
    """Finding 4: removing a tag a deny names, or tagging a node into one's own team,
    is refused naming the actions it would newly allow; the tags stay, nothing is sent."""
    _, site_a = fleet.operator([], [_allow(["commands:*", "nodes:tag", "nodes:read"],
                                           ["tag:site=a"]),
                                    _deny(["commands:send"], ["tag:frozen=yes"])])
    frozen = fleet.spare_node()
    fleet.admin.ok("PATCH", f"/nodes/{frozen}/tags",
                   {"set": {"site": "a", "frozen": "yes"}, "remove": []})
    reply = site_a("PATCH", f"/nodes/{frozen}/tags", {"set": {}, "remove": ["frozen"]})
    assert reply.status == 403 and reply.data["error"] == "forbidden", reply
    assert "newly allow commands:send" in reply.data["message"], reply
    assert frozen in reply.data["message"]
    assert fleet.tags(frozen)["frozen"] == "yes"
    reply = site_a("POST", "/commands", {"targets": [frozen], "script": "true"})
    assert reply.status == 403 and "commands:send" in reply.data["message"], reply
    # Freezing is a loss, not a gain: allowed.
    thawed = fleet.spare_node()
    fleet.admin.ok("PATCH", f"/nodes/{thawed}/tags", {"set": {"site": "a"}, "remove": []})
    site_a.ok("PATCH", f"/nodes/{thawed}/tags", {"set": {"frozen": "yes"}, "remove": []})

    _, tagger = fleet.operator([], [_allow(["nodes:tag", "nodes:read"], ["*"]),
                                    _allow(["commands:send"], ["tag:team=me"])])
    other = fleet.spare_node()
    reply = tagger("PATCH", f"/nodes/{other}/tags", {"set": {"team": "me"}, "remove": []})
    assert reply.status == 403 and "newly allow commands:send" in reply.data["message"], reply
    assert "team" not in fleet.tags(other)
    before = fleet.command_ids()
    reply = tagger("POST", "/commands", {"targets": [other], "script": "true"})
    assert reply.status == 403 and other in reply.data["message"], reply
    assert fleet.command_ids() == before
    # The built-in operator role holds everything everywhere: any retag is fine.
    _, operator = fleet.operator(["operator"], [])
    operator.ok("PATCH", f"/nodes/{other}/tags", {"set": {"team": "me"}, "remove": []})


def test_two_retags_at_once_are_checked_one_after_the_other(fleet: Fleet) -> None:
    """Finding 4, raced: adding ``team=me`` and removing ``frozen`` are each harmless
    alone; checked both against the tags before either, both passed and the node ended
    in the operator's reach. The check runs under the node's lock: one is refused."""
    _, tagger = fleet.operator([], [_allow(["nodes:tag", "nodes:read"], ["*"]),
                                    _allow(["commands:send"], ["tag:team=me"]),
                                    _deny(["commands:send"], ["tag:frozen=yes"])])
    for _ in range(5):
        node = fleet.spare_node()
        fleet.admin.ok("PATCH", f"/nodes/{node}/tags", {"set": {"frozen": "yes"}, "remove": []})
        start, replies = threading.Barrier(2), []

        def retag(path: str, change: dict[str, Any], start: threading.Barrier = start,
                  replies: list[Any] = replies) -> None:
            start.wait()
            replies.append(tagger("PATCH", path, change))

        threads = [threading.Thread(target=retag, args=(f"/nodes/{node}/tags", change))
                   for change in ({"set": {"team": "me"}, "remove": []},
                                  {"set": {}, "remove": ["frozen"]})]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status for r in replies) == [200, 403], replies
        tags = fleet.tags(node)
        assert tags.get("frozen") == "yes" or "team" not in tags, tags


def test_activation_tags_may_not_widen_the_creators_reach(fleet: Fleet) -> None:
    """Finding 5: an activation's tags need nodes:tag for each tag (and all together)."""
    _, site_a = fleet.operator([], [_allow(["activations:create", "activations:read"], ["*"]),
                                    _allow(["nodes:tag", "nodes:read", "commands:*"],
                                           ["tag:site=a"])])
    before = {a["activation_id"] for a in fleet.admin.ok("GET", "/activations")}
    reply = site_a("POST", "/activations", {"registration_limit": 1, "tags": {"site": "b"}})
    assert reply.status == 403 and "nodes:tag" in reply.data["message"], reply
    assert "site=b" in reply.data["message"]
    assert {a["activation_id"] for a in fleet.admin.ok("GET", "/activations")} == before
    site_a.ok("POST", "/activations", {"registration_limit": 1, "tags": {"site": "a"}})
    # A tag it may not set cannot ride along with one it may: each tag is a way in.
    reply = site_a("POST", "/activations", {"registration_limit": 1,
                                            "tags": {"site": "a", "env": "prod"}})
    assert reply.status == 403 and "env=prod" in reply.data["message"], reply
    site_a.ok("POST", "/activations", {"registration_limit": 1})  # untagged: nothing to tag
    _, operator = fleet.operator(["operator"], [])
    operator.ok("POST", "/activations", {"registration_limit": 1, "tags": {"site": "b"}})
    # A deny the tags would dodge: an operator kept off frozen nodes may create frozen ones.
    _, careful = fleet.operator(["operator"], [_deny(["commands:send"], ["tag:frozen=yes"])])
    careful.ok("POST", "/activations", {"registration_limit": 1, "tags": {"frozen": "yes"}})


def test_reading_a_recording_needs_its_own_action(fleet: Fleet) -> None:
    """Finding 7: ``sessions:read`` (the viewer's; and any policy stored with it before
    the action existed) shows the session, not what the device printed."""
    path = f"/sessions/{fleet.lab_session}/recording"
    for roles, statements in ((["viewer"], []),
                              ([], [_allow(["sessions:read", "nodes:read"], ["*"])])):
        name, api = fleet.operator(roles, statements)
        assert api("GET", f"/sessions/{fleet.lab_session}").status == 200
        reply = api("GET", path)
        assert reply.status == 403, reply
        assert f"{name} may not sessions:read-recording" in reply.data["message"], reply
    for statements in ([_allow(["sessions:*", "nodes:read"], ["*"])],
                       [_allow(["sessions:read-recording", "nodes:read"], ["tag:env=lab"])]):
        _, api = fleet.operator([], statements)
        reply = api("GET", path)
        assert reply.status == 200 and isinstance(reply.data, bytes), reply


def test_preview_counts_and_names_only_readable_nodes(fleet: Fleet) -> None:
    """Finding 16: ``all`` counts what the operator may read; a tag on nodes it may not
    read previews as a tag nobody carries; an unreadable id as one naming nothing."""
    _, lab = fleet.operator([], [_allow(["nodes:read"], ["tag:env=lab"])])
    readable = {n["node_id"] for n in lab.ok("GET", "/nodes")}
    every = fleet.admin.ok("GET", "/targets/preview?target=all")
    mine = lab.ok("GET", "/targets/preview?target=all")
    assert mine["count"] == len(readable) < every["count"]
    # It may send nowhere: every node it can read is refused by name, and only those.
    assert mine["refused_count"] == len(readable)
    assert set(mine["refused"]) <= readable and fleet.prod not in mine["refused"]
    prod = lab.ok("GET", "/targets/preview?target=tag%3Aenv%3Dprod")
    nobody = lab.ok("GET", "/targets/preview?target=tag%3Aenv%3Dnobody")
    assert prod == nobody and prod["count"] == 0
    assert fleet.admin.ok("GET", "/targets/preview?target=tag%3Aenv%3Dprod")["count"] >= 1
    assert_hidden(lab, "GET", Call(f"/targets/preview?target={fleet.prod}", hides=fleet.prod))


def test_node_counts_count_readable_nodes_by_state_and_tag_value(fleet: Fleet) -> None:
    """The fleet page's summary (issue 13): Online / ConnectionLost / Deregistered, by the
    values of a tag, of the nodes the operator may read; a deregistered node moves from
    its ping status to Deregistered."""
    def counts(api: Api, query: str) -> dict[str, Any]:
        answer: dict[str, Any] = api.ok("GET", f"/nodes/counts?{query}")
        for state in ("Online", "ConnectionLost", "Deregistered"):  # the values add up
            assert "by=" not in query or answer["more_values"] or sum(
                v[state] for v in answer["values"]) == answer["total"][state], answer
        return answer

    before = counts(fleet.admin, "by=env")
    spare = fleet.spare_node()
    fleet.admin.ok("DELETE", f"/nodes/{spare}")
    after = counts(fleet.admin, "by=env")
    lab = {v["value"]: v for v in after["values"]}["lab"]
    assert after["total"]["Deregistered"] == before["total"]["Deregistered"] + 1, after
    assert lab["Deregistered"] >= 1 and {"lab", "prod"} <= {v["value"] for v in after["values"]}
    readable = len(fleet.admin.ok("GET", "/nodes"))  # registered ones
    assert after["total"]["Online"] + after["total"]["ConnectionLost"] == readable, after
    only = counts(fleet.admin, f"q={spare}")  # the search's words, as /nodes/search
    assert only["total"] == {"Online": 0, "ConnectionLost": 0, "Deregistered": 1}, only
    # An operator who may read the lab nodes counts those only, never prod.
    _, lab_op = fleet.operator([], [_allow(["nodes:read"], ["tag:env=lab"])])
    mine = counts(lab_op, "by=env")
    assert [v["value"] for v in mine["values"]] == ["lab"], mine
    assert mine["total"] == {k: lab[k] for k in mine["total"]}, (mine, lab)
    assert counts(lab_op, "by=env&limit=1")["more_values"] == 0
    assert counts(fleet.admin, "by=env&limit=1")["more_values"] >= 1


def test_an_unreadable_node_answers_as_a_missing_one_on_every_node_route(
        fleet: Fleet) -> None:
    """Finding 16, over every route that takes a node id (or a thing on one): status and
    body as for an id naming nothing. The prod node is a real agent's, with a real command
    on it. A node id route hides the node from an admin denied only ``nodes:read`` there;
    a command is hidden when refused on a node the operator may not read."""
    _, unread = fleet.operator(["admin"], [_deny(["nodes:read"], ["tag:env=prod"])])
    _, outside = fleet.operator(["admin"], [_deny(["nodes:*", "commands:*", "sessions:*"],
                                                  ["tag:env=prod"])])
    p, cmd = fleet.prod, fleet.cmd_prod
    node_routes = [
        ("GET", Call(f"/nodes/{p}", hides=p)),
        ("PATCH", Call(f"/nodes/{p}/tags", {"set": {"x": "y"}, "remove": []}, hides=p)),
        ("DELETE", Call(f"/nodes/{p}", hides=p)),
        ("POST", Call(f"/nodes/{p}/rotate-credential", hides=p)),
        ("POST", Call("/commands", {"targets": [p], "script": "true"}, hides=p)),
        ("GET", Call(f"/commands/{cmd}/invocations/{p}/stdout", hides=p)),
        ("POST", Call("/sessions", {"node_id": p, "kind": "shell"}, hides=p)),
        ("GET", Call(f"/targets/preview?target={p}", hides=p))]
    for api in (unread, outside):
        for method, c in node_routes:
            assert_hidden(api, method, c)
    for method, c in (("GET", Call(f"/commands/{cmd}", hides=cmd)),
                      ("POST", Call(f"/commands/{cmd}/cancel", hides=cmd))):
        assert_hidden(outside, method, c)
    assert fleet.tags(p) == {"env": "prod"}
    assert fleet.admin.ok("GET", f"/nodes/{p}")["deregistered_at"] is None
    assert fleet.admin.ok("GET", f"/commands/{cmd}")["status"] == "Pending"


def test_a_hidden_node_is_audited_as_a_refusal(fleet: Fleet) -> None:
    """The answer says "no node"; the audit record says what was refused, and where."""
    name, api = fleet.operator([], [_allow(["nodes:read", "commands:send"], ["tag:env=lab"])])
    assert api("GET", f"/nodes/{fleet.prod}").status == 404
    assert api("POST", "/commands", {"targets": [fleet.prod], "script": "true"}).status == 404
    records = fleet.admin.ok("GET", f"/audit?actor={name}")
    by_action = {r["action"]: r for r in records}
    for action, refused in (("GET /api/v1/nodes/{node_id}", "nodes:read"),
                            ("POST /api/v1/commands", "commands:send")):
        record = by_action[action]
        assert record["outcome"] == "denied", record
        assert record["detail"]["status"] == 404
        assert refused in record["detail"]["refused"] and fleet.prod in record["detail"]["refused"]


def test_lists_and_details_name_no_node_outside_nodes_read(fleet: Fleet) -> None:
    """Finding 16: a policy granting ``commands:read`` / ``sessions:read`` on nodes it
    may not ``nodes:read`` lists nothing on them, by ``node_id`` or not, and a command
    touching one is answered as a missing command, though the list's own action holds
    there. Both scopes are one SQL condition, applied before the limit."""
    reads = ["commands:read", "sessions:read", "commands:read-output"]
    blind_to_prod = [_allow(reads, ["*"]), _allow(["nodes:read"], ["tag:env=lab"])]
    blind_to_live = [_allow([*reads, "nodes:read"], ["*"]),
                     _deny(["nodes:read"], [fleet.live_lab])]
    _, prod_blind = fleet.operator([], blind_to_prod)
    _, admin_blind = fleet.operator(["admin"], [_deny(["nodes:read"], ["tag:env=prod"])])
    _, live_blind = fleet.operator([], blind_to_live)
    for api in (prod_blind, admin_blind):
        assert api.ok("GET", f"/commands?node_id={fleet.prod}") == []
        listed = {c["command_id"] for c in api.ok("GET", "/commands?limit=1000")}
        assert fleet.cmd_lab in listed
        assert not {fleet.cmd_prod, fleet.cmd_both} & listed
        for command_id in (fleet.cmd_prod, fleet.cmd_both):
            assert_hidden(api, "GET", Call(f"/commands/{command_id}", hides=command_id))
            assert_hidden(api, "GET", Call(f"/commands/{command_id}?invocations=false",
                                           hides=command_id))
        assert api.ok("GET", f"/commands/{fleet.cmd_lab}")["command_id"] == fleet.cmd_lab
        shown = api.ok("GET", "/sessions?limit=1000")
        assert fleet.lab_session in {r["session_id"] for r in shown}
        assert all(r["node_id"] != fleet.prod for r in shown)
    # Sessions on a node it may not read: neither listed, nor shown, nor by node_id.
    assert live_blind.ok("GET", f"/sessions?node_id={fleet.live_lab}") == []
    listed = {r["session_id"] for r in live_blind.ok("GET", "/sessions?limit=1000")}
    assert fleet.lab_session not in listed
    assert_hidden(live_blind, "GET",
                  Call(f"/sessions/{fleet.lab_session}", hides=fleet.lab_session))
    # Its commands on nodes it may read are still there (the live node has none).
    assert fleet.cmd_both in {c["command_id"] for c in live_blind.ok("GET", "/commands?limit=1000")}
    # The admin, and an operator reading everything, see all of it.
    for api in (fleet.admin, fleet.operator(["viewer"], [])[1]):
        assert fleet.cmd_prod in {c["command_id"] for c in api.ok(
            "GET", f"/commands?node_id={fleet.prod}")}
        assert fleet.lab_session in {r["session_id"] for r in api.ok(
            "GET", f"/sessions?node_id={fleet.live_lab}&limit=1000")}
