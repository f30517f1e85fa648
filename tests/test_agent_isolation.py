"""The agent is the base install: stdlib + ``websockets``, on Python 3.9 and later.

A device never gets the server's dependencies, so nothing the agent runs may import
them, and the package installed without extras on Python 3.9 must register, connect
and run commands against a real server.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, clean_env, spawn, stop

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ["fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic",
               "psycopg", "aiosqlite", "anyio", "httpx"]

# Run in a fresh interpreter: imports the agent's modules, shows --help and tries a
# real registration against a port nobody listens on, then reports what got imported.
PROBE = r"""
import json, sys
import tether.agent.cli, tether.agent.link, tether.agent.runner, tether.agent.inventory
import tether.protocol
import tether.agent.cli as cli

try:
    cli.main(["--help"])
except SystemExit as exc:
    help_exit = exc.code
register_exit = cli.main(["register", "--server", sys.argv[1], "--activation-id", "x",
                          "--activation-code", "y", "--state-dir", sys.argv[2]])
print(json.dumps({"help_exit": help_exit, "register_exit": register_exit,
                  "modules": sorted(sys.modules), "version": list(sys.version_info[:2])}))
"""


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def run_probe(python: str, port: int, state_dir: Path) -> dict[str, object]:
    result = subprocess.run(
        [python, "-c", PROBE, f"http://127.0.0.1:{port}", str(state_dir)],
        capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("usage: tether-agent"), result.stdout
    assert "could not reach the tether server" in result.stderr, result.stderr
    report: dict[str, object] = json.loads(lines[-1])
    return report


def assert_agent_only(report: dict[str, object]) -> None:
    assert report["help_exit"] == 0
    assert report["register_exit"] == 5  # EXIT_UNREACHABLE
    modules = report["modules"]
    assert isinstance(modules, list)
    leaked = sorted({m for m in modules if m.split(".")[0] in SERVER_ONLY})
    assert leaked == [], f"the agent imported server-side dependencies: {leaked}"
    ours = sorted(m for m in modules
                  if m in ("tether.server", "tether.cli")
                  or m.startswith(("tether.server.", "tether.cli.")))
    assert ours == [], f"the agent imported server or operator CLI modules: {ours}"
    assert "tether.agent.link" in modules and "websockets" in modules


def test_agent_never_imports_server_dependencies(closed_port: int, tmp_path: Path) -> None:
    report = run_probe(sys.executable, closed_port, tmp_path / "state")
    assert_agent_only(report)
    assert not (tmp_path / "state" / "identity.json").exists()


# -- the base install on Python 3.9 ------------------------------------------


def find_python39() -> str | None:
    """A working python3.9: on PATH, or any pyenv 3.9.x (its shim may point elsewhere)."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"),
                  *sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.9*", "bin",
                                                 "python3.9")), reverse=True)]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 9)":
            return candidate
    return None


def project_copy(dst: Path) -> Path:
    """The project as a source tree, without build leftovers or the dev venv.

    pip builds a local directory in place (build/, *.egg-info): a copy keeps that
    out of the working tree that other people are editing.
    """
    dst.mkdir()
    shutil.copytree(ROOT / "src", dst / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py",
                 "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    return dst


def pip_env() -> dict[str, str]:
    # Keep proxies and pip settings (the registry may only be reachable through them).
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TETHER_", "PYTHON", "VIRTUAL_ENV"))}


def test_base_install_on_python39_runs_commands(tmp_path: Path, closed_port: int) -> None:
    python39 = find_python39()
    if python39 is None:
        pytest.skip("no python3.9 on PATH or under pyenv; the base-install test needs one")
    venv = tmp_path / "venv39"
    subprocess.run([python39, "-m", "venv", str(venv)], check=True, timeout=120,
                   env=pip_env())
    vpython, agent_bin = str(venv / "bin" / "python"), str(venv / "bin" / "tether-agent")
    install = subprocess.run(
        [vpython, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         str(project_copy(tmp_path / "project"))],
        capture_output=True, text=True, env=pip_env(), timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    listed = subprocess.run([vpython, "-m", "pip", "list", "--format=json",
                             "--disable-pip-version-check"],
                            capture_output=True, text=True, env=pip_env(), timeout=120,
                            check=True)
    packages = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    assert "tether" in packages and "websockets" in packages, packages
    assert not set(packages) & set(SERVER_ONLY), f"base install pulled in {packages}"
    assert int(packages["websockets"].split(".")[0]) < 16, packages  # the 3.9 line

    # The same isolation probe, on the 3.9 install where the server's deps do not exist.
    report = run_probe(vpython, closed_port, tmp_path / "probe-state")
    assert report["version"] == [3, 9]
    assert_agent_only(report)
    no_server = subprocess.run([vpython, "-c", "import tether.server.app"],
                               capture_output=True, text=True, env=clean_env(), timeout=60)
    assert no_server.returncode != 0 and "fastapi" in no_server.stderr
    # The operator CLI is not for this interpreter, and says so instead of a traceback.
    cli = subprocess.run([str(venv / "bin" / "tether"), "nodes", "list"],
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert cli.returncode == 2, cli
    assert "need Python 3.10 or newer; this is Python 3.9" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr and "tether-agent" in cli.stderr, cli.stderr

    server = Server(tmp_path / "server").start()  # on this test run's own interpreter
    agent_proc = None
    try:
        activation_id, code = server.activation()
        state = tmp_path / "agent-state"
        registered = subprocess.run(
            [agent_bin, "register", "--server", server.url, "--activation-id", activation_id,
             "--activation-code", code, "--state-dir", str(state)],
            capture_output=True, text=True, env=clean_env(), timeout=60)
        assert registered.returncode == 0, registered.stderr
        match = re.search(r"mi-[0-9a-f]{17}", registered.stdout)
        assert match, registered.stdout
        node_id = match.group(0)

        agent_proc, output = spawn([agent_bin, "run", "--state-dir", str(state),
                                    "--reconnect-cap", "2"])
        output.wait_for(r"connected to \S+ as " + node_id, timeout=60)
        node = server.wait_node(node_id, lambda n: n["ping_status"] == "Online"
                                and bool(n["inventory"]), timeout=60)
        assert node["inventory"]["python_version"].startswith("3.9"), node["inventory"]

        out = server.cli("run", "--target", node_id, "--timeout", "1m", "--",
                         "echo hello from $TETHER_NODE_ID")
        assert out["status"] == "Success", out
        assert out["invocations"][0]["stdout"] == f"hello from {node_id}\n"
    finally:
        if agent_proc is not None:
            stop(agent_proc)
        server.stop()
