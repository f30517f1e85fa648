"""Authorization matrix: every operator route, run by an allowed and by a denied operator.

Real server (SQLite and PostgreSQL), real agent registrations, plain HTTP. For
each route the table below names the action it needs; each route is called by
operators whose policy allows that action (on ``*``, through a ``:*`` prefix,
a built-in role, the node's tag, the node's id) and by operators whose policy
does not (nothing at all, every other action, an explicit deny over an admin
role or over an allow, an allow on another node only). Allowed calls answer
2xx; denied ones answer 403 ``forbidden`` naming the action (and the node), and
change nothing. Lists filtered by policy (``GET /nodes``, ``GET /commands``)
answer 200 and leave out what the operator may not read.

``test_every_route_is_in_the_matrix`` fails when a route under /api/v1 is added
without a row here, so no new route can skip the matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from tether.server.access.policy import ACTIONS, NODE_ACTIONS, ROLES
from tether.server.app import build_app
from tether.server.config import Settings

API = "/api/v1"
# Routes outside the matrix: registration is authenticated by the activation code,
# whoami needs only a valid token, and the docs are public.
# Any valid token: registration (an activation code instead), whoami, and the target
# preview, which tells what POST /commands would (the count, the nodes it would refuse).
UNMATRIXED = {("POST", "/api/v1/registrations"), ("GET", "/api/v1/whoami"),
              ("GET", "/api/v1/targets/preview")}
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

    def tags(self, node_id: str) -> dict[str, str]:
        tags: dict[str, str] = self.admin.ok("GET", f"/nodes/{node_id}")["tags"]
        return tags


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """conftest's server, with room for the throwaway nodes' registrations."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    extra = ["--registrations-per-address", "10000", "--registrations-per-activation", "10000"]
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
                node=f.lab, after=after)


def _deregister_node(f: Fleet) -> Call:
    node = f.spare_node()

    def after(allowed: bool) -> None:
        gone = f.admin.ok("GET", f"/nodes/{node}")["deregistered_at"] is not None
        assert gone is allowed

    return Call(f"/nodes/{node}", node=node, after=after)


def _send_command(f: Fleet) -> Call:
    marker = uuid.uuid4().hex

    def after(allowed: bool) -> None:
        comments = {c["comment"] for c in f.admin.ok("GET", "/commands?limit=1000")}
        assert (marker in comments) is allowed

    return Call("/commands", {"targets": [f.lab], "script": "true", "comment": marker,
                              "delivery_timeout": 3600}, node=f.lab, after=after)


def _cancel_command(f: Fleet) -> Call:
    command_id = f.command(f.lab)

    def after(allowed: bool) -> None:
        status = f.admin.ok("GET", f"/commands/{command_id}")["status"]
        assert status == ("Cancelled" if allowed else "Pending")

    return Call(f"/commands/{command_id}/cancel", node=f.lab, after=after)


def _start_session(f: Fleet) -> Call:
    before = f.session_ids()

    def after(allowed: bool) -> None:
        assert (len(f.session_ids() - before) == 1) is allowed

    return Call("/sessions", {"node_id": f.live_lab, "kind": "shell"}, node=f.live_lab,
                after=after)


