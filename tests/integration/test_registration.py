"""Registering devices with ``tether-agent register``, end to end.

Real server (SQLite and PostgreSQL), real ``tether-agent`` and ``tether``
processes. The server is shared by the module, so every test makes its own
activations and agents and only looks at the ids it created.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Agent, Server, clean_env

NODE_ID = re.compile(r"^mi-[0-9a-f]{17}$")
EXIT_USAGE, EXIT_REFUSED, EXIT_ALREADY_REGISTERED, EXIT_UNREACHABLE = 2, 3, 4, 5
# No proxy from the environment may sit between the tests and the loopback server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(server: Server, method: str, path: str, body: Any = None,
        token: str | None = None) -> tuple[int, Any]:
    """One REST call with urllib; returns (HTTP status, decoded JSON body)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(server.url + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def identity(agent: Agent) -> dict[str, str]:
    data: dict[str, str] = json.loads((agent.state_dir / "identity.json").read_text())
    return data


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def activation_row(server: Server, activation_id: str) -> dict[str, Any]:
    rows = [a for a in server.cli("activation", "list") if a["activation_id"] == activation_id]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def stored_text(server: Server) -> str:
    """Everything the server's database holds, as text (SQLite: the raw file bytes)."""
    if server.database_url is None:
        chunks = [p.read_bytes() for p in (server.data_dir / "tether.db",
                                            server.data_dir / "tether.db-wal") if p.exists()]
        assert chunks, f"no SQLite database in {server.data_dir}"
        return b"".join(chunks).decode("latin-1")
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.database_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
        assert {"activations", "nodes"} <= set(tables), tables
        rows: list[str] = []
        for table in tables:
            # row::text renders every column of the row, whatever its type.
            query = sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(table))
            rows += [r[0] for r in conn.execute(query)]
    return "\n".join(rows)


def run_until_exit(agent: Agent, timeout: float = 20) -> tuple[int, str]:
    """Start ``tether-agent run`` and wait (bounded) for it to exit on its own."""
    agent.start()
    assert agent.proc is not None and agent.output is not None
    try:
        code = agent.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        agent.stop()
        pytest.fail(f"agent still running after {timeout} s:\n{agent.output.text()}")
    agent.output.wait_for(r"tether-agent:", timeout=5)  # its last words are in the pipe
    return code, agent.output.text()


# -- success -----------------------------------------------------------------


