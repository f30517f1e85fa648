"""The install endpoints on loopback: wheel choice per Python, and a forged Host header."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import Server


def get(server: Server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_without_fetched_dependencies_the_server_says_what_to_run(server: Server) -> None:
    status, body = get(server, "/agent/wheels?python=3.11")
    assert status == 404 and "tether agent-bundle fetch" in body


@pytest.fixture(scope="module")
def fetched(server: Server) -> Server:
    result = subprocess.run([sys.executable, "-m", "tether", "agent-bundle", "fetch",
                             "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return server


@pytest.mark.parametrize(("python", "websockets_major"), [("3.9", "15"), ("3.13", "17")])
def test_each_python_gets_the_agent_wheel_and_a_websockets_it_supports(
        fetched: Server, python: str, websockets_major: str) -> None:
    status, body = get(fetched, f"/agent/wheels?python={python}")
    assert status == 200, body
    names = body.split()
    assert names[0].startswith("tether-") and names[0].endswith("-py3-none-any.whl")
    assert [n.split("-")[1].split(".")[0] for n in names if n.startswith("websockets-")] \
        == [websockets_major]
    for name in names:
        with urllib.request.urlopen(f"{fetched.url}/agent/wheels/{name}", timeout=30) as resp:
            assert resp.read(4) == b"PK\x03\x04"  # a zip, i.e. a wheel


@pytest.mark.parametrize("python", ["2.7x", "3", "3.11; rm -rf /"])
def test_a_bad_python_version_is_refused(fetched: Server, python: str) -> None:
    status, body = get(fetched, f"/agent/wheels?python={urllib.request.quote(python)}")
    # In people's words: what a version looks like, or (the long one) at most 5 characters.
    assert status == 422 and "python" in body and ("3.N" in body or "at most 5" in body)


def test_the_installer_names_this_server_and_refuses_a_forged_host(server: Server) -> None:
    status, script = get(server, "/agent/install.sh")
    assert status == 200
    assert f"SERVER='{server.url}'" in script
    host = urlsplit(server.url).netloc
    for forged in ("x';reboot;'", "a b", "$(id)"):
        conn = http.client.HTTPConnection(host, timeout=30)
        conn.putrequest("GET", "/agent/install.sh", skip_host=True)
        conn.putheader("Host", forged)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        # Refused, or (where the HTTP layer drops a malformed Host) answered with the
        # server's own address: never with the forged text inside the script.
        assert forged not in body
        if resp.status == 200:
            assert f"SERVER='{server.url}'" in body
        else:
            assert resp.status == 400 and "bad_host" in body


@pytest.mark.skipif(os.getuid() != 0, reason="needs root for a private mount namespace")
def test_where_systemd_runs_the_installer_writes_enables_and_starts_a_unit(
        fetched: Server, tmp_path: Path) -> None:
    """No systemd runs in this sandbox, so its two touch points are stood in for.

    In a private mount namespace, /run/systemd/system (how the installer tells that
    systemd runs) and /etc/systemd/system are fresh tmpfs folders, and a recording
    ``systemctl`` comes first on PATH. The unit's ExecStart is then run for real.
    """
    act_id, code = fetched.activation()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "systemctl.calls"
    (fake_bin / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (fake_bin / "systemctl").chmod(0o755)
    prefix, state, unit = tmp_path / "prefix", tmp_path / "state", tmp_path / "unit"
    script = (
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/system; "
        "mount -t tmpfs tmpfs /etc/systemd/system; "
        f"curl -fsS {fetched.url}/agent/install.sh | sh -s -- --activation-id {act_id} "
        f"--activation-code {code} --prefix {prefix} --state-dir {state} "
        f"--python {sys.base_prefix}/bin/python3 --run-as nobody; "
        f"cp /etc/systemd/system/tether-agent.service {unit}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], capture_output=True, text=True, timeout=120,
                            env={"PATH": f"{fake_bin}:/usr/bin:/bin:/usr/sbin:/sbin"})
    assert result.returncode == 0, result.stderr
    assert "systemd unit tether-agent enabled and (re)started" in result.stdout
    assert calls.read_text().splitlines() == ["daemon-reload", "enable tether-agent",
                                              "restart tether-agent"]
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv == [f"{prefix}/venv/bin/tether-agent", "run", "--state-dir", str(state),
                    "--run-as", "nobody"]
    assert "Restart=always" in text and "WantedBy=multi-user.target" in text
    node_id = re.search(r"mi-[0-9a-f]{17}", result.stdout).group(0)  # type: ignore[union-attr]
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fetched.wait_node(node_id, lambda n: n["ping_status"] == "Online")
    finally:
        agent.terminate()
        agent.wait(10)
