"""Plain HTTP off this machine only when asked for with --insecure, on both sides.

Both refusals happen before any socket is opened, so nothing here leaves loopback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness import PYTHON, clean_env


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", *argv], capture_output=True, text=True,
                          env=clean_env(), timeout=60)


def test_server_refuses_plain_http_on_a_network_address(tmp_path: Path) -> None:
    result = run("tether", "server", "--data-dir", str(tmp_path / "data"),
                 "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2, result
    assert "refusing to serve plain HTTP on 0.0.0.0" in result.stderr
    assert "--tls auto" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_agent_refuses_to_register_with_a_plain_http_server_elsewhere(tmp_path: Path) -> None:
    result = run("tether.agent", "register", "--server", "http://10.255.255.1:8720",
                 "--activation-id", "a", "--activation-code", "c",
                 "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2, result
    assert "plain HTTP off this machine" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "state").exists()
