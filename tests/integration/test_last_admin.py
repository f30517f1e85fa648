"""The last admin cannot lock everyone out, and a lost way in can be recovered locally.

Why: revoking one's own last token or demoting oneself was accepted, and left a
server no one could manage. Now the API refuses (409 ``last_admin``) any change
after which no enabled operator with ``operators:manage`` holds a valid token,
two admins demoting each other at once cannot both win (on PostgreSQL too, with
two engines as two replicas would have), and ``tether admin recover`` on the
server machine mints a new admin token while the server runs, audited.
Real server (SQLite and PostgreSQL), the CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Server, clean_env, postgres_database
from tether.server.store import open_store
from tether.server.store.audit_anchor import read_anchor
from tether.server.store.operators import OperatorError

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(server: Server, token: str, method: str, path: str,
         body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{server.url}/api/v1{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def cli(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True, text=True,
                          env=clean_env(TETHER_SERVER=server.url, TETHER_TOKEN=token),
                          timeout=60)


def recover(server: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    db = ["--database-url", server.database_url] if server.database_url else []
    return subprocess.run([PYTHON, "-m", "tether.cli", "admin", "recover",
                           "--data-dir", str(server.data_dir), *db, *extra],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


def admin_token_id(server: Server, token: str, operator: str) -> str:
    status, tokens = call(server, token, "GET", f"/tokens?operator={operator}")
    assert status == 200
    (live,) = [t for t in tokens if t["revoked_at"] is None]
    token_id: str = live["token_id"]
    return token_id


@pytest.fixture
def lone_admin(server: Server) -> Iterator[Server]:
    """The module's server with ``admin`` its only active admin, as it is after a
    first start; tests that add admins take them away again."""
    status, ops = call(server, server.token, "GET", "/operators")
    assert status == 200
    assert [o["name"] for o in ops if "admin" in o["roles"] and not o["disabled_at"]] == [
        "admin"], ops
    yield server


def test_the_last_admin_cannot_revoke_its_own_token(lone_admin: Server) -> None:
    server = lone_admin
    token_id = admin_token_id(server, server.token, "admin")
    status, body = call(server, server.token, "DELETE", f"/tokens/{token_id}")
    assert status == 409 and body["error"] == "last_admin", body
    assert "tether tokens create --operator NAME" in body["message"]
    result = cli(server, server.token, "tokens", "revoke", token_id)
    assert result.returncode == 3 and "(last_admin)" in result.stderr, result
    assert cli(server, server.token, "whoami").returncode == 0  # still in


def test_the_last_admin_cannot_demote_itself(lone_admin: Server) -> None:
    server = lone_admin
    result = cli(server, server.token, "operators", "update", "admin", "--role", "viewer")
    assert result.returncode == 3 and "(last_admin)" in result.stderr, result
    deny = [{"effect": "deny", "actions": ["operators:manage"], "resources": ["*"]}]
    status, body = call(server, server.token, "PATCH", "/operators/admin",
                        {"statements": deny})
    assert status == 409 and body["error"] == "last_admin", body
    status, admin = call(server, server.token, "GET", "/operators/admin")
    assert admin["roles"] == ["admin"] and admin["statements"] == []


def test_the_last_admin_cannot_leave_itself_only_a_token_about_to_expire(
        lone_admin: Server) -> None:
    """The red team's lockout on a timer: a 2 s token made, the permanent one revoked,
    everyone 401 three seconds later. A token that outlives 24 h still counts."""
    server = lone_admin
    permanent = admin_token_id(server, server.token, "admin")
    status, short = call(server, server.token, "POST", "/tokens",
                         {"operator": "admin", "expires_in": 2})
    assert status == 201
    result = cli(server, short["token"], "tokens", "revoke", permanent)
    assert result.returncode == 3 and "(last_admin)" in result.stderr, result
    assert "lasts more than 24 hours" in result.stderr
    status, body = call(server, server.token, "DELETE", f"/tokens/{permanent}")
    assert status == 409 and body["error"] == "last_admin", body
    assert "without --expires" in body["message"]
    status, days = call(server, server.token, "POST", "/tokens",
                        {"operator": "admin", "expires_in": 2 * 86400})
    assert status == 201
    try:
        assert call(server, server.token, "DELETE", f"/tokens/{permanent}")[0] == 200
        # Now the 2-day token is the lasting one: it may not go while the 2 s one is left.
        status, body = call(server, days["token"], "DELETE", f"/tokens/{days['token_id']}")
        assert status == 409 and "lasts more than 24 hours" in body["message"], body
    finally:
        status, fresh = call(server, days["token"], "POST", "/tokens", {"operator": "admin"})
        assert status == 201
        server.token = fresh["token"]  # the module's later tests act with it
        (server.data_dir / "admin-token").write_text(fresh["token"] + "\n")
        for token_id in (short["token_id"], days["token_id"]):
            assert call(server, server.token, "DELETE", f"/tokens/{token_id}")[0] == 200


def _admin_with_token(server: Server, token: str, name: str) -> str:
    assert call(server, token, "POST", "/operators", {"name": name, "roles": ["admin"]}
                )[0] == 201
    status, created = call(server, token, "POST", "/tokens", {"operator": name})
    assert status == 201
    secret: str = created["token"]
    return secret


def test_with_two_admins_one_may_go_and_the_other_then_may_not(lone_admin: Server) -> None:
    server = lone_admin
    bob = _admin_with_token(server, server.token, "bob-two")
    try:
        status, _ = call(server, server.token, "PATCH", "/operators/admin", {"roles": ["viewer"]})
        assert status == 200
        result = cli(server, bob, "operators", "update", "bob-two", "--role", "operator")
        assert result.returncode == 3 and "(last_admin)" in result.stderr, result
        status, body = call(server, bob, "DELETE",
                            f"/tokens/{admin_token_id(server, bob, 'bob-two')}")
        assert status == 409 and body["error"] == "last_admin"
        status, _ = call(server, bob, "PATCH", "/operators/admin", {"roles": ["admin"]})
        assert status == 200
    finally:
        assert call(server, server.token, "DELETE", "/operators/bob-two")[0] == 200


def test_two_admins_demoting_each_other_at_once_do_not_both_succeed(
        lone_admin: Server) -> None:
    server = lone_admin
    x, y = (_admin_with_token(server, server.token, n) for n in ("race-x", "race-y"))
    try:
        assert call(server, x, "PATCH", "/operators/admin", {"roles": ["viewer"]})[0] == 200
        for _ in range(5):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                replies = list(pool.map(
                    lambda who: call(server, who[0], "PATCH", f"/operators/{who[1]}",
                                     {"roles": ["viewer"]}), [(x, "race-y"), (y, "race-x")]))
            # The loser is refused by the guard (409), or, when the winner's change
            # landed before its own request was authorised, as no longer an admin (403).
            statuses = sorted(status for status, _ in replies)
            assert statuses in ([200, 403], [200, 409]), replies
            demoted, winner = ("race-y", x) if replies[0][0] == 200 else ("race-x", y)
            assert call(server, winner, "PATCH", f"/operators/{demoted}",
                        {"roles": ["admin"]})[0] == 200
        assert call(server, x, "PATCH", "/operators/admin", {"roles": ["admin"]})[0] == 200
    finally:
        for name in ("race-x", "race-y"):
            call(server, server.token, "DELETE", f"/operators/{name}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_database_serialises_two_replicas_demoting_each_other(
        backend: str, tmp_path: Path) -> None:
    """Two engines on one database, as two server replicas (PostgreSQL) or the server
    and ``tether admin recover`` (SQLite) would be: no in-process lock is shared, so
    only the database can make the second change see the first."""
    sqlite = contextlib.nullcontext(f"sqlite:///{tmp_path / 'tether.db'}")
    with postgres_database() if backend == "postgresql" else sqlite as url:
        first, second = await open_store(url), await open_store(url)
        try:
            await first.create_admin_token_if_none()
            await first.operators.create("bob", ["admin"], [], "admin")
            await first.operators.create_token("bob", None, None)
            for _ in range(10):
                results = await asyncio.gather(
                    first.operators.update("admin", ["viewer"], []),
                    second.operators.update("bob", ["viewer"], []), return_exceptions=True)
                refused = [r for r in results if isinstance(r, OperatorError)]
                assert len(refused) == 1 and refused[0].code == "last_admin", results
                (survivor,) = await first.operators.active_admins()
                await first.operators.update("bob" if survivor == "admin" else "admin",
                                             ["admin"], [])
        finally:
            await first.close()
            await second.close()


def test_recover_mints_a_working_admin_token_while_the_server_runs_audited(
        server: Server) -> None:
    token_file = server.data_dir / "admin-token"
    before = token_file.read_text()
    result = recover(server)
    assert result.returncode == 0, result
    assert f"it is in {token_file} (readable by you only)" in result.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("tth_") and token_file.read_text() != before
    assert token not in result.stdout + result.stderr  # only the file has it
    who = json.loads(cli(server, token, "whoami", "--json").stdout)
    assert who["operator"] == "admin"
    records = json.loads(cli(server, token, "audit", "list", "--action", "admin recover",
                             "--json").stdout)
    assert records and records[-1]["actor"].startswith("local:"), records
    assert records[-1]["target"] == "admin" and records[-1]["outcome"] == "ok"
    token_id = records[-1]["detail"]["token_id"]
    assert token_id in result.stdout
    assert token not in json.dumps(records)
    human = cli(server, token, "audit", "list", "--action", "admin recover")
    assert "admin recover" in human.stdout and "local:" in human.stdout
    verify = cli(server, token, "audit", "verify")
    assert verify.returncode == 0, verify
    # The record moved the anchor beside the audit key, as the server's own records do.
    key = bytes.fromhex((server.data_dir / "audit-key").read_text().strip())
    anchor = read_anchor(server.data_dir / "audit-anchor", key)
    assert anchor is not None and anchor.seq >= records[-1]["seq"]
    # Hand the module's token back (the file had the first token; it still works).
    assert call(server, token, "DELETE", f"/tokens/{token_id}")[0] == 200
    token_file.write_text(before)


def test_recover_brings_back_a_disabled_last_admin(server: Server) -> None:
    """Everyone locked out for real: the one other admin disabled ``admin``, then lost
    its own way in. Recover re-enables ``admin`` with a fresh token."""
    bob = _admin_with_token(server, server.token, "bob-recover")
    try:
        assert call(server, bob, "DELETE", "/operators/admin")[0] == 200
        assert call(server, server.token, "GET", "/whoami")[0] == 401
        result = recover(server)
        assert result.returncode == 0, result
        assert "(re-enabled)" in result.stdout
        token = (server.data_dir / "admin-token").read_text().strip()
        assert call(server, token, "GET", "/whoami")[0] == 200
        server.token = token  # the module's later tests act with the new token
    finally:
        assert call(server, server.token, "DELETE", "/operators/bob-recover")[0] == 200


def test_recover_refuses_without_the_servers_data(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "tether.cli", "admin", "recover", *args],
                              capture_output=True, text=True, env=clean_env(), timeout=60)

    empty = tmp_path / "not-data"
    empty.mkdir()
    result = run("--data-dir", str(empty))
    assert result.returncode == 2 and "audit-key is missing" in result.stderr, result
    assert list(empty.iterdir()) == []  # no database made on the way
    result = run("--data-dir", str(empty), "--operator", "bad name")
    assert result.returncode == 2 and "not an operator name" in result.stderr, result