def _terminate_session(f: Fleet) -> Call:
    session_id = f.session()

    def after(allowed: bool) -> None:
        status = f.admin.ok("GET", f"/sessions/{session_id}")["status"]
        assert status == ("Terminated" if allowed else "Connected")

    return Call(f"/sessions/{session_id}/terminate", node=f.live_lab, after=after)


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
         lambda f: Call(f"/nodes/{f.lab}", node=f.lab)),
    Case("PATCH", "/nodes/{node_id}/tags", "nodes:tag", 200, _tag_node),
    Case("DELETE", "/nodes/{node_id}", "nodes:deregister", 200, _deregister_node),
    # Past the policy check the node must be connected; the matrix's nodes are not, so
    # "allowed" reads 409 node_offline (test_rotation.py covers the rest).
    Case("POST", "/nodes/{node_id}/rotate-credential", "nodes:rotate-credential", 409,
         lambda f: Call(f"/nodes/{f.lab}/rotate-credential", node=f.lab)),
    Case("POST", "/commands", "commands:send", 201, _send_command),
    Case("GET", "/commands", "commands:read", 200,
         lambda f: Call("/commands?limit=1000", node=f.lab,
                        listed=("command_id", f.cmd_lab))),
    Case("GET", "/commands/{command_id}", "commands:read", 200,
         lambda f: Call(f"/commands/{f.cmd_lab}", node=f.lab)),
    Case("POST", "/commands/{command_id}/cancel", "commands:cancel", 200, _cancel_command),
    Case("GET", "/commands/{command_id}/invocations/{node_id}/{stream}",
         "commands:read-output", 200,
         lambda f: Call(f"/commands/{f.cmd_lab}/invocations/{f.lab}/stdout", node=f.lab)),
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
         lambda f: Call(f"/sessions/{f.lab_session}", node=f.live_lab)),
    Case("GET", "/sessions/{session_id}/recording", "sessions:read", 200,
         lambda f: Call(f"/sessions/{f.lab_session}/recording", node=f.live_lab)),
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
    else:
        assert reply.status == 403, reply
        assert reply.data["error"] == "forbidden"
        message = reply.data["message"]
        assert name in message and f"may not {case.action}" in message, message
        if c.node is not None:
            assert c.node in message, message
    if c.after is not None:
        c.after(False)


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
    assert api("GET", f"/nodes/{fleet.lab}").status == 403
    assert api("GET", f"/nodes/{fleet.prod}").status == 200
    fleet.admin.ok("PATCH", f"/operators/{name}", {"roles": [], "statements": []})
    assert api("GET", f"/nodes/{fleet.prod}").status == 403


# -- scoping by tag ----------------------------------------------------------


def test_node_list_shows_only_the_allowed_tag(fleet: Fleet) -> None:
    _, api = fleet.operator([], [_allow(["nodes:read"], ["tag:env=lab"])])
    nodes = api.ok("GET", "/nodes")
    ids = {n["node_id"] for n in nodes}
    assert fleet.lab in ids and fleet.prod not in ids
    assert all(n["tags"].get("env") == "lab" for n in nodes)
    # A filter for the other tag finds nothing, rather than the node.
    assert api.ok("GET", "/nodes?tag=env%3Dprod") == []
    reply = api("GET", f"/nodes/{fleet.prod}")
    assert reply.status == 403 and fleet.prod in reply.data["message"], reply


def test_send_to_a_node_outside_the_policy_sends_nothing(fleet: Fleet) -> None:
    _, api = fleet.operator([], [_allow(["commands:send", "commands:read"], ["tag:env=lab"])])
    before = fleet.command_ids()
    for targets in ([fleet.lab, fleet.prod], ["tag:env=prod"], ["all"],
                    [fleet.lab, "tag:env=prod"]):
        reply = api("POST", "/commands", {"targets": targets, "script": "true"})
        assert reply.status == 403, (targets, reply)
        assert reply.data["error"] == "forbidden"
        message = reply.data["message"]
        assert "commands:send" in message and fleet.prod in message, message
        assert fleet.lab not in message, message
    # An allow on * with a deny on the prod tag refuses the same sends.
    _, denied = fleet.operator([], [_allow(["commands:send"], ["*"]),
                                    _deny(["commands:send"], ["tag:env=prod"])])
    for targets in ([fleet.lab, fleet.prod], ["all"]):
        reply = denied("POST", "/commands", {"targets": targets, "script": "true"})
        assert reply.status == 403 and fleet.prod in reply.data["message"], (targets, reply)
    assert fleet.command_ids() == before
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
        _, api = fleet.operator([], [_allow(["sessions:read"], ["tag:env=lab"])])
        (row,) = api.ok("GET", "/sessions?limit=1")
        assert row["node_id"] == fleet.live_lab and row["session_id"] != newest, row
        _, denied = fleet.operator([], [_allow(["sessions:read"], ["*"]),
                                        _deny(["sessions:read"], ["tag:env=prod"])])
        (row,) = denied.ok("GET", "/sessions?limit=1")
        assert row["node_id"] == fleet.live_lab, row
        assert fleet.admin.ok("GET", "/sessions?limit=1")[0]["session_id"] == newest
        fleet.admin.ok("POST", f"/sessions/{newest}/terminate", {})
    finally:
        other.stop()


