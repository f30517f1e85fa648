"""Copies against hostile peers: a device that lies about a file's mode, a local user's symlink.

Issue 12 #1: a hostile device (a test client speaking the real protocol with a
registered node's identity) answers ``open`` for ``tether cp NODE:PATH LOCAL``
with mode 0o6777; the real CLI, through a real server, must leave a file with
the permission bits minus its umask and nothing else. Issue 12 #8: a real
agent (run as whoever runs the tests, root on CI, as the review's agent was)
receives an upload while a symlink named like its partial file points at a
file the test owns; the copy must refuse, saying why, and leave that file as
it was. The operator's own partial file gets the same discipline.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_hostile import hello_from, ws_url
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import PYTHON, Agent, Server
from tether.protocol.channels import pack_data
from tether.protocol.messages import Close, Eof, Opened, Ping, encode

PING_EVERY = 0.5  # well inside the harness server's 2 s keepalive timeout
UMASK = 0o027     # not the usual 022, to see that the operator's umask is what counts


@pytest.fixture(scope="module")
def server(sqlite_server: Server) -> Server:
    """SQLite only: nothing of a copy's mode or partial file touches the database."""
    return sqlite_server


def cp(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator with umask ``UMASK`` runs it."""
    return subprocess.run([PYTHON, "-m", "tether.cli", "cp", *args], capture_output=True,
                          text=True, env=server.env(), timeout=120, umask=UMASK)


def copy_rows(server: Server, node: str) -> list[dict[str, Any]]:
    return [r for r in server.cli("sessions", "list", "--node", node) if r["kind"] == "copy"]


class LyingDevice:
    """Holds a node's link and serves every ``file_read`` with ``body`` and mode ``mode``."""

    def __init__(self, server: Server, agent: Agent, body: bytes, mode: int) -> None:
        self.server, self.agent, self.body, self.mode = server, agent, body, mode
        self.opens: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.online = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LyingDevice:
        self._thread.start()
        assert self.online.wait(30), self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            with connect(ws_url(self.server), compression=None) as ws:
                ws.send(hello_from(self.agent))
                assert json.loads(ws.recv(timeout=30))["t"] == "welcome"
                self.online.set()
                next_ping = 0.0
                while not self._stop.is_set():
                    if time.monotonic() >= next_ping:
                        ws.send(encode(Ping()))
                        next_ping = time.monotonic() + PING_EVERY
                    try:
                        frame = ws.recv(timeout=PING_EVERY / 2)
                    except TimeoutError:
                        continue
                    if isinstance(frame, str) and json.loads(frame)["t"] == "open":
                        self._serve(ws, json.loads(frame))
        except ConnectionClosed:
            pass
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
            self.online.set()

    def _serve(self, ws: Any, request: dict[str, Any]) -> None:
        self.opens.append(request)
        channel = request["channel"]
        ws.send(encode(Opened(channel, 2 * 1024 * 1024, size=len(self.body), mode=self.mode)))
        ws.send(pack_data(channel, self.body))  # within the window the server's open gave
        ws.send(encode(Eof(channel, sha256=hashlib.sha256(self.body).hexdigest())))
        ws.send(encode(Close(channel)))


def test_a_download_never_gets_the_devices_setuid_bits(server: Server,
                                                        tmp_path: Path) -> None:
    """Issue 12 #1: ``opened`` with mode 0o6777 gives 0o777 minus the operator's umask."""
    agent = Agent(server, tmp_path / "liar").register()  # its identity, not its process
    body = b"#!/bin/sh\necho owned\n" * 100
    with LyingDevice(server, agent, body, 0o6777) as device:
        local = tmp_path / "downloaded"
        done = cp(server, f"{agent.node_id}:/usr/bin/anything", str(local))
        assert not device.errors, device.errors
    assert done.returncode == 0, done.stderr
    assert [o["kind"] for o in device.opens] == ["file_read"]
    assert local.read_bytes() == body
    mode = stat.S_IMODE(local.stat().st_mode)
    assert mode & 0o7000 == 0, oct(mode)  # no setuid, setgid or sticky
    assert mode == 0o777 & ~UMASK == 0o750, oct(mode)  # not world-writable either
    assert not list(tmp_path.glob("*.tether-part"))
    [row] = copy_rows(server, agent.node_id)
    assert row["status"] == "Terminated" and row["end_reason"] == "copy complete", row


@pytest.fixture
def online_agent(server: Server, tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(server, tmp_path / "agent").register().start().connected()
    yield agent
    agent.stop()


def _snapshot(path: Path) -> tuple[bytes, int, int, int]:
    info = path.stat()
    return path.read_bytes(), info.st_mode, info.st_uid, info.st_mtime_ns


def test_an_upload_refuses_a_symlink_named_like_its_partial_file(
        server: Server, online_agent: Agent, tmp_path: Path) -> None:
    """Issue 12 #8: the agent's copy must not write or chmod what a planted symlink names."""
    node = online_agent.node_id
    victim = tmp_path / "victim.conf"  # stands for a root-owned file such as /etc/shadow
    victim.write_bytes(b"root:secret\n")
    victim.chmod(0o600)
    before = _snapshot(victim)
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(100_000))
    local.chmod(0o6777)  # and asks for setuid bits, which an upload never sets either
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    device_dir.chmod(0o1777)  # like /tmp: anyone may plant names in it
    target = device_dir / "payload.bin"
    part = device_dir / f".payload.bin.{digest[:16]}.tether-part"
    part.symlink_to(victim)

    refused = cp(server, str(local), f"{node}:{target}")
    assert refused.returncode == 1, refused.stderr
    assert "is a symbolic link" in refused.stderr and str(part) in refused.stderr
    assert "copied, checksum verified" not in refused.stderr
    assert _snapshot(victim) == before  # neither written nor chmod-ed
    assert not target.exists() and part.is_symlink()
    [row] = copy_rows(server, node)
    assert row["status"] == "Failed" and "is a symbolic link" in row["end_reason"], row

    # Once the planted link is gone, the same upload works, and gets no setuid bits.
    part.unlink()
    done = cp(server, str(local), f"{node}:{target}")
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~current_agent_umask(online_agent)
    assert sorted(p.name for p in device_dir.iterdir()) == ["payload.bin"]


def current_agent_umask(agent: Agent) -> int:
    """The agent's umask, which its copy helper inherits (it is the test's own)."""
    assert agent.proc is not None
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line")


def test_a_download_refuses_a_symlink_named_like_its_partial_file(
        server: Server, online_agent: Agent, tmp_path: Path) -> None:
    """The operator's side: LOCAL.tether-part planted as a symlink is refused before a
    session starts; what it points at is untouched."""
    node = online_agent.node_id
    remote = tmp_path / "on-the-device.bin"
    remote.write_bytes(os.urandom(50_000))
    victim = tmp_path / "dot-bashrc"
    victim.write_bytes(b"alias ls='ls --color'\n")
    before = _snapshot(victim)
    local = tmp_path / "downloaded.bin"
    part = tmp_path / "downloaded.bin.tether-part"
    part.symlink_to(victim)

    refused = cp(server, f"{node}:{remote}", str(local))
    assert refused.returncode == 2, refused.stderr
    assert "is a symbolic link" in refused.stderr and str(part) in refused.stderr
    assert _snapshot(victim) == before
    assert not local.exists()
    assert copy_rows(server, node) == []  # refused before anything started

    part.unlink()
    done = cp(server, f"{node}:{remote}", str(local))
    assert done.returncode == 0, done.stderr
    assert local.read_bytes() == remote.read_bytes()
