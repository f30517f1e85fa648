"""``tether admin recover`` against a running server: its record stays anchored, and
its edge cases fail cleanly, before anything is changed.

Why: recover appends from another process, moving DATA/audit-anchor but not the
running server's memory. The server verified against its memory (so cutting
recover's record off the end read "intact") and its next append overwrote
recover's slot in the file (so after a restart the cut was gone for good, while
the token recover minted still worked). And a name with a trailing newline was
accepted, an admin-token that is a directory crashed after the record and the
token were in the database, and an unreachable database gave a traceback.
Real server (SQLite and PostgreSQL), the CLI as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Server, clean_env, postgres_database
from tether.server.store.audit_anchor import read_anchor


def recover(server: Server, *extra: str,
            database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    url = database_url or server.database_url
    db = ["--database-url", url] if url else []
    return subprocess.run([PYTHON, "-m", "tether.cli", "admin", "recover",
                           "--data-dir", str(server.data_dir), *db, *extra],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


@contextlib.contextmanager
def database(server: Server) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """The server's database as someone who can write it (and not the data folder)."""
    if server.database_url:
        import psycopg

        with psycopg.connect(server.database_url) as pg:  # commits on exit
            yield lambda sql, *p: (lambda c: c.fetchall() if c.description else [])(
                pg.execute(sql.replace("?", "%s"), p))
        return
    db = sqlite3.connect(server.data_dir / "tether.db", timeout=30)
    try:
        with db:
            yield lambda sql, *p: db.execute(sql, p).fetchall()
    finally:
        db.close()


def verify(server: Server) -> tuple[int, dict[str, Any]]:
    result = server.cli_raw("audit", "verify", "--json")
    assert result.returncode in (0, 1), result.stderr
    verdict: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, verdict


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server of its own: the test cuts its log for good."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database()) if request.param == "postgresql" \
            else None
        srv = Server(tmp_path / "data", database_url=url).start()
        stack.callback(srv.stop)
        yield srv


def test_a_recover_record_cut_off_the_end_is_caught_by_the_running_server(
        fresh_server: Server) -> None:
    server = fresh_server
    assert server.cli_raw("operators", "create", "alice", "--role", "viewer").returncode == 0
    result = recover(server, "--operator", "mallory")
    assert result.returncode == 0, result
    with database(server) as run:
        rows = run("SELECT seq, actor, action, hash FROM audit_log ORDER BY seq")
    seq, actor, action, hash_ = rows[-1]
    assert action == "admin recover" and actor.startswith("local:"), rows
    # The break-glass record, cut off the end by someone who can write the database.
    with database(server) as run:
        run("DELETE FROM audit_log WHERE seq >= ?", seq)
    code, verdict = verify(server)
    assert (code, verdict["state"], verdict["seq"]) == (1, "truncated", seq), verdict
    # The server's next append chains on from recover's record, and does not take
    # its place in the anchor: the gap stays visible, after a restart too.
    assert server.cli_raw("operators", "create", "bob", "--role", "viewer").returncode == 0
    with database(server) as run:
        after = run("SELECT seq, prev_hash FROM audit_log ORDER BY seq")
    assert after[-1] == (seq + 1, hash_), after
    key = bytes.fromhex((server.data_dir / "audit-key").read_text().strip())
    anchor = read_anchor(server.data_dir / "audit-anchor", key)
    assert anchor is not None and anchor.seq == seq + 1
    code, verdict = verify(server)
    assert (code, verdict["state"], verdict["seq"]) == (1, "tampered", seq + 1), verdict
    server.stop()
    server.start()
    code, verdict = verify(server)
    assert (code, verdict["state"], verdict["seq"]) == (1, "tampered", seq + 1), verdict


def operators_named(server: Server) -> list[str]:
    listed = server.cli("operators", "list")
    return [o["name"] for o in listed]


def audit_count(server: Server) -> int:
    with database(server) as run:
        ((count,),) = run("SELECT count(*) FROM audit_log")
    return int(count)


def test_recover_refuses_a_name_with_a_final_newline(sqlite_server: Server) -> None:
    """``re.match`` with ``$`` let ``admin\\n`` through: an enabled admin that looks
    like ``admin`` in a listing, and that the API's own pattern would refuse."""
    before = audit_count(sqlite_server)
    for name in ("admin\n", "newadmin\n", "a\nb"):
        result = recover(sqlite_server, "--operator", name)
        assert result.returncode == 2 and "is not an operator name" in result.stderr, result
    assert not [n for n in operators_named(sqlite_server) if "\n" in n]
    assert audit_count(sqlite_server) == before


def test_recover_checks_the_token_file_before_changing_anything(sqlite_server: Server) -> None:
    """DATA/admin-token a directory: it crashed with a traceback after the record and
    the token were in the database, and left a .part copy of the token behind."""
    server = sqlite_server
    token_file = server.data_dir / "admin-token"
    saved = token_file.read_text()
    tokens = len(server.cli("tokens", "list"))
    before = audit_count(server)
    token_file.unlink()
    token_file.mkdir()
    try:
        result = recover(server)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert f"{token_file} is not a file" in result.stderr
        assert "nothing was changed" in result.stderr
        assert audit_count(server) == before
        assert len(server.cli("tokens", "list")) == tokens
        assert not list(server.data_dir.glob(".admin-token*"))
        assert token_file.is_dir()
    finally:
        token_file.rmdir()
        token_file.write_text(saved)


def test_recover_with_a_database_it_cannot_reach_says_so_in_one_line(
        sqlite_server: Server) -> None:
    result = recover(sqlite_server,
                     database_url="postgresql://nobody:s3cret-pw@127.0.0.1:1/tether")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tether: cannot open the database: ") and "s3cret" not in line
    assert "nothing was changed" in line
