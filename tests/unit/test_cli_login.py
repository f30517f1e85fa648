"""Where ``tether login`` keeps the token, and how it writes it (issue 12 #18 and its class).

The file holds an operator token: it must land under the user's own absolute home,
never under the working directory or the root, and be written owner-only through a
file nobody else could have planted.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

import pytest

from tether.cli.client import config_file, load_login, save_login


@pytest.mark.parametrize("home", ["", "relhome", "."])
def test_an_empty_or_relative_home_is_not_where_the_login_goes(
        home: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    path = config_file()
    assert path.is_absolute(), path
    assert path == Path(pwd.getpwuid(os.getuid()).pw_dir) / ".config" / "tether" / "cli.json"


@pytest.mark.parametrize("xdg", ["", "relative/dir", " "])
def test_an_empty_or_relative_xdg_config_home_is_ignored(
        xdg: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert config_file() == tmp_path / "home" / ".config" / "tether" / "cli.json"


def test_a_planted_temporary_file_neither_keeps_its_mode_nor_redirects_the_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "config" / "tether"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (folder / "cli.tmp").symlink_to(victim)        # what the old fixed name would follow
    loose = folder / ".cli.tmp"
    loose.write_text("{}")
    loose.chmod(0o644)
    path = save_login("http://127.0.0.1:1", "tok-secret")
    assert victim.read_text() == "mine"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "tok-secret"
    monkeypatch.delenv("TETHER_SERVER", raising=False)
    monkeypatch.delenv("TETHER_TOKEN", raising=False)
    assert load_login() == ("http://127.0.0.1:1", "tok-secret", None)
    assert sorted(p.name for p in folder.iterdir()) == [".cli.tmp", "cli.json", "cli.tmp"]


def test_a_saved_token_goes_only_to_the_server_it_was_saved_for(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TETHER_SERVER naming another server with TETHER_TOKEN empty once sent the saved
    login's token there."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    save_login("http://127.0.0.1:1", "tok-secret")
    monkeypatch.setenv("TETHER_SERVER", "http://127.0.0.9:2")
    monkeypatch.setenv("TETHER_TOKEN", "")
    assert load_login()[:2] == ("http://127.0.0.9:2", None)
    monkeypatch.setenv("TETHER_SERVER", "http://127.0.0.1:1")
    assert load_login()[:2] == ("http://127.0.0.1:1", "tok-secret")
