"""The first admin token: made once, kept only as a hash, handed over in an owner-only file.

Why: the API is never open, so the first start must give its operator a way in
without leaving a secret readable by others or in the database, and a restart
must neither change nor re-print it. The embedded default's SQLite also has to
run in WAL mode, so readers (the console, the CLI) never wait on the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from pathlib import Path

from harness import Server


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
        for stored in data.glob("tether.db*"):  # the database and its WAL
            assert token.encode() not in stored.read_bytes(), stored
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
