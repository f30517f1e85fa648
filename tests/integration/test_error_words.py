"""What the CLI says when a request or a connection is wrong (issue 13).

Each case is one an operator met, through the real ``tether`` entry point against a
real server: the 422s in words (never a regular expression), and the hints for a
URL that is https:// to a plain server, ends in /api/v1, names no tether server, or
a TETHER_TOKEN that is empty while TETHER_SERVER is set.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import PYTHON, Server, clean_env

EXIT_API = 3
EXIT_USAGE = 2


def tether(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def as_operator(server: Server, tmp_path: Path, **env: str) -> dict[str, str]:
    """The server's environment with ``env`` changed, and no saved login to fall back on."""
    return {**server.env(), "XDG_CONFIG_HOME": str(tmp_path), **env}


def no_regex(text: str) -> None:
    assert "pattern" not in text and "{17}" not in text and "^" not in text, text


def test_a_malformed_target_says_what_a_target_is(sqlite_server: Server,
                                                  tmp_path: Path) -> None:
    result = tether(as_operator(sqlite_server, tmp_path), "run", "--target", "site:a", "true")
    assert result.returncode == EXIT_API, result.stderr
    assert "targets.0 is not valid: a target is all, a node id (mi- and 17 hex digits)" \
        in result.stderr
    no_regex(result.stderr)


def test_an_empty_script_says_to_give_one(sqlite_server: Server, tmp_path: Path) -> None:
    result = tether(as_operator(sqlite_server, tmp_path), "run", "--target", "all", "")
    assert result.returncode == EXIT_API, result.stderr
    assert "script is empty: give the commands to run" in result.stderr
    assert "character" not in result.stderr


def test_a_shell_to_something_not_a_node_says_what_a_node_id_is(sqlite_server: Server,
                                                                tmp_path: Path) -> None:
    result = tether(as_operator(sqlite_server, tmp_path), "shell", "vm")
    assert result.returncode != 0
    assert "node" in result.stderr
    no_regex(result.stderr)


def test_https_to_a_plain_server_says_to_use_http(sqlite_server: Server,
                                                   tmp_path: Path) -> None:
    https = "https://" + sqlite_server.url.removeprefix("http://")
    result = tether(as_operator(sqlite_server, tmp_path, TETHER_SERVER=https), "whoami")
    assert result.returncode == EXIT_API
    assert "WRONG_VERSION_NUMBER" in result.stderr
    assert f"does not speak TLS: try {sqlite_server.url}" in result.stderr


def test_a_url_ending_in_api_v1_says_to_drop_it(sqlite_server: Server,
                                                tmp_path: Path) -> None:
    env = as_operator(sqlite_server, tmp_path, TETHER_SERVER=sqlite_server.url + "/api/v1/")
    result = tether(env, "whoami")
    assert result.returncode == EXIT_USAGE
    assert "ends in /api/v1" in result.stderr and "tether adds /api/v1 itself" \
        in result.stderr


def test_a_url_with_a_path_says_to_give_the_server_s_own(sqlite_server: Server,
                                                        tmp_path: Path) -> None:
    env = as_operator(sqlite_server, tmp_path, TETHER_SERVER=sqlite_server.url + "/tether")
    result = tether(env, "whoami")
    assert result.returncode == EXIT_API
    assert "has no such API path" in result.stderr and "(not_found)" in result.stderr


@pytest.fixture
def not_http() -> Iterator[str]:
    """A TCP listener that closes every connection without a byte (not an HTTP server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stopping.set()
    listener.close()
    thread.join(timeout=5)


def test_a_url_that_is_no_tether_server_says_so(sqlite_server: Server, tmp_path: Path,
                                                not_http: str) -> None:
    result = tether(as_operator(sqlite_server, tmp_path, TETHER_SERVER=not_http), "whoami")
    assert result.returncode == EXIT_API
    assert "did not answer HTTP" in result.stderr
    assert "the tether server's own address and port" in result.stderr


def test_http_to_a_tls_server_says_to_use_https(tmp_path: Path) -> None:
    tls = Server(tmp_path / "data", extra=["--tls", "auto"]).start()
    try:
        plain = "http://" + tls.url.removeprefix("https://")
        result = tether(as_operator(tls, tmp_path, TETHER_SERVER=plain), "whoami")
    finally:
        tls.stop()
    assert result.returncode == EXIT_API
    assert f"if it serves TLS, use {tls.url}" in result.stderr


class _NotTether(http.server.BaseHTTPRequestHandler):
    """Another web server: a 404 page or a 200 page, both HTML, for every path."""

    status = 404

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>not tether</html>")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(params=[404, 200])
def web_server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_NotTether,), {"status": request.param})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_another_web_server_is_not_taken_for_tether(sqlite_server: Server, tmp_path: Path,
                                                    web_server: str) -> None:
    result = tether(as_operator(sqlite_server, tmp_path, TETHER_SERVER=web_server), "whoami")
    assert result.returncode == EXIT_API
    assert "Traceback" not in result.stderr
    assert "the tether server's own address and port" in result.stderr


def test_an_empty_token_names_it_not_the_server(sqlite_server: Server,
                                                tmp_path: Path) -> None:
    env = as_operator(sqlite_server, tmp_path, TETHER_TOKEN="")
    result = tether(env, "nodes", "list")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith(f"tether: TETHER_TOKEN is empty (and no login is saved) "
                                    f"for {sqlite_server.url}")
    assert "set TETHER_SERVER" not in result.stderr


def test_nothing_set_still_asks_for_both(tmp_path: Path) -> None:
    env = {k: v for k, v in clean_env(XDG_CONFIG_HOME=str(tmp_path)).items()
           if k not in ("TETHER_SERVER", "TETHER_TOKEN")}
    result = tether(env, "nodes", "list")
    assert result.returncode == EXIT_USAGE
    assert "set TETHER_SERVER and TETHER_TOKEN" in result.stderr