def test_register_creates_private_identity_and_keeps_no_secret_in_clear(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    created = server.cli_raw("activation", "create", "--limit", "1")
    assert created.returncode == 0, created.stderr
    activation_id = re.search(r"activation id:\s+(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    code = re.search(r"activation code:\s+(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    assert code.startswith("tac_")
    # The code is shown at creation (with a ready-to-paste register command)...
    assert f"--activation-code {code}" in created.stdout
    # ...and never again: the activation list, for people or scripts, does not have it.
    listed = server.cli_raw("activation", "list")
    assert listed.returncode == 0 and activation_id in listed.stdout
    assert code not in listed.stdout
    row = activation_row(server, activation_id)
    assert code not in json.dumps(row)
    assert not {"activation_code", "code_hash"} & set(row)

    agent = make_agent()
    result = agent.register_raw(activation_id, code)
    assert result.returncode == 0, result.stderr
    ident = identity(agent)
    assert NODE_ID.match(ident["node_id"]), ident
    assert f"registered as {ident['node_id']}" in result.stdout
    assert ident["server_url"] == server.url
    credential = ident["credential"]
    assert credential.startswith("tnc_")
    assert credential not in result.stdout + result.stderr
    assert mode(agent.state_dir) == 0o700
    assert mode(agent.state_dir / "identity.json") == 0o600
    assert sorted(p.name for p in agent.state_dir.iterdir()) == ["identity.json"]

    stored = stored_text(server)
    assert ident["node_id"] in stored and activation_id in stored  # the dump is real
    for secret in (code, credential, server.token):
        assert secret not in stored
    assert server.output is not None
    for secret in (code, credential):
        assert secret not in server.output.text()

    node = server.node(ident["node_id"])
    assert node["activation_id"] == activation_id
    assert node["deregistered_at"] is None


def test_registered_identity_connects_online(server: Server,
                                             make_agent: Callable[..., Agent]) -> None:
    agent = make_agent().register().start().connected()
    assert agent.output is not None
    agent.output.wait_for(rf"connected to \S+ as {agent.node_id}")
    st = subprocess.run([PYTHON, "-m", "tether.agent", "status", "--state-dir",
                         str(agent.state_dir)], capture_output=True, text=True,
                        env=clean_env(), timeout=30)
    assert st.returncode == 0
    assert f"node {agent.node_id} registered with {server.url}" in st.stdout


def test_activation_tags_name_prefix_and_registration_count(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    prefix = f"pfx{uuid.uuid4().hex[:6]}"
    act = server.cli("activation", "create", "--limit", "3", "--tag", f"site={site}",
                     "--tag", "role=gateway", "--name", prefix)
    assert act["tags"] == {"site": site, "role": "gateway"}
    assert act["name_prefix"] == prefix
    assert activation_row(server, act["activation_id"])["registrations"] == 0

    named = make_agent()
    result = named.register_raw(act["activation_id"], act["activation_code"], "--name", "dev-a")
    assert result.returncode == 0, result.stderr
    unnamed = make_agent().register(act["activation_id"], act["activation_code"])
    named_id = identity(named)["node_id"]

    first, second = server.node(named_id), server.node(unnamed.node_id)
    assert first["name"] == f"{prefix}-dev-a"
    assert second["name"] == f"{prefix}-{socket.gethostname()}"
    for node in (first, second):
        assert node["tags"] == {"site": site, "role": "gateway"}
        assert node["activation_id"] == act["activation_id"]

    row = activation_row(server, act["activation_id"])
    assert row["registrations"] == 2
    assert row["registration_limit"] == 3
    assert row["tags"] == {"site": site, "role": "gateway"}
    by_tag = {n["node_id"] for n in server.cli("nodes", "list", "--tag", f"site={site}")}
    assert by_tag == {named_id, unnamed.node_id}


# -- refusals ------------------------------------------------------------------


def test_wrong_code_is_refused(server: Server, make_agent: Callable[..., Agent]) -> None:
    activation_id, code = server.activation()
    agent = make_agent()
    result = agent.register_raw(activation_id, code[:-2] + ("xx" if code[-2:] != "xx" else "yy"))
    assert result.returncode == EXIT_REFUSED, result
    assert "registration failed" in result.stderr
    assert "activation id or code is wrong" in result.stderr
    assert not agent.state_dir.exists()
    # A wrong guess does not use up the activation: the right code still works.
    assert activation_row(server, activation_id)["registrations"] == 0
    make_agent().register(activation_id, code)


def test_unknown_activation_id_is_refused(server: Server,
                                          make_agent: Callable[..., Agent]) -> None:
    _, code = server.activation()
    agent = make_agent()
    result = agent.register_raw(str(uuid.uuid4()), code)
    assert result.returncode == EXIT_REFUSED, result
    assert "activation id or code is wrong" in result.stderr
    assert "check the activation id and code" in result.stderr
    assert not agent.state_dir.exists()


def test_expired_activation_is_refused(server: Server,
                                       make_agent: Callable[..., Agent]) -> None:
    status, act = api(server, "POST", "/api/v1/activations",
                      {"registration_limit": 5, "expires_in": 0.001}, token=server.token)
    assert status == 201, act
    deadline = time.monotonic() + 5
    while time.time() <= act["expires_at"]:  # passes within a millisecond
        assert time.monotonic() < deadline
        time.sleep(0.001)
    agent = make_agent()
    result = agent.register_raw(act["activation_id"], act["activation_code"])
    assert result.returncode == EXIT_REFUSED, result
    assert "the activation has expired" in result.stderr
    assert "tether activation create" in result.stderr  # says what to do about it
    assert not agent.state_dir.exists()


def test_expired_activation_via_cli_duration(server: Server,
                                             make_agent: Callable[..., Agent]) -> None:
    act = server.cli("activation", "create", "--expires", "0.01s")
    assert act["expires_at"] - act["created_at"] == pytest.approx(0.01, abs=0.005)
    deadline = time.monotonic() + 5
    while time.time() <= act["expires_at"]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    result = make_agent().register_raw(act["activation_id"], act["activation_code"])
    assert result.returncode == EXIT_REFUSED, result
    assert "expired" in result.stderr


def test_revoked_activation_is_refused_and_its_nodes_stay(
        server: Server, make_agent: Callable[..., Agent]) -> None:
    activation_id, code = server.activation("--limit", "5")
    first = make_agent().register(activation_id, code)
    revoked = server.cli("activation", "revoke", activation_id)
    assert revoked["revoked_at"] is not None and revoked["registrations"] == 1
    assert "code_hash" not in revoked
    listed = {a["activation_id"]: a for a in server.cli("activation", "list")}
    assert listed[activation_id]["revoked_at"] == revoked["revoked_at"]
    later = make_agent()
    result = later.register_raw(activation_id, code)
    assert result.returncode == EXIT_REFUSED, result
    assert "the activation was revoked" in result.stderr
    assert "tether activation create" in result.stderr
    assert not later.state_dir.exists()
    assert server.cli("nodes", "show", first.node_id)["deregistered_at"] is None
    again = server.cli_raw("activation", "revoke", str(uuid.uuid4()))
    assert again.returncode != 0 and "no activation" in again.stderr


def test_failed_registrations_are_throttled_per_address(tmp_path: Path) -> None:
    """Guessing codes: the 11th failure in a minute is refused before it is checked."""
    server = Server(tmp_path / "data", relaxed=False).start()
    try:
        activation_id, code = server.activation("--limit", "5")
        wrong = {"activation_id": activation_id, "activation_code": "tac_wrong"}
        for _ in range(10):
            status, body = api(server, "POST", "/api/v1/registrations", wrong)
            assert (status, body["error"]) == (403, "invalid_activation")
        status, body = api(server, "POST", "/api/v1/registrations", wrong)
        assert (status, body["error"]) == (429, "too_many_failed_registrations"), body
        # ...and so is the right code from that address, until the minute ends.
        right = {"activation_id": activation_id, "activation_code": code}
        status, body = api(server, "POST", "/api/v1/registrations", right)
        assert status == 429 and "try again in" in body["message"]
        # Each kind of refusal is written once; its repeats are counted and written as
        # one record when the minute ends (test_audit_volume.py), not one row each.
        audit = server.cli("audit", "list", "--action", "/registrations")
        assert [(r["outcome"], r["detail"]["status"]) for r in audit] == [
            ("denied", 403), ("denied", 429)]
    finally:
        server.stop()


def test_registration_limit(server: Server, make_agent: Callable[..., Agent]) -> None:
    activation_id, code = server.activation("--limit", "1")
    make_agent().register(activation_id, code)
    second = make_agent()
    result = second.register_raw(activation_id, code)
    assert result.returncode == EXIT_REFUSED, result
    assert "allows 1 registrations and all are used" in result.stderr
    assert "--limit" in result.stderr
    assert not second.state_dir.exists()
    assert activation_row(server, activation_id)["registrations"] == 1


def test_server_unreachable(make_agent: Callable[..., Agent]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    agent = make_agent()
    result = agent.register_raw(str(uuid.uuid4()), "tac_whatever", server_url=url)
    assert result.returncode == EXIT_UNREACHABLE, result
    assert f"could not reach the tether server at {url}/api/v1/registrations" in result.stderr
    assert "Connection refused" in result.stderr
    assert not agent.state_dir.exists()


def test_not_a_tether_server(server: Server, make_agent: Callable[..., Agent]) -> None:
    """A URL that answers HTTP, but not as tether does (404 without an error body)."""
    activation_id, code = server.activation()
    result = make_agent().register_raw(activation_id, code,
                                       server_url=server.url + "/not-tether")
    assert result.returncode == EXIT_UNREACHABLE, result
    assert "HTTP 404" in result.stderr


def test_bad_usage(server: Server, make_agent: Callable[..., Agent]) -> None:
    activation_id, code = server.activation()
    agent = make_agent()
    no_code = agent.register_raw(activation_id, "")
    assert no_code.returncode == EXIT_USAGE, no_code
    assert "--activation-code" in no_code.stderr
    bad_url = agent.register_raw(activation_id, code,
                                 server_url=server.url.replace("http://", "ftp://"))
    assert bad_url.returncode == EXIT_USAGE, bad_url
    assert "must start with http:// or https://" in bad_url.stderr
    assert activation_row(server, activation_id)["registrations"] == 0


def test_already_registered_needs_force(server: Server,
                                        make_agent: Callable[..., Agent]) -> None:
    agent = make_agent().register()
    before = (agent.state_dir / "identity.json").read_bytes()
    activation_id, code = server.activation()
    result = agent.register_raw(activation_id, code)
    assert result.returncode == EXIT_ALREADY_REGISTERED, result
    assert f"already registered as {agent.node_id}" in result.stderr
    assert "--force" in result.stderr
    assert (agent.state_dir / "identity.json").read_bytes() == before
    assert activation_row(server, activation_id)["registrations"] == 0  # never asked


def test_refused_force_keeps_the_old_identity(server: Server,
                                              make_agent: Callable[..., Agent]) -> None:
    agent = make_agent().register()
    before = (agent.state_dir / "identity.json").read_bytes()
    activation_id, _ = server.activation()
    result = agent.register_raw(activation_id, "tac_wrong", "--force")
    assert result.returncode == EXIT_REFUSED, result
    assert (agent.state_dir / "identity.json").read_bytes() == before
    assert server.node(agent.node_id)["deregistered_at"] is None
    agent.start().connected()  # the old identity still works


def test_force_replaces_identity_and_revokes_old_credential(
        server: Server, make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    agent = make_agent().register()
    old_id = agent.node_id
    old_copy = tmp_path / "old-identity"
    shutil.copytree(agent.state_dir, old_copy)

    activation_id, code = server.activation()
    result = agent.register_raw(activation_id, code, "--force")
    assert result.returncode == 0, result
    new_id = identity(agent)["node_id"]
    assert NODE_ID.match(new_id)
    assert new_id != old_id
    assert f"registered as {new_id}" in result.stdout
    assert f"replaced {old_id}" in result.stdout
    assert mode(agent.state_dir / "identity.json") == 0o600
    assert server.node(old_id)["deregistered_at"] is not None
    assert old_id not in {n["node_id"] for n in server.cli("nodes", "list")}

    code_, output = run_until_exit(Agent(server, old_copy))
    assert code_ == EXIT_REFUSED, output
    assert "refused" in output

    agent.node_id = new_id
    agent.start().connected()


def test_force_disconnects_a_running_old_identity(
        server: Server, make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    running = make_agent().register().start().connected()
    old_id = running.node_id
    # The same device re-registers (e.g. a reinstall) while the old agent still runs.
    reinstalled = Agent(server, tmp_path / "reinstalled")
    shutil.copytree(running.state_dir, reinstalled.state_dir,
                    ignore=shutil.ignore_patterns("spool"))
    activation_id, code = server.activation()
    result = reinstalled.register_raw(activation_id, code, "--force")
    assert result.returncode == 0, result
    assert server.node(old_id)["deregistered_at"] is not None
    assert running.proc is not None and running.output is not None
    try:
        exit_code = running.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent with the revoked identity is still connected")
    assert exit_code == EXIT_REFUSED, running.output.text()


def test_run_without_registration(tmp_path: Path) -> None:
    state_dir = tmp_path / "never-registered"
    result = subprocess.run([PYTHON, "-m", "tether.agent", "run", "--state-dir", str(state_dir)],
                            capture_output=True, text=True, env=clean_env(), timeout=30)
    assert result.returncode != 0
    assert result.returncode == EXIT_REFUSED
    assert "not registered" in result.stderr
    assert str(state_dir) in result.stderr
    assert "tether-agent register" in result.stderr
    status = subprocess.run([PYTHON, "-m", "tether.agent", "status", "--state-dir",
                             str(state_dir)], capture_output=True, text=True,
                            env=clean_env(), timeout=30)
    assert status.returncode == 1
    assert "not registered" in status.stdout
