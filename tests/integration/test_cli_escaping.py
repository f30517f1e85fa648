"""A hostile device, operator and anonymous client cannot drive an operator's terminal.

Issue 12 #2, reproduced end to end: a real server, a device that is a test
client speaking the real protocol (registration, hello, inventory, a result
with output), the CLI as a subprocess, exactly as operators run it. Its
standard output and error are real pseudo-terminals (``pty.openpty``) for the
terminal case and pipes for the pipe case. Before the fix, ``nodes list``
printed the device's ``ESC [2J`` raw, ``audit list`` the anonymous client's
cursor-up + erase-line, and ``run`` the device's OSC 52.

Also issue 12 #18: an empty ``XDG_CONFIG_HOME`` is not "the current directory".
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
import tty
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import PYTHON, Server, clean_env
from tether.protocol.messages import (
    SERVER_MESSAGES,
    Accepted,
    Command,
    Hello,
    Interface,
    Inventory,
    Output,
    Ping,
    Result,
    decode,
    encode,
)
from tether.protocol.messages import Address as Addr
from tether.protocol.terminal import KEPT_IN_OUTPUT, is_unsafe, visible, visible_output
from tether.protocol.versions import AGENT_WS_PATH, PROTOCOL_VERSION

CLEAR, UP_ERASE, CLIPBOARD = "\x1b[2J", "\x1b[1A\x1b[2K", "\x1b]52;c;aGk=\x07"
NAME = f"web{CLEAR}{UP_ERASE}\u202e01"
KERNEL = f"6.1{CLIPBOARD}"
IFACE = f"eth{CLEAR}"
ADDRESS = f"10.0.0.7{UP_ERASE}"
REASON = f"oops{UP_ERASE}{CLIPBOARD}\u2066done"
TAG = f"a{CLEAR}\u202eb"
COMMENT = f"deploy{UP_ERASE}\x9b2J"
ACTIVATION = f"act{UP_ERASE}{CLEAR}"
DEVICE_STDOUT = f"out{CLEAR}{CLIPBOARD}\tcol\r\nline 2\n".encode()
DEVICE_STDERR = f"err{UP_ERASE}\n".encode()


class HostileDevice:
    """A registered node whose agent is this test: it answers every command the same way.

    ``server`` needs ``url`` and ``activation()`` (tests/netns/test_console.py passes its
    own); ``name`` and ``stdout`` replace the computer name and the output it answers."""

    def __init__(self, server: Server, name: str = NAME, stdout: bytes = DEVICE_STDOUT) -> None:
        self.name, self.stdout = name, stdout
        act, code = server.activation()
        body = json.dumps({"activation_id": act, "activation_code": code,
                           "computer_name": name}).encode()
        req = urllib.request.Request(server.url + "/api/v1/registrations", data=body,
                                     method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            ident = json.loads(resp.read())
        self.node_id: str = ident["node_id"]
        self.credential: str = ident["credential"]
        self.url = server.url.replace("http://", "ws://") + AGENT_WS_PATH
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostileDevice:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _serve(self) -> None:
        with connect(self.url, compression=None) as ws:
            ws.send(encode(Hello(PROTOCOL_VERSION, self.node_id, self.credential, "1.0")))
            ws.recv(timeout=30)  # welcome
            ws.send(encode(Inventory(
                computer_name=self.name, os_name=f"Linux{CLEAR}", os_version="12", kernel=KERNEL,
                arch="x86_64", agent_version="1.0", python_version="3.11",
                interfaces=[Interface(IFACE, ["up", "running"],
                                      [Addr(ADDRESS, 24, "inet")])],
                primary_address=ADDRESS)))
            while not self.stop.is_set():
                try:
                    frame = ws.recv(timeout=0.5)
                except TimeoutError:
                    ws.send(encode(Ping()))  # the keepalive a silent agent owes
                    continue
                except ConnectionClosed:
                    return
                message = decode(frame, SERVER_MESSAGES)  # what a real agent accepts
                if isinstance(message, Command):
                    self._answer(ws, message.invocation_id)

    def _answer(self, ws: Any, inv: str) -> None:
        ws.send(encode(Accepted(inv)))
        ws.send(encode(Output.from_bytes(inv, "stdout", 0, self.stdout)))
        ws.send(encode(Output.from_bytes(inv, "stderr", 0, DEVICE_STDERR)))
        ws.send(encode(Result(inv, "Failed", len(self.stdout), len(DEVICE_STDERR),
                              exit_code=1, reason=REASON)))


class _Drain(threading.Thread):
    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, bytearray()
        self.start()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every slave end is closed
                return
            if not chunk:
                return
            self.data += chunk


def on_terminal(server: Server, *args: str, module: str = "tether.cli",
                ) -> tuple[bytes, bytes, int]:
    """``tether ARGS`` (or another ``module``'s command) with standard output and error
    each on its own (raw) PTY."""
    pairs = [pty.openpty() for _ in range(2)]
    drains = []
    for master, slave in pairs:
        tty.setraw(slave)  # what the CLI wrote, byte for byte
        drains.append(_Drain(master))
    try:
        proc = subprocess.run([PYTHON, "-m", module, *args], stdin=subprocess.DEVNULL,
                              stdout=pairs[0][1], stderr=pairs[1][1], env=server.env(),
                              timeout=120, check=False)
    finally:
        for _, slave in pairs:
            os.close(slave)
    for (master, _), drain in zip(pairs, drains):
        drain.join(30)
        os.close(master)
    return bytes(drains[0].data), bytes(drains[1].data), proc.returncode


def on_pipes(server: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                          env=server.env(), timeout=120, check=False)


def unsafe(data: bytes, kept: frozenset[str] = frozenset("\n")) -> list[str]:
    return sorted({repr(ch) for ch in data.decode("utf-8", "surrogateescape")
                   if is_unsafe(ch) and ch not in kept})


def shown(text: str) -> bytes:
    return visible(text).encode()


@pytest.fixture(scope="module")
def device(sqlite_server: Server) -> Iterator[HostileDevice]:
    with HostileDevice(sqlite_server) as dev:
        sqlite_server.wait_node(dev.node_id, lambda n: bool(n["inventory"]))
        sqlite_server.cli("nodes", "tag", dev.node_id, f"site={TAG}")
        yield dev


@pytest.fixture(scope="module")
def command_id(sqlite_server: Server, device: HostileDevice) -> str:
    """One command the device answered with hostile output and a hostile reason."""
    ran = on_pipes(sqlite_server, "run", "--target", device.node_id, "--comment", COMMENT,
                   "--", "true")
    assert ran.returncode == 1, ran
    # The pipe case: the device's bytes, exactly, on the stream they came from.
    assert DEVICE_STDOUT in ran.stdout and DEVICE_STDERR in ran.stderr
    assert shown(REASON) in ran.stdout and REASON.encode() not in ran.stdout
    cid: str = sqlite_server.cli("commands", "list")[0]["command_id"]
    return cid


def test_device_and_operator_strings_are_shown_as_text_on_a_terminal(
        sqlite_server: Server, device: HostileDevice, command_id: str) -> None:
    views = {
        "nodes list": (["nodes", "list"], [NAME, ADDRESS, TAG]),
        "nodes show": (["nodes", "show", device.node_id], [NAME, KERNEL, IFACE, ADDRESS, TAG]),
        "commands show": (["commands", "show", command_id], [COMMENT, REASON]),
        "commands list": (["commands", "list"], []),
    }
    for what, (argv, fields) in views.items():
        out, err, code = on_terminal(sqlite_server, *argv)
        assert code == 0, (what, err)
        assert unsafe(out + err) == [], (what, out)
        for field in fields:
            assert shown(field) in out, (what, field, out)


def test_run_on_a_terminal_shows_the_output_and_raw_gives_the_bytes(
        sqlite_server: Server, device: HostileDevice, command_id: str) -> None:
    out, err, code = on_terminal(sqlite_server, "run", "--target", device.node_id, "--",
                                 "true")
    assert code == 1
    assert unsafe(out + err, KEPT_IN_OUTPUT) == [], (out, err)
    assert visible_output(DEVICE_STDOUT) in out and visible_output(DEVICE_STDERR) in err
    assert shown(REASON) in out

    out, err, _ = on_terminal(sqlite_server, "commands", "output", command_id,
                              device.node_id)
    assert (out, err) == (visible_output(DEVICE_STDOUT), visible_output(DEVICE_STDERR))
    out, err, _ = on_terminal(sqlite_server, "commands", "output", command_id,
                              device.node_id, "--raw")
    assert (out, err) == (DEVICE_STDOUT, DEVICE_STDERR)
    piped = on_pipes(sqlite_server, "commands", "output", command_id, device.node_id)
    assert (piped.stdout, piped.stderr) == (DEVICE_STDOUT, DEVICE_STDERR)


def test_unauthenticated_input_in_the_audit_log_is_shown_as_text(
        sqlite_server: Server, device: HostileDevice) -> None:
    body = json.dumps({"activation_id": ACTIVATION, "activation_code": "tac_wrong"}).encode()
    req = urllib.request.Request(sqlite_server.url + "/api/v1/registrations", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=30)
    path = "/api/v1/nodes/" + urllib.parse.quote(f"mi-{UP_ERASE}{CLEAR}")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(sqlite_server.url + path, timeout=30)
    out, err, code = on_terminal(sqlite_server, "audit", "list", "--since", "1h")
    assert code == 0, err
    assert unsafe(out + err) == [], out
    assert shown(f"activation:{ACTIVATION}") in out, out
    assert shown(f"mi-{UP_ERASE}{CLEAR}") in out, out  # the path id of a refused read


def test_errors_from_the_server_are_shown_as_text(sqlite_server: Server) -> None:
    out, err, code = on_terminal(sqlite_server, "nodes", "show", f"mi-{CLEAR}{UP_ERASE}")
    assert code == 3
    assert unsafe(out + err) == [], err


# -- issue 12 #18 -------------------------------------------------------------------


@pytest.mark.parametrize("xdg", ["", "relative/dir"])
def test_login_ignores_an_empty_or_relative_xdg_config_home(
        sqlite_server: Server, tmp_path: Path, xdg: str) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = clean_env(HOME=str(home), XDG_CONFIG_HOME=xdg)
    ok = subprocess.run([PYTHON, "-m", "tether.cli", "login", "--server", sqlite_server.url,
                         "--token", sqlite_server.token], capture_output=True, text=True,
                        env=env, cwd=cwd, timeout=60, check=False)
    assert ok.returncode == 0, ok
    assert list(cwd.rglob("*")) == []  # nothing written where the command ran
    saved = home / ".config" / "tether" / "cli.json"
    assert json.loads(saved.read_text())["server"] == sqlite_server.url
    nodes = subprocess.run([PYTHON, "-m", "tether.cli", "nodes", "list", "--json"],
                           capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
                           check=False)
    assert nodes.returncode == 0, nodes  # and it is read back from there
