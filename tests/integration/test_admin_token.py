"""The first admin token: made once, kept only as a hash, handed over in an owner-only file.

Why: the API is never open, so the first start must give its operator a way in
without leaving a secret readable by others or in the database, and a restart
must neither change nor re-print it. A restart must also not claim a way in
that is not there: with the file gone, or holding a dead token, or with no
admin left, it says so and names ``tether admin recover``. The embedded
default's SQLite has to run in WAL mode, so readers (the console, the CLI)
never wait on the writer, and its files are the owner's alone (0600).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from harness import PYTHON, Output, Server, clean_env, spawn, stop


def test_first_start_writes_the_token_once_owner_only_and_stores_only_a_hash(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        token_file = data / "admin-token"
        assert server.output is not None
        server.output.wait_for(rf"created the admin token; it is in {token_file} "
                               r"\(readable by you only\)", timeout=5)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        written = token_file.read_bytes()
        token = written.decode().strip()
        assert token.startswith("tth_") and written == f"{token}\n".encode()
        assert server.cli_raw("nodes", "list").returncode == 0  # it is the admin's

        with contextlib.closing(sqlite3.connect(data / "tether.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        stored_files = sorted(f.name for f in data.glob("tether.db*"))
        assert stored_files == ["tether.db", "tether.db-shm", "tether.db-wal"], stored_files
        for stored in data.glob("tether.db*"):  # the database and its WAL
            assert token.encode() not in stored.read_bytes(), stored
        for private in [*data.glob("tether.db*"), data / "audit-key"]:
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        written_at = token_file.stat().st_mtime_ns
    finally:
        server.stop()

    again = Server(data).start()
    try:
        assert again.output is not None  # start() returned: it is listening
        assert "admin token" not in again.output.text()
        assert token_file.stat().st_mtime_ns == written_at
        assert token_file.read_bytes() == written
        assert again.cli_raw("nodes", "list").returncode == 0
    finally:
        again.stop()


@contextlib.contextmanager
def restarted(data: Path) -> Iterator[tuple[str, Output]]:
    """The server started again on ``data`` (which need not hold an admin-token)."""
    proc, output = spawn([PYTHON, "-m", "tether", "server", "--data-dir", str(data),
                          "--port", "0"])
    try:
        url = output.wait_for(r"listening on (http://\S+)", timeout=60).group(1)
        output.wait_for(r"tether-agent run", timeout=10)  # the whole banner is out
        yield url, output
    finally:
        stop(proc)


def cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True, text=True,
                          env=clean_env(TETHER_SERVER=url, TETHER_TOKEN=token), timeout=60)


def recover(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", "admin", "recover", "--data-dir",
                           str(data)], capture_output=True, text=True, env=clean_env(),
                          timeout=60)


def banner_token(output: Output) -> str:
    return output.wait_for(r"export TETHER_SERVER=\S+ TETHER_TOKEN=(.+)$").group(1)


def test_a_restart_without_the_token_file_says_none_was_written_and_how_to_recover(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    Server(data).start().stop()
    (data / "admin-token").unlink()
    with restarted(data) as (url, output):
        output.wait_for(rf"no admin token was written: this database has operators already "
                        rf".*{re.escape(str(data / 'admin-token'))} is gone.*"
                        rf"tether admin recover --data-dir {re.escape(str(data))}$", timeout=1)
        assert "created the admin token" not in output.text()
        assert banner_token(output) == "ADMIN_TOKEN"  # not $(cat a file that is not there)
        assert "sign in with the token in" not in output.text()
        assert not (data / "admin-token").exists()

        result = recover(data)
        assert result.returncode == 0, result
        token = (data / "admin-token").read_text().strip()
        assert stat.S_IMODE((data / "admin-token").stat().st_mode) == 0o600
        assert cli(url, token, "whoami").returncode == 0


def test_a_restart_with_a_dead_token_in_the_file_says_it_no_longer_works(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        server.cli("operators", "create", "bob", "--role", "admin")
        bob = server.cli("tokens", "create", "--operator", "bob")["token"]
        (first,) = server.cli("tokens", "list", "--operator", "admin")
        assert cli(server.url, bob, "tokens", "revoke", first["token_id"]).returncode == 0
    finally:
        server.stop()
    with restarted(data) as (_, output):
        output.wait_for(rf"{re.escape(str(data / 'admin-token'))} holds a token that no "
                        r"longer works .*tether admin recover", timeout=1)
        assert banner_token(output) == "ADMIN_TOKEN"


def test_a_restart_with_no_admin_left_warns_and_names_recover(tmp_path: Path) -> None:
    """Time alone can end the last admin token. A token about to expire does not count
    as the last way in (test_last_admin.py), so the last admin here holds one that lasts
    past 24 hours, and the day going by is its expiry moved into the past while the
    server is down."""
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        server.cli("operators", "create", "brief", "--role", "admin")
        brief = server.cli("tokens", "create", "--operator", "brief", "--expires", "25h")
        server.cli("operators", "update", "admin", "--role", "viewer")  # brief is an admin
    finally:
        server.stop()
    with contextlib.closing(sqlite3.connect(data / "tether.db")) as db, db:
        db.execute("UPDATE operator_tokens SET expires_at = ? WHERE token_id = ?",
                   (time.time() - 1, brief["token_id"]))
    with restarted(data) as (url, output):
        output.wait_for(r"WARNING: no operator can manage operators now.*"
                        r"tether admin recover --data-dir", timeout=1)
        assert recover(data).returncode == 0
        token = (data / "admin-token").read_text().strip()
        who = json.loads(cli(url, token, "whoami", "--json").stdout)
        assert who["operator"] == "admin" and "admin" in who["roles"]