def test_command_list_hides_commands_touching_other_nodes(fleet: Fleet) -> None:
    _, api = fleet.operator([], [_allow(["commands:read", "commands:read-output",
                                         "commands:cancel"], ["tag:env=lab"])])
    listed = {c["command_id"] for c in api.ok("GET", "/commands?limit=1000")}
    assert fleet.cmd_lab in listed
    assert fleet.cmd_prod not in listed and fleet.cmd_both not in listed
    for command_id in (fleet.cmd_prod, fleet.cmd_both):
        for method, path in (("GET", f"/commands/{command_id}"),
                             ("GET", f"/commands/{command_id}/invocations/{fleet.prod}/stdout"),
                             ("POST", f"/commands/{command_id}/cancel")):
            reply = api(method, path)
            assert reply.status == 403, (method, path, reply)
            assert fleet.prod in reply.data["message"], reply
    assert fleet.admin.ok("GET", f"/commands/{fleet.cmd_both}")["status"] == "Pending"


def test_command_list_limit_counts_only_commands_the_policy_reaches(fleet: Fleet) -> None:
    """Filtered before the limit: newer commands touching a node the operator may not
    read must not push theirs off the page."""
    newer = {fleet.command(fleet.prod), fleet.command(fleet.lab, fleet.prod)}
    for statements in ([_allow(["commands:read"], ["tag:env=lab"])],
                       [_allow(["commands:read"], ["*"]),
                        _deny(["commands:read"], [fleet.prod])]):
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
    reply = api("PATCH", f"/nodes/{fleet.prod}/tags", {"set": {"env": "lab"}, "remove": []})
    assert reply.status == 403 and fleet.prod in reply.data["message"], reply
    reply = api("PATCH", f"/nodes/{fleet.prod}/tags", {"set": {"x": "y"}, "remove": []})
    assert reply.status == 403, reply
    assert fleet.tags(fleet.prod) == {"env": "prod"}
    tagged = api.ok("PATCH", f"/nodes/{node}/tags", {"set": {"rack": "r7"}, "remove": []})
    assert tagged["tags"] == {"env": "lab", "rack": "r7"}
    tagged = api.ok("PATCH", f"/nodes/{node}/tags", {"set": {}, "remove": ["rack"]})
    assert tagged["tags"] == {"env": "lab"}


def test_explicit_deny_beats_the_viewer_role(fleet: Fleet) -> None:
    _, api = fleet.operator(["viewer"], [_deny(["nodes:read"], ["*"]),
                                         _deny(["commands:read"], ["tag:env=prod"])])
    reply = api("GET", f"/nodes/{fleet.lab}")
    assert reply.status == 403 and "nodes:read" in reply.data["message"], reply
    assert {n["node_id"] for n in api.ok("GET", "/nodes")} & {fleet.lab, fleet.prod} == set()
    assert api("GET", f"/commands/{fleet.cmd_lab}").status == 200
    reply = api("GET", f"/commands/{fleet.cmd_both}")
    assert reply.status == 403 and fleet.prod in reply.data["message"], reply
    listed = {c["command_id"] for c in api.ok("GET", "/commands?limit=1000")}
    assert fleet.cmd_lab in listed and fleet.cmd_both not in listed


def test_unknown_command_is_404_not_500(fleet: Fleet) -> None:
    _, scoped = fleet.operator([], [_allow(["commands:*"], ["tag:env=lab"])])
    missing = str(uuid.uuid4())
    for api in (fleet.admin, scoped):
        for method, path in (("GET", f"/commands/{missing}"),
                             ("POST", f"/commands/{missing}/cancel")):
            reply = api(method, path)
            assert reply.status == 404, (method, path, reply)
