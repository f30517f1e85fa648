"""What devices and servers send reaches no terminal raw outside the ``tether`` CLI either.

The CLI's printers are walked in ``tests/unit/test_cli_printers.py``. Two other
readers sit at terminals: whoever installs an agent (``tether-agent register`` prints
a server's refusal) and whoever watches the server's log (``tether server`` in the
foreground, ``tail -f``, ``journalctl``), where records quote what agents sent. Both
go through ``tether.protocol.terminal`` (``visible`` and ``VisibleFormatter``).
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_escaping import on_terminal, unsafe
from test_hostile import close_code, hello_from, ws_url
from websockets.sync.client import connect

from harness import Agent, Server
from tether.protocol.errors import CloseCode
from tether.protocol.terminal import visible

HOSTILE = "\x1b[2J\x1b]52;c;T1dORUQ=\x07\u202eX\x1b[1A\x1b[2K"


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A wrong URL, a hostile host or a machine in the middle of plain HTTP."""

    def do_POST(self) -> None:
        body = json.dumps({"error": "invalid_activation" + HOSTILE,
                           "message": "refused" + HOSTILE}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    httpd = socketserver.TCPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_agent_register_shows_a_servers_refusal_as_text(
        sqlite_server: Server, refusing_server: str, tmp_path: Path) -> None:
    out, err, code = on_terminal(
        sqlite_server, "register", "--server", refusing_server, "--activation-id", "a",
        "--activation-code", "b", "--state-dir", str(tmp_path / "state"),
        module="tether.agent")
    assert code != 0
    assert unsafe(out + err) == [], (out, err)
    assert visible("refused" + HOSTILE).encode() in err, err


def test_the_server_log_shows_what_an_agent_sent_as_text(
        sqlite_server: Server, tmp_path: Path) -> None:
    """An invocation id that fits its bound but carries escapes: the server closes the
    link (4007, not this node's) and logs why, quoting the id, as one visible line."""
    agent = Agent(sqlite_server, tmp_path / "agent").register()
    start = len(sqlite_server.output.lines)
    with connect(ws_url(sqlite_server), compression=None) as ws:
        ws.send(hello_from(agent))
        ws.recv(timeout=30)  # welcome
        ws.send(json.dumps({"t": "result", "invocation_id": HOSTILE, "status": "Success",
                            "stdout_size": 0, "stderr_size": 0}))
        assert close_code(ws) == CloseCode.UNEXPECTED
    sqlite_server.output.wait_for(r"not this node", start=start)
    lines = sqlite_server.output.lines[start:]
    assert [line for line in lines if unsafe(line.encode(), frozenset())] == []
    assert any(visible(HOSTILE) in line for line in lines), lines
