"""Port forwards and file copies, end to end: real CLI, server, agent and sockets on loopback.

The agent's device is this machine, so HOST:PORT "as the device sees it" is a
service started here, and a file copied to the device can be read back here.
The large transfers (100 MiB through a forward, 50 MiB each way by ``cp``) run
on the SQLite backend only; the session machinery they exercise does not touch
the database between a session's start and its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import PYTHON, Agent, Output, Server, spawn, stop

MiB = 1024 * 1024
BIG = 100 * MiB
COPY_SIZE = 50 * MiB
SMALL = b"tether forward test\n" * 500  # 10,000 bytes
FORWARDING = (r"tether: forwarding 127\.0\.0\.1:(\d+) -> (\S+) on (mi-[0-9a-f]{17}) "
              r"\(session (\S+)\); Ctrl-C to stop")
VERIFIED = "copied, checksum verified"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def write_random(path: Path, size: int) -> str:
    """``size`` bytes of random-looking data (each MiB numbered); returns its SHA-256."""
    block = os.urandom(MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(0, size, MiB):
            chunk = ((i // MiB).to_bytes(8, "big") + block[8:])[:size - i]
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def large_transfers(server: Server) -> bool:
    return server.database_url is None


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_rows(server: Server, node_id: str) -> dict[str, dict[str, Any]]:
    rows = server.cli("sessions", "list", "--node", node_id)
    return {r["session_id"]: r for r in rows}


# -- a forward process ---------------------------------------------------------


@dataclass
class Forward:
    proc: subprocess.Popen[str]
    output: Output
    port: int
    session_id: str

    def stop(self, sig: int = signal.SIGTERM) -> int:
        stop(self.proc, sig)
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.contextmanager
def forward(server: Server, node_id: str, host: str, port: int) -> Iterator[Forward]:
    proc, output = spawn([PYTHON, "-m", "tether.cli", "forward", node_id, f"0:{host}:{port}"],
                         env=server.env())
    try:
        m = output.wait_for(FORWARDING, timeout=30)
        assert m.group(2) == f"{host}:{port}"
        assert m.group(3) == node_id
        yield Forward(proc, output, int(m.group(1)), m.group(4))
    finally:
        stop(proc)


# -- services beside the agent -------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class WebSite:
    port: int
    big_sha256: str


@pytest.fixture(scope="module")
def server(sqlite_server: Server) -> Server:
    """SQLite only: sessions keep nothing in the database while they run, and their rows
    on PostgreSQL are covered by test_authorization.py's session routes. The suite's
    15-minute budget is better spent elsewhere than running these twice."""
    return sqlite_server


@pytest.fixture(scope="module")
def website(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    """An HTTP server on 127.0.0.1 serving small.txt and a 100 MiB big.bin."""
    root = tmp_path_factory.mktemp("www")
    (root / "small.txt").write_bytes(SMALL)
    digest = write_random(root / "big.bin", BIG)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                partial(QuietHandler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield WebSite(int(httpd.server_address[1]), digest)
    httpd.shutdown()
    httpd.server_close()


@contextlib.contextmanager
def tcp_service(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-thread-per-connection TCP server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(None)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(60)
            threading.Thread(target=_handle_and_close, args=(handle, conn),
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def _handle_and_close(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        handle(conn)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- forward -------------------------------------------------------------------


def test_forward_http_concurrent_and_bulk_beside_commands(
        server: Server, online_agent: Agent, website: WebSite) -> None:
    node = online_agent.node_id
    bulk = 0
    with forward(server, node, "127.0.0.1", website.port) as fw:
        # 20 requests at once, each its own connection and so its own channel.
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda _: http_get(fw.port, "/small.txt"), range(20)))
        assert [status for status, _ in results] == [200] * 20
        assert all(body == SMALL for _, body in results)
        status, _ = http_get(fw.port, "/missing.txt")
        assert status == 404

        if large_transfers(server):
            bulk = _bulk_download_beside_a_command(server, node, fw, website)

        # While it runs, the session is Connected and counts what it relayed.
        live = server.cli("sessions", "show", fw.session_id)
        assert live["kind"] == "forward" and live["status"] == "Connected"
        assert live["target"] == {"host": "127.0.0.1", "port": website.port}
        assert live["bytes_from_node"] >= 20 * len(SMALL) + bulk
        assert fw.proc.poll() is None
        assert fw.stop(signal.SIGTERM) == 0

    row = server.cli("sessions", "show", fw.session_id)
    assert row["status"] == "Terminated"
    assert row["end_reason"] == "ended by its operator"
    assert row["ended_at"] is not None
    assert row["bytes_to_node"] > 0  # the requests
    assert row["bytes_from_node"] >= 20 * len(SMALL) + bulk
    assert session_rows(server, node)[fw.session_id]["status"] == "Terminated"


@dataclass
class Download:
    started: float
    ended: float = 0.0
    status: int = 0
    size: int = 0
    sha256: str = ""


def _bulk_download_beside_a_command(server: Server, node: str, fw: Forward,
                                    website: WebSite) -> int:
    """100 MiB downloads through the forward while a command runs on the same node's link.

    At ~100 MiB/s one download takes about as long as a ``tether run`` (a new
    CLI process), so big.bin is downloaded again and again until the command
    is done: the forward is busy for the whole of the command. Returns the bytes
    downloaded.
    """
    first_bytes, command_done = threading.Event(), threading.Event()
    downloads: list[Download] = []
    progress = [0]
    errors: list[BaseException] = []

    def download_once() -> None:
        d = Download(time.monotonic())
        downloads.append(d)
        conn = http.client.HTTPConnection("127.0.0.1", fw.port, timeout=60)
        try:
            conn.request("GET", "/big.bin")
            resp = conn.getresponse()
            d.status = resp.status
            h = hashlib.sha256()
            while block := resp.read(MiB):
                h.update(block)
                d.size += len(block)
                progress[0] += len(block)
                first_bytes.set()
            d.sha256, d.ended = h.hexdigest(), time.monotonic()
        finally:
            conn.close()

    def download() -> None:
        try:
            while not downloads or (not command_done.is_set() and len(downloads) < 50):
                download_once()
        except Exception as exc:  # reported by the assertions below
            errors.append(exc)
        finally:
            first_bytes.set()

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    assert first_bytes.wait(60), "the download never started"
    assert not errors, errors
    cmd_started, bytes_before = time.monotonic(), progress[0]
    try:
        out = server.cli("run", "--target", node, "--", "echo ok", timeout=60)
    finally:
        command_done.set()
    cmd_ended, bytes_during = time.monotonic(), progress[0] - bytes_before
    thread.join(300)
    assert not thread.is_alive(), "the downloads did not finish in 300 s"
    assert not errors, errors
    assert out["status"] == "Success"
    assert out["invocations"][0]["stdout"] == "ok\n"
    assert [(d.status, d.size, d.sha256) for d in downloads] == \
        [(200, BIG, website.big_sha256)] * len(downloads)
    first = downloads[0]
    seconds = first.ended - first.started
    print(f"\n100 MiB through the forward: {seconds:.2f} s, {BIG / MiB / seconds:.1f} MiB/s "
          f"({len(downloads)} downloads of it); 'tether run echo ok' beside them: "
          f"{cmd_ended - cmd_started:.2f} s, while {bytes_during / MiB:.1f} MiB went through")
    assert cmd_ended < downloads[-1].ended, \
        "the command did not finish while a download was in progress"
    assert bytes_during >= MiB, "the forward stalled while the command ran"
    assert cmd_ended - cmd_started < 10
    return BIG * len(downloads)


def test_forward_half_close_client_first(server: Server, online_agent: Agent) -> None:
    """The client's shutdown(SHUT_WR) reaches the service; its reply comes back after."""
    received: list[int] = []

    def count_until_eof(conn: socket.socket) -> None:
        n = len(recv_all(conn))
        received.append(n)
        conn.sendall(str(n).encode())

    with tcp_service(count_until_eof) as port, \
            forward(server, online_agent.node_id, "127.0.0.1", port) as fw:
        sizes = [3 * MiB + 123, 100_000, 1]  # more than a channel window, less, one byte
        for size in sizes:
            with socket.create_connection(("127.0.0.1", fw.port), timeout=60) as s:
                s.sendall(os.urandom(size))
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == str(size).encode()
        assert received == sizes
        assert fw.proc.poll() is None
        assert fw.stop(signal.SIGINT) == 0
    assert server.cli("sessions", "show", fw.session_id)["status"] == "Terminated"


