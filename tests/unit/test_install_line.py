"""The installer line ``tether agent-bundle fetch`` prints, for each way a server runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.server.agent_dist.bundle import install_line

TAIL = "--activation-id ID --activation-code CODE"


@pytest.mark.parametrize(("server", "ca", "first"), [
    (None, None, f"curl -fsS http://SERVER:8720/agent/install.sh | sh -s -- --insecure {TAIL}"),
    (None, Path("/d/tls/ca.pem"),
     f"curl -fsS --cacert ca.pem https://SERVER:8720/agent/install.sh | sh -s -- --ca ca.pem "
     f"{TAIL}"),
    ("https://gw.example:9000/", Path("/d/tls/ca.pem"),
     f"curl -fsS --cacert ca.pem https://gw.example:9000/agent/install.sh | sh -s -- "
     f"--ca ca.pem {TAIL}"),
    ("https://gw.example", None,  # its own certificate, from a CA devices trust
     f"curl -fsS https://gw.example/agent/install.sh | sh -s -- {TAIL}"),
    ("http://127.0.0.1:8720", None,
     f"curl -fsS http://127.0.0.1:8720/agent/install.sh | sh -s -- {TAIL}"),
    ("http://10.0.0.5:8720", None,
     f"curl -fsS http://10.0.0.5:8720/agent/install.sh | sh -s -- --insecure {TAIL}"),
])
def test_install_line(server: str | None, ca: Path | None, first: str) -> None:
    lines = install_line(server, ca)
    assert lines[0] == first
    assert any("SERVER:" in line for line in lines[1:]) == (server is None)
    assert any("openssl x509" in line for line in lines[1:]) == ("--cacert" in first)
