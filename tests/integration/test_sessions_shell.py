"""``tether shell`` end to end: a real PTY login shell on a real agent, through the server.

The CLI runs under pexpect, so it has a real terminal: raw mode, SIGWINCH on a
resize and Ctrl-C are exercised exactly as an operator's keyboard would. The
agent runs on this machine, so what the remote shell does can be checked from
here (its hostname, its process in /proc). Each test then reads what the
server kept: the session row, the asciicast recording, the audit records.

Waiting is on output (pexpect.expect on a marker the typed command line cannot
match, e.g. ``MARK-$((6*7))`` prints ``MARK-42``) or on a deadline-bound poll.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from harness import PYTHON, Agent, Server, clean_env

EXIT_API = 3              # the CLI's exit status when the API refused the call
EXIT_SESSION_ERROR = 255  # tether shell: the session ended some other way than an exit
SESSION_LINE = r"tether: session (\S+) on (mi-[0-9a-f]{17})"
Shell = Any  # a pexpect.spawn running `tether shell`


# -- helpers -----------------------------------------------------------------


def env_for(server: Server, token: str | None = None) -> dict[str, str]:
    return clean_env(TETHER_SERVER=server.url, TETHER_TOKEN=token or server.token,
                     TERM="xterm")


def cli_as(server: Server, token: str | None, *args: str,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True, text=True,
                          env=env_for(server, token), stdin=subprocess.DEVNULL,
                          timeout=timeout)


def cli_json(server: Server, token: str | None, *args: str) -> Any:
    result = cli_as(server, token, *args, "--json")
    assert result.returncode == 0, f"{args}: exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def new_operator(server: Server, role: str) -> tuple[str, str]:
    """A new operator with one built-in role; returns its name and a token."""
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    server.cli("operators", "create", name, "--role", role)
    token: str = server.cli("tokens", "create", "--operator", name)["token"]
    return name, token


def open_shell(server: Server, node_id: str, *extra: str, token: str | None = None,
               rows: int = 24, cols: int = 80) -> tuple[Shell, str]:
    """Start `tether shell` on a terminal of rows x cols; returns it and its session id."""
    child = pexpect.spawn(PYTHON, ["-m", "tether.cli", "shell", node_id, *extra],
                          env=env_for(server, token), dimensions=(rows, cols),
                          encoding="utf-8", codec_errors="replace", timeout=30)
    child.expect(SESSION_LINE)
    assert child.match.group(2) == node_id
    session_id: str = child.match.group(1)
    return child, session_id


def run_in(child: Shell, command: str, expected: str, timeout: float = 30) -> str:
    """Type ``command`` in the remote shell and wait for ``expected`` (a regex)."""
    child.sendline(command)
    child.expect(expected, timeout=timeout)
    return str(child.match.group(0))


def ready(child: Shell) -> None:
    """The remote shell reads and runs commands."""
    run_in(child, "echo READY-$((20+22))", "READY-42")


def finish(child: Shell, timeout: float = 30) -> int:
    """Wait for the CLI to end; its exit status."""
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


def poll(what: str, fetch: Callable[[], Any], predicate: Callable[[Any], bool],
         timeout: float = 15) -> Any:
    """Deadline-bound poll: fetch until predicate holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never happened; last: {value!r}")
        time.sleep(0.1)  # polling interval of a deadline-bound poll


def ended_session(server: Server, session_id: str, timeout: float = 15) -> dict[str, Any]:
    row: dict[str, Any] = poll(f"session {session_id} ending",
                               lambda: server.cli("sessions", "show", session_id),
                               lambda r: r["ended_at"] is not None, timeout)
    return row


def session_audit(server: Server, session_id: str) -> dict[str, dict[str, Any]]:
    """The audit records of one session's start and end, keyed "start" and "end".

    The start is the record of the POST /api/v1/sessions call that opened it (its
    detail names the session), the end a "session end" record (docs/security.md).
    """
    records = server.cli("audit", "list", "--action", "session", "--limit", "100000")
    found: dict[str, dict[str, Any]] = {}
    for r in records:
        if (r.get("detail") or {}).get("session_id") != session_id:
            continue
        key = {"POST /api/v1/sessions": "start", "session end": "end"}.get(r["action"])
        if key is not None:
            assert key not in found, f"two {key} records: {found[key]} and {r}"
            found[key] = r
    return found