def test_forward_half_close_service_first(server: Server, online_agent: Agent) -> None:
    """The service half-closes first; the client still sends, and all of it arrives."""
    received: list[bytes] = []
    greeting = b"hello, then EOF from the service\n" * 1000

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)
        received.append(recv_all(conn))

    sent: list[bytes] = []
    with tcp_service(greet_then_listen) as port, \
            forward(server, online_agent.node_id, "127.0.0.1", port) as fw:
        for size in (MiB + 7, 50_000):
            with socket.create_connection(("127.0.0.1", fw.port), timeout=60) as s:
                assert recv_all(s) == greeting  # EOF seen while our half is still open
                sent.append(os.urandom(size))
                s.sendall(sent[-1])
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b""
            deadline = time.monotonic() + 30
            while len(received) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling interval of a deadline-bound poll
        assert [len(r) for r in received] == [len(s) for s in sent]
        assert received == sent
        assert fw.proc.poll() is None


def test_forward_to_closed_port(server: Server, online_agent: Agent) -> None:
    port = free_port()
    with forward(server, online_agent.node_id, "127.0.0.1", port) as fw:
        for attempt in range(2):
            mark = len(fw.output.lines)
            with socket.create_connection(("127.0.0.1", fw.port), timeout=60) as s:
                try:
                    data = s.recv(1024)
                except ConnectionResetError:
                    data = b""
                assert data == b""  # closed, nothing relayed
            line = fw.output.wait_for(r"cannot connect", timeout=30, start=mark).string
            assert f"127.0.0.1:{port}" in line, line
            assert "refused" in line.lower(), line
            assert fw.proc.poll() is None, f"the forward stopped after attempt {attempt}"
        assert server.cli("sessions", "show", fw.session_id)["status"] == "Connected"
        assert fw.stop(signal.SIGTERM) == 0
    assert server.cli("sessions", "show", fw.session_id)["status"] == "Terminated"


