"""What the start-up banner says about the way in must be true in each case.

Why: a restart with ``DATA/admin-token`` deleted created nothing while the banner
still said to sign in with the token in that file. Each state start-up can find
gets its own words, and only a working file is offered as ``$(cat FILE)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.server.admin_access import AdminAccess, recover_command, replace_secret_file
from tether.server.config import Settings
from tether.server.runner import _first_steps


def access(tmp_path: Path, *, created: bool = False, works: bool = False, admins: int = 1,
           file: bool = False) -> AdminAccess:
    settings = Settings.for_data_dir(tmp_path)
    if file:
        settings.admin_token_file.write_text("tth_dead\n")
    return AdminAccess(settings.admin_token_file, created, works, admins,
                       recover_command(settings))


def test_a_first_start_says_where_it_wrote_the_token(tmp_path: Path) -> None:
    (line,) = access(tmp_path, created=True, works=True).messages()
    assert line == (f"tether: created the admin token; it is in {tmp_path / 'admin-token'} "
                    "(readable by you only)")


def test_a_working_file_needs_no_word_and_is_the_banner_token(tmp_path: Path) -> None:
    found = access(tmp_path, works=True, file=True)
    assert found.messages() == []
    banner = _first_steps(Settings.for_data_dir(tmp_path), "http://127.0.0.1:8720", found)
    assert f"TETHER_TOKEN=$(cat {tmp_path / 'admin-token'})" in banner
    assert f"sign in with the token in {tmp_path / 'admin-token'}" in banner


@pytest.mark.parametrize(("file", "admins", "says"), [
    (False, 1, "no admin token was written: this database has operators already"),
    (True, 1, "holds a token that no longer works"),
    (True, 0, "WARNING: no operator can manage operators now"),
    (False, 0, "WARNING: no operator can manage operators now"),
])
def test_no_working_token_says_why_and_names_recover(tmp_path: Path, file: bool, admins: int,
                                                     says: str) -> None:
    found = access(tmp_path, file=file, admins=admins)
    (line,) = found.messages()
    assert says in line and line.endswith(f"tether admin recover --data-dir {tmp_path}")
    banner = _first_steps(Settings.for_data_dir(tmp_path), "http://127.0.0.1:8720", found)
    assert "$(cat" not in banner and "TETHER_TOKEN=ADMIN_TOKEN" in banner


def test_the_recover_hint_never_prints_a_database_url(tmp_path: Path) -> None:
    secret = "postgresql://tether:hunter2@db.example/tether"
    hint = recover_command(Settings.for_data_dir(tmp_path, secret))
    assert hint == f"tether admin recover --data-dir {tmp_path} --database-url URL"
    assert "hunter2" not in hint


def test_a_token_file_that_cannot_be_replaced_leaves_no_copy_behind(tmp_path: Path) -> None:
    """The new token is written beside the file first; if the rename fails (the file is
    a directory), that copy of the secret goes too."""
    (tmp_path / "admin-token").mkdir()
    with pytest.raises(OSError):
        replace_secret_file(tmp_path / "admin-token", "tth_secret")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-token"]
    replace_secret_file(tmp_path / "token", "tth_secret")
    assert (tmp_path / "token").read_text() == "tth_secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-token", "token"]