def children_named(ppid: int, name: str) -> list[int]:
    """Processes whose parent is ``ppid`` and whose command is ``name``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended meanwhile
        comm = text[text.index("(") + 1:text.rindex(")")]
        if comm == name and int(text.rsplit(")", 1)[1].split()[1]) == ppid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def server(sqlite_server: Server) -> Server:
    """SQLite only: sessions keep nothing in the database while they run, and their rows
    on PostgreSQL are covered by test_authorization.py's session routes. The suite's
    15-minute budget is better spent elsewhere than running these twice."""
    return sqlite_server


@pytest.fixture
def kill_children() -> Iterator[list[Shell]]:
    """Shells a test leaves behind on failure are killed, not leaked."""
    children: list[Shell] = []
    yield children
    for child in children:
        if child.isalive():
            child.terminate(force=True)


# -- tests on the shared server ------------------------------------------------


def test_shell_round_trip_recording_and_audit(server: Server, online_agent: Agent,
                                              kill_children: list[Shell]) -> None:
    node = online_agent.node_id
    child, sid = open_shell(server, node, rows=30, cols=100)
    kill_children.append(child)

    # The node's own hostname (the agent runs on this machine), and a marker.
    host = socket.gethostname()
    run_in(child, "echo H=$(hostname)", f"H={re.escape(host)}")
    run_in(child, "echo MARK-$((6*7))", "MARK-42")

    # While open, the session is listed as active and Connected.
    active = cli_json(server, None, "sessions", "list", "--node", node, "--active")
    assert [(s["session_id"], s["status"]) for s in active] == [(sid, "Connected")]

    # The PTY has the operator's terminal size, then follows a resize (SIGWINCH).
    run_in(child, "stty size", r"\b30 100\b")
    child.setwinsize(40, 120)
    # The resize travels as its own message, concurrently with the keys typed next:
    # ask again until the new size shows (bounded).
    deadline = time.monotonic() + 10
    while True:
        child.sendline("stty size")
        if child.expect([r"\b40 120\b", r"\b30 100\b"]) == 0:
            break
        assert time.monotonic() < deadline, "the remote terminal never got 40x120"

    # Ctrl-C reaches the remote foreground process, not the CLI. It is sent once
    # `sleep 30` runs under the login shell (same machine: seen in /proc).
    shell_pid = int(run_in(child, "echo PID=$$", r"PID=(\d+)")[4:])
    child.sendline("sleep 30")
    poll("sleep 30 starting", lambda: children_named(shell_pid, "sleep"), bool)
    started = time.monotonic()
    child.sendcontrol("c")
    run_in(child, "echo after-$?", "after-130")
    assert time.monotonic() - started < 20, "sleep 30 was not interrupted"
    assert child.isalive(), "Ctrl-C ended the CLI itself"

    # The shell's exit status is the CLI's.
    child.sendline("exit 7")
    assert finish(child) == 7

    row = server.cli("sessions", "show", sid)
    assert row["session_id"] == sid and row["node_id"] == node
    assert row["kind"] == "shell" and row["operator"] == server.cli("whoami")["operator"]
    assert row["status"] == "Terminated"
    assert row["exit_code"] == 7
    assert "7" in row["end_reason"]
    assert row["ended_at"] is not None and row["ended_at"] >= row["started_at"]
    assert row["recording"]
    assert row["bytes_to_node"] > 0 and row["bytes_from_node"] > 0
    assert sid not in [s["session_id"] for s in
                       cli_json(server, None, "sessions", "list", "--node", node, "--active")]
    assert sid in [s["session_id"] for s in
                   cli_json(server, None, "sessions", "list", "--node", node)]

    replay = cli_as(server, None, "sessions", "replay", sid, "--no-wait")
    assert replay.returncode == 0, replay.stderr
    assert f"H={host}" in replay.stdout
    assert "MARK-42" in replay.stdout
    assert "after-130" in replay.stdout

    cast = cli_as(server, None, "sessions", "replay", sid, "--cast")
    assert cast.returncode == 0, cast.stderr
    lines = cast.stdout.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (100, 30)
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(e, list) and len(e) == 3 for e in events)
    assert ["r", "120x40"] in [e[1:] for e in events]
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert "i" not in {e[1] for e in events}, "keystrokes recorded without --record-input"
    assert "MARK-42" in "".join(e[2] for e in events if e[1] == "o")

    audit = session_audit(server, sid)
    assert set(audit) == {"start", "end"}, audit
    start, end = audit["start"], audit["end"]
    assert start["target"] == node and end["target"] == node
    assert start["outcome"] == "ok" and start["detail"]["status"] == 201
    assert start["detail"]["kind"] == "shell"
    assert (start["detail"]["reaches"]["rows"], start["detail"]["reaches"]["cols"]) == (30, 100)
    assert start["detail"]["recording"] == row["recording"]
    assert end["detail"]["recording"] == row["recording"]
    assert end["detail"]["exit_code"] == 7
    assert "7" in end["detail"]["reason"]
    assert start["seq"] < end["seq"]


def test_terminate_by_admin_but_not_by_another_operator(server: Server, online_agent: Agent,
                                                        kill_children: list[Shell]) -> None:
    owner, owner_token = new_operator(server, "operator")
    _, other_token = new_operator(server, "operator")
    admin = server.cli("whoami")["operator"]
    child, sid = open_shell(server, online_agent.node_id, token=owner_token)
    kill_children.append(child)
    ready(child)

    # Another operator-role operator has no sessions:terminate.
    refused = cli_as(server, other_token, "sessions", "terminate", sid)
    assert refused.returncode == EXIT_API, refused
    assert "forbidden" in refused.stderr and "sessions:terminate" in refused.stderr
    run_in(child, "echo STILL-$((3*3))", "STILL-9")  # the shell is untouched
    assert server.cli("sessions", "show", sid)["status"] == "Connected"

    done = cli_json(server, None, "sessions", "terminate", sid)
    assert done["status"] == "Terminated"
    assert f"terminated by {admin}" in done["end_reason"]
    child.expect(f"tether: session {re.escape(sid)} ended: [^\r\n]*terminated by {admin}")
    assert finish(child) == EXIT_SESSION_ERROR

    row = server.cli("sessions", "show", sid)
    assert row["status"] == "Terminated" and row["operator"] == owner
    assert row["exit_code"] is None
    end = session_audit(server, sid)["end"]
    assert end["actor"] == admin
    assert f"terminated by {admin}" in end["detail"]["reason"]


def test_own_operator_may_terminate_its_session(server: Server, online_agent: Agent,
                                                kill_children: list[Shell]) -> None:
    _, token = new_operator(server, "operator")
    child, sid = open_shell(server, online_agent.node_id, token=token)
    kill_children.append(child)
    ready(child)
    done = cli_json(server, token, "sessions", "terminate", sid)
    assert done["status"] == "Terminated" and done["end_reason"] == "ended by its operator"
    child.expect(f"tether: session {re.escape(sid)} ended: ended by its operator")
    assert finish(child) == EXIT_SESSION_ERROR


def test_choose_user_needs_its_permission(server: Server, online_agent: Agent,
                                          kill_children: list[Shell]) -> None:
    _, token = new_operator(server, "operator")
    before = cli_json(server, None, "sessions", "list", "--node", online_agent.node_id)
    refused = cli_as(server, token, "shell", online_agent.node_id, "--user", "nobody")
    assert refused.returncode == EXIT_API, refused
    assert "forbidden" in refused.stderr and "sessions:choose-user" in refused.stderr
    assert "tether: session" not in refused.stderr
    after = cli_json(server, None, "sessions", "list", "--node", online_agent.node_id)
    assert after == before, "a refused shell left a session behind"

    if os.getuid() != 0:
        pytest.skip("a shell as another user needs the agent to run as root")
    child, sid = open_shell(server, online_agent.node_id, "--user", "nobody")
    kill_children.append(child)
    run_in(child, "echo U=$(id -un)", "U=nobody")
    child.sendline("exit")
    assert finish(child) == 0
    row = server.cli("sessions", "show", sid)
    assert row["target"]["user"] == "nobody"
    assert row["status"] == "Terminated" and row["exit_code"] == 0


def test_agent_killed_mid_session(server: Server, online_agent: Agent,
                                  kill_children: list[Shell]) -> None:
    child, sid = open_shell(server, online_agent.node_id)
    kill_children.append(child)
    ready(child)
    online_agent.stop(signal.SIGKILL)
    child.expect(f"tether: session {re.escape(sid)} ended: [^\r\n]*link was lost", timeout=30)
    assert finish(child) == EXIT_SESSION_ERROR
    row = ended_session(server, sid)
    assert row["status"] in ("Terminated", "Failed")
    assert "link was lost" in row["end_reason"]
    assert row["exit_code"] is None
    assert "link was lost" in session_audit(server, sid)["end"]["detail"]["reason"]

    # With the node gone, a new shell is refused at once, and leaves no session behind.
    before = cli_json(server, None, "sessions", "list", "--node", online_agent.node_id)
    refused = cli_as(server, None, "shell", online_agent.node_id)
    assert refused.returncode == EXIT_API, refused
    assert "node_offline" in refused.stderr
    assert cli_json(server, None, "sessions", "list", "--node", online_agent.node_id) == before


def test_operator_cli_killed_hangs_up_the_shell(server: Server, online_agent: Agent,
                                                kill_children: list[Shell]) -> None:
    child, sid = open_shell(server, online_agent.node_id)
    kill_children.append(child)
    pid = int(run_in(child, "echo PID=$$", r"PID=(\d+)")[4:])
    assert alive(pid), "the login shell should be a process on this machine"
    child.kill(signal.SIGKILL)
    poll(f"login shell {pid} ending", lambda: alive(pid), lambda a: not a, timeout=10)
    child.close()
    row = ended_session(server, sid)
    assert row["status"] == "Terminated"
    assert "operator" in row["end_reason"]
    assert "operator" in session_audit(server, sid)["end"]["detail"]["reason"]


def test_viewer_reads_sessions_but_cannot_start_end_or_replay_them(
        server: Server, online_agent: Agent, kill_children: list[Shell]) -> None:
    _, viewer = new_operator(server, "viewer")
    child, sid = open_shell(server, online_agent.node_id)
    kill_children.append(child)
    run_in(child, "echo SEEN-$((5*5))", "SEEN-25")

    refused = cli_as(server, viewer, "shell", online_agent.node_id)
    assert refused.returncode == EXIT_API, refused
    assert "forbidden" in refused.stderr and "sessions:start" in refused.stderr

    listed = cli_json(server, viewer, "sessions", "list", "--node", online_agent.node_id)
    assert sid in [s["session_id"] for s in listed]
    assert cli_json(server, viewer, "sessions", "show", sid)["status"] == "Connected"
    refused = cli_as(server, viewer, "sessions", "terminate", sid)
    assert refused.returncode == EXIT_API and "forbidden" in refused.stderr, refused
    assert server.cli("sessions", "show", sid)["status"] == "Connected"

    child.sendline("exit")
    assert finish(child) == 0
    # What the device printed is not the viewer's to read (sessions:read-recording).
    replay = cli_as(server, viewer, "sessions", "replay", sid, "--no-wait")
    assert replay.returncode == EXIT_API, replay
    assert "forbidden" in replay.stderr and "sessions:read-recording" in replay.stderr
    assert "SEEN-25" not in replay.stdout
    replay = cli_as(server, None, "sessions", "replay", sid, "--no-wait")
    assert replay.returncode == 0, replay.stderr
    assert "SEEN-25" in replay.stdout


# -- tests on a server of their own (session limits) --------------------------


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[Server]:
    """A SQLite server that ends idle sessions after 2 s and records keystrokes."""
    srv = Server(tmp_path / "server",
                 extra=["--session-idle-timeout", "2", "--record-input"])
    (tmp_path / "server").mkdir()
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_idle_session_ends_and_input_is_recorded(strict_server: Server, tmp_path: Path,
                                                 kill_children: list[Shell]) -> None:
    agent = Agent(strict_server, tmp_path / "agent")
    try:
        agent.register().start().connected()
        child, sid = open_shell(strict_server, agent.node_id)
        kill_children.append(child)
        run_in(child, "echo TYPED-$((2+3))", "TYPED-5")
        started = time.monotonic()
        child.expect(f"tether: session {re.escape(sid)} ended: [^\r\n]*idle", timeout=20)
        assert finish(child) == EXIT_SESSION_ERROR
        assert time.monotonic() - started >= 1.5, "ended before it was idle for 2 s"
    finally:
        agent.stop()

    row = ended_session(strict_server, sid)
    assert row["status"] == "Terminated" and "idle" in row["end_reason"]
    assert "idle" in session_audit(strict_server, sid)["end"]["detail"]["reason"]
    cast = cli_as(strict_server, None, "sessions", "replay", sid, "--cast")
    assert cast.returncode == 0, cast.stderr
    events = [json.loads(line) for line in cast.stdout.splitlines()[1:]]
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "echo TYPED-$((2+3))" in typed