# -- cp ------------------------------------------------------------------------


def cp(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return server.cli_raw("cp", *args, timeout=300)


def verified(result: subprocess.CompletedProcess[str]) -> bool:
    lines = result.stderr.rstrip().splitlines()
    return result.returncode == 0 and bool(lines) and \
        lines[-1].startswith(f"tether: {VERIFIED}")


def copy_rows(server: Server, node: str) -> list[dict[str, Any]]:
    return [r for r in server.cli("sessions", "list", "--node", node) if r["kind"] == "copy"]


def test_copy_download(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    """A file on the device (written here: it is this machine) comes back whole, mode kept."""
    node = online_agent.node_id
    size = COPY_SIZE if large_transfers(server) else 3 * MiB + 5
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    remote = device_dir / "data.bin"
    digest = write_random(remote, size)
    os.chmod(remote, 0o640)

    back = tmp_path / "back.bin"
    started = time.monotonic()
    down = cp(server, f"{node}:{remote}", str(back), "--json")
    seconds = time.monotonic() - started
    assert verified(down), down.stderr
    assert json.loads(down.stdout) == {"path": str(back), "size": size, "sha256": digest}
    assert sha256_of(back) == digest
    assert stat.S_IMODE(back.stat().st_mode) == 0o640
    assert not list(tmp_path.glob("*.tether-part"))
    print(f"\ncp down {size / MiB:.1f} MiB: {seconds:.2f} s ({size / MiB / seconds:.1f} MiB/s "
          "including the CLI's start)")

    # An existing local file: refused before anything starts (no session), kept as it was.
    back.write_bytes(b"keep me")
    before = copy_rows(server, node)
    kept = cp(server, f"{node}:{remote}", str(back))
    assert kept.returncode == 2, kept.stderr
    assert "exists" in kept.stderr and "--force" in kept.stderr
    assert back.read_bytes() == b"keep me"
    assert copy_rows(server, node) == before
    # --force replaces it.
    os.chmod(remote, 0o600)
    replaced = cp(server, f"{node}:{remote}", str(back), "--force")
    assert verified(replaced), replaced.stderr
    assert sha256_of(back) == digest
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    # A local directory as the destination takes the remote name.
    into = tmp_path / "downloads"
    into.mkdir()
    assert verified(cp(server, f"{node}:{remote}", str(into)))
    assert sha256_of(into / "data.bin") == digest

    rows = copy_rows(server, node)
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "Terminated" and row["end_reason"] == "copy complete", row
        assert row["target"]["direction"] == "from_node"
        assert row["target"]["path"] == str(remote)
        assert row["bytes_from_node"] == size and row["bytes_to_node"] == 0, row


def test_copy_upload_refused_without_force(server: Server, online_agent: Agent,
                                           tmp_path: Path) -> None:
    node = online_agent.node_id
    local = tmp_path / "new.txt"
    local.write_bytes(b"new version\n" * 3000)
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    remote = device_dir / "f.txt"
    remote.write_bytes(b"old version\n")

    refused = cp(server, str(local), f"{node}:{remote}")
    assert refused.returncode == 1, refused.stderr
    assert "exists on the device" in refused.stderr
    assert VERIFIED not in refused.stderr
    assert remote.read_bytes() == b"old version\n"
    assert sorted(p.name for p in device_dir.iterdir()) == ["f.txt"]  # no part file
    [row] = copy_rows(server, node)
    # The CLI ends a copy it gives up on as Failed, with the device's reason.
    assert row["status"] == "Failed", row
    assert "copy failed" in row["end_reason"] and "exists on the device" in row["end_reason"]
    assert row["target"]["direction"] == "to_node" and row["target"]["force"] is False
    assert row["bytes_to_node"] == 0


def test_copy_upload_round_trip(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    size = COPY_SIZE if large_transfers(server) else 3 * MiB + 5
    local = tmp_path / "local.bin"
    digest = write_random(local, size)
    os.chmod(local, 0o640)
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    remote = device_dir / "data.bin"

    started = time.monotonic()
    up = cp(server, str(local), f"{node}:{remote}")
    up_seconds = time.monotonic() - started
    assert verified(up), up.stderr
    assert sha256_of(remote) == digest
    assert stat.S_IMODE(remote.stat().st_mode) == 0o640
    assert sorted(p.name for p in device_dir.iterdir()) == ["data.bin"]  # no part left

    back = tmp_path / "back.bin"
    started = time.monotonic()
    down = cp(server, f"{node}:{remote}", str(back))
    down_seconds = time.monotonic() - started
    assert verified(down), down.stderr
    assert sha256_of(back) == digest
    assert stat.S_IMODE(back.stat().st_mode) == 0o640
    print(f"\ncp {size / MiB:.1f} MiB up in {up_seconds:.2f} s "
          f"({size / MiB / up_seconds:.1f} MiB/s), down in {down_seconds:.2f} s "
          f"({size / MiB / down_seconds:.1f} MiB/s)")

    # --force replaces content and mode, atomically (no part file left).
    other = tmp_path / "other.txt"
    other.write_bytes(b"second version\n" * 3000)
    os.chmod(other, 0o600)
    forced = cp(server, str(other), f"{node}:{remote}", "--force")
    assert verified(forced), forced.stderr
    assert remote.read_bytes() == other.read_bytes()
    assert stat.S_IMODE(remote.stat().st_mode) == 0o600
    assert sorted(p.name for p in device_dir.iterdir()) == ["data.bin"]
    # A trailing slash names the directory; the local name is kept.
    into_dir = cp(server, str(other), f"{node}:{device_dir}/")
    assert verified(into_dir), into_dir.stderr
    assert (device_dir / "other.txt").read_bytes() == other.read_bytes()

    ups = [r for r in copy_rows(server, node) if r["target"]["direction"] == "to_node"]
    assert len(ups) == 3
    assert all(r["status"] == "Terminated" and r["end_reason"] == "copy complete" for r in ups)
    first_up = ups[-1]  # newest first
    assert first_up["bytes_to_node"] >= size
    assert first_up["target"]["sha256"] == digest and first_up["target"]["mode"] == 0o640


def test_copy_errors(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    device_dir = tmp_path / "device"
    (device_dir / "sub").mkdir(parents=True)
    small = tmp_path / "small.txt"
    small.write_bytes(b"small\n")

    cases: list[tuple[list[str], int, str]] = [
        # A remote directory cannot be downloaded.
        ([f"{node}:{device_dir / 'sub'}", str(tmp_path / "x")], 1,
         "not a regular file|Is a directory"),
        # Nor a remote file that does not exist.
        ([f"{node}:{device_dir / 'missing.bin'}", str(tmp_path / "y")], 1,
         "No such file or directory"),
        # A relative remote path: refused before any session, naming the fix.
        ([f"{node}:relative/path", str(tmp_path / "z")], 2, "must be absolute"),
        # A local directory cannot be uploaded.
        ([str(tmp_path / "device"), f"{node}:{device_dir / 'd'}"], 2, "is not a file"),
        # Nor onto a remote directory without naming the file.
        ([str(small), f"{node}:{device_dir / 'sub'}"], 1, "is a directory"),
        # Nor into a remote directory that does not exist.
        ([str(small), f"{node}:{device_dir / 'nope' / 'small.txt'}"], 1, "does not exist"),
        # Nor a missing local file.
        ([str(tmp_path / "absent"), f"{node}:{device_dir / 'a'}"], 2, "is not a file"),
        # Both sides local.
        ([str(small), str(tmp_path / "copy")], 2, "NODE:PATH"),
    ]
    for args, code, message in cases:
        result = cp(server, *args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert re.search(message, result.stderr), (args, result.stderr)
        assert VERIFIED not in result.stderr
    for name in ("x", "y", "z", "copy"):
        assert not (tmp_path / name).exists()
        assert not (tmp_path / f"{name}.tether-part").exists()
    assert sorted(p.name for p in device_dir.iterdir()) == ["sub"]
    assert list((device_dir / "sub").iterdir()) == []
    # The copies that started a session ended it, as Failed, saying why.
    rows = copy_rows(server, node)
    assert len(rows) == 4, rows
    assert all(r["status"] == "Failed" and "copy failed: " in r["end_reason"]
               for r in rows), rows


# -- session rows --------------------------------------------------------------


def test_session_rows(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    """A forward and a download: kinds, targets, byte counts and how each ended."""
    node = online_agent.node_id

    def echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)

    payload = os.urandom(200_000)
    with tcp_service(echo) as port, forward(server, node, "127.0.0.1", port) as fw:
        with socket.create_connection(("127.0.0.1", fw.port), timeout=60) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload) and (data := s.recv(65536)):
                got += data
            assert got == payload
        active = server.cli("sessions", "list", "--node", node, "--active")
        assert [r["session_id"] for r in active] == [fw.session_id]
        assert fw.stop() == 0

    remote = tmp_path / "remote.bin"
    remote.write_bytes(os.urandom(300_000))
    assert verified(cp(server, f"{node}:{remote}", str(tmp_path / "back.bin")))

    rows = server.cli("sessions", "list", "--node", node)
    assert [r["kind"] for r in rows] == ["copy", "forward"]  # newest first
    download, fwd = rows
    assert all(r["status"] == "Terminated" and r["ended_at"] for r in rows), rows
    assert all(r["node_id"] == node for r in rows)
    assert fwd["session_id"] == fw.session_id
    assert fwd["target"] == {"host": "127.0.0.1", "port": port}
    assert fwd["bytes_to_node"] == len(payload)
    assert fwd["bytes_from_node"] == len(payload)
    assert fwd["end_reason"] == "ended by its operator"
    assert download["target"] == {"direction": "from_node", "path": str(remote), "size": None,
                                  "sha256": None, "mode": None, "force": False}
    assert download["bytes_from_node"] == 300_000 and download["bytes_to_node"] == 0
    assert download["end_reason"] == "copy complete"
    assert server.cli("sessions", "list", "--node", node, "--active") == []
