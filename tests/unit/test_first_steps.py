"""The start-up banner's first steps: each printed command must work as copied.

The agent refuses plain HTTP to another machine unless told ``--insecure``, and
needs ``--ca`` to trust a server on tether's private CA; a banner that leaves
those out sends a first user into an error on their first device.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tether.agent.cli import _next_steps
from tether.agent.state import DEFAULT_STATE_DIR
from tether.protocol.invocation import command_for
from tether.server.config import Settings
from tether.server.runner import _first_steps
from tether.server.tls import TlsFiles


def register_line(banner: str) -> str:
    (line,) = [x.strip() for x in banner.splitlines() if "tether-agent register" in x]
    return line


def test_a_command_is_named_bare_only_when_path_finds_this_installation(tmp_path: Path) -> None:
    """``./scripts/serve`` installs into .venv, off PATH: a bare name answered
    "command not found". Relative to the current folder when under it, else absolute."""
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tether-agent").write_text("#!/bin/sh\n")
    (venv_bin / "tether-agent").chmod(0o755)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "tether-agent").write_text("#!/bin/sh\n")
    (other / "tether-agent").chmod(0o755)
    assert command_for("tether-agent", venv_bin, tmp_path, path="") == ".venv/bin/tether-agent"
    assert command_for("tether-agent", venv_bin, tmp_path, path=str(other)) \
        == ".venv/bin/tether-agent"  # PATH finds another installation's: not this one
    assert command_for("tether-agent", venv_bin, other, path="") \
        == str(venv_bin / "tether-agent")
    assert command_for("tether-agent", venv_bin, tmp_path, path=str(venv_bin)) == "tether-agent"
    (tmp_path / "tether-agent").write_text("#!/bin/sh\n")
    assert command_for("tether-agent", tmp_path, tmp_path, path="") == "./tether-agent"
    assert command_for("tether", venv_bin, tmp_path, path="") == "tether"  # not installed
    # started as typed from the scripts folder: its sibling, relative as typed
    assert command_for("tether-agent", cwd=tmp_path, path="",
                       argv0=str(venv_bin / "tether")) == ".venv/bin/tether-agent"


def test_loopback_server_registers_a_local_agent_and_says_how_to_reach_others(
        tmp_path: Path) -> None:
    settings = Settings.for_data_dir(tmp_path, host="127.0.0.1")
    banner = _first_steps(settings, "http://127.0.0.1:8720")
    agent, state = command_for("tether-agent"), f"--state-dir {tmp_path / 'agent'}"
    assert register_line(banner) == f"{agent} register --server http://127.0.0.1:8720 {state}"
    assert f"{agent} run {state}" in banner.splitlines()[-1]
    assert f'eval "$({command_for("tether")} activation create --env)"' in banner
    assert "--tls auto" in banner
    assert f"TETHER_TOKEN=$(cat {settings.admin_token_file})" in banner


def test_plain_http_on_the_network_tells_the_device_to_accept_it(tmp_path: Path) -> None:
    settings = Settings.for_data_dir(tmp_path, host="0.0.0.0")
    line = register_line(_first_steps(settings, "http://0.0.0.0:8720"))
    assert line.startswith("tether-agent register --server http://SERVER:8720 --insecure "), line


def test_private_ca_is_pinned_by_the_device_and_trusted_by_the_cli(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "ca.pem")
    settings = Settings.for_data_dir(tmp_path, host="::", tls=tls)
    banner = _first_steps(settings, "https://[::]:8720")
    assert "--server https://SERVER:8720 --ca ca.pem" in register_line(banner)
    assert "--insecure" not in banner
    assert f"TETHER_CA={tmp_path / 'ca.pem'}" in banner
    assert f"a copy of {tmp_path / 'ca.pem'}" in banner
    assert "--tls-name" in banner.splitlines()[-1]  # what SERVER must be


def test_a_certificate_of_a_public_ca_needs_nothing_more(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    settings = Settings.for_data_dir(tmp_path, host="0.0.0.0", tls=tls)
    line = register_line(_first_steps(settings, "https://fleet.example:8720"))
    assert "--insecure" not in line and "--ca" not in line


def test_register_says_the_exact_run_line_with_the_same_state_dir(tmp_path: Path) -> None:
    """A ``run`` without register's ``--state-dir`` looks in /var/lib/tether-agent and
    answers "not registered"; the printed line is the one to paste (quoted for a shell)."""
    agent = command_for("tether-agent")
    node = "mi-0123456789abcdef0"
    assert f"  {agent} run" in _next_steps(DEFAULT_STATE_DIR, node)
    odd = tmp_path / "my agent"
    lines = _next_steps(odd, node)
    assert f"  {agent} run --state-dir '{odd}'" in lines
    assert shlex.split(lines[1])[-2:] == ["--state-dir", str(odd)]
    assert any(node in line for line in lines)


def test_serving_installs_the_server_extras_and_testing_the_dev_extras() -> None:
    """``./scripts/serve`` took 65 s from a clean clone installing playwright, mypy and
    schemathesis to run a server; the suite still needs them (scripts/test)."""
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    serve, test = (scripts / "serve").read_text(), (scripts / "test").read_text()
    setup = (scripts / "setup").read_text()
    assert "./scripts/setup server\n" in serve
    assert "./scripts/setup\n" in test and 'EXTRAS="${1:-dev}"' in setup
    assert '-e ".[$EXTRAS]"' in setup
