"""The install endpoints on loopback: wheel choice per Python, and a forged Host header."""

from __future__ import annotations

import http.client
import subprocess
import sys
import urllib.error
import urllib.request
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
    assert status == 404 and "python must look like" in body


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
