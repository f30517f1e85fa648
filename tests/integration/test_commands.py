"""Run Command end to end: real server, real agents, the CLI as operators run it.

Every wait is on a status or an event with a deadline: command statuses are
followed with the same long poll ``tether run`` uses (``GET /commands/ID?after=N``),
and a process is "gone" once ``kill(pid, 0)`` fails (or it is a zombie nobody
reaps). Each test makes its own agents and targets them by node id, since the
server is shared by the whole module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import PYTHON, Agent, Server, clean_env, spawn
from tether.agent.runner import SAFE_PATH
from tether.cli.client import Client

# Agents register under the machine's hostname; the CLI prints it beside the id.
HOST = socket.gethostname()

DOCUMENTED_ENV = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG",
                  "TETHER_NODE_ID", "TETHER_COMMAND_ID", "TETHER_INVOCATION_ID"}
SHELL_ADDED_ENV = {"PWD", "OLDPWD", "SHLVL", "_"}
LIVE = {"Pending", "InProgress"}
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}

MakeAgent = Callable[..., Agent]
Command = dict[str, Any]


# -- helpers -----------------------------------------------------------------

def run_json(server: Server, *args: str, stdin: str | None = None
             ) -> tuple[int, dict[str, Any], subprocess.CompletedProcess[str]]:
    """``tether run ... --json``: exit status, parsed output and the raw result."""
    argv = list(args)
    argv.insert(argv.index("--") if "--" in argv else len(argv), "--json")
    result = server.cli_raw("run", *argv, stdin=stdin)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout), result


def submit(server: Server, targets: list[str], script: str, *opts: str) -> Command:
    """``tether run --no-wait``: the stored command, as the server returned it."""
    argv = ["run", "--no-wait", *opts]
    for t in targets:
        argv += ["--target", t]
    cmd: Command = server.cli(*argv, "--", script)
    return cmd


def show(server: Server, command_id: str) -> Command:
    cmd: Command = server.cli("commands", "show", command_id)
    return cmd


def cancel(server: Server, command_id: str) -> Command:
    cmd: Command = server.cli("commands", "cancel", command_id)
    return cmd


def output(server: Server, command_id: str, node_id: str, stream: str) -> bytes:
    """``tether commands output ID NODE --stream S``, bytes exactly as printed (to
    standard output, whichever stream S is; a note of the cap goes to standard error)."""
    result = subprocess.run(
        [PYTHON, "-m", "tether.cli", "commands", "output", command_id, node_id,
         "--stream", stream], capture_output=True, env=server.env(), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_command(server: Server, command_id: str, predicate: Callable[[Command], bool],
                 timeout: float = 30) -> Command:
    """Long-poll the command (woken by every status change) until ``predicate`` holds."""
    client = Client(server.url, server.token)
    deadline = time.monotonic() + timeout
    cmd: Command = client.get(f"/commands/{command_id}")
    while not predicate(cmd):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"command never matched within {timeout} s: {cmd}")
        cmd = client.get(f"/commands/{command_id}", after=cmd["version"],
                         wait=min(2.0, remaining))
    return cmd


def wait_done(server: Server, command_id: str, timeout: float = 30) -> Command:
    """Wait for a terminal command status, as ``tether run`` does.

    Not on the invocations: a response can show them finished while its status
    still says InProgress (see test_show_is_consistent_while_commands_finish).
    """
    return wait_command(server, command_id, lambda c: c["status"] in TERMINAL, timeout)


def inv(cmd: Command, node_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [i for i in cmd["invocations"] if i["node_id"] == node_id]
    assert len(found) == 1, cmd
    return found[0]


def wait_file(path: Path, timeout: float = 10) -> str:
    """Content of a file a script writes (complete once it ends with a newline)."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never written")
        time.sleep(0.02)  # polling interval of a deadline-bound poll


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed orphan may linger as a zombie if PID 1 does not reap
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still alive after {timeout} s")
        time.sleep(0.05)  # polling interval of a deadline-bound poll


def start_agents(*agents: Agent) -> None:
    """Start several agents at once, then wait for all of them to be Online."""
    for a in agents:
        a.start()
    for a in agents:
        a.connected()


def start_with_env(agent: Agent, **extra: str) -> Agent:
    """Like ``Agent.start`` but with extra variables in the agent's own environment."""
    agent.proc, agent.output = spawn(
        [agent.python, "-m", "tether.agent", "run", "--state-dir", str(agent.state_dir),
         "--reconnect-cap", "2"], env=clean_env(**extra))
    return agent


# -- outcomes ----------------------------------------------------------------

def test_success_keeps_stdout_and_stderr_apart(server: Server, online_agent: Agent) -> None:
    node = online_agent.node_id
    rc, out, _ = run_json(server, "--target", node, "--",
                          "echo to-out; echo to-err >&2; echo more-out")
    assert rc == 0
    assert out["status"] == "Success"
    (only,) = out["invocations"]
    assert only["node_id"] == node
    assert only["status"] == "Success"
    assert only["exit_code"] == 0
    assert only["stdout"] == "to-out\nmore-out\n"
    assert only["stderr"] == "to-err\n"
    assert (only["stdout_size"], only["stderr_size"]) == (16, 7)
    assert not only["stdout_truncated"] and not only["stderr_truncated"]

    # Human mode: a header per node, then the node's output on the same streams.
    text = server.cli_raw("run", "--target", node, "--",
                          "printf 'line1\\nline2\\n'; echo oops >&2")
    assert text.returncode == 0, text.stderr
    assert text.stdout == f"=== {node} ({HOST})  Success  exit 0\nline1\nline2\n"
    assert "oops\n" in text.stderr
    cid = re.search(r"command (\S+) on 1 node\(s\)", text.stderr).group(1)  # type: ignore[union-attr]
    assert f"command {cid}: Success (1 Success)" in text.stderr


def test_failure_reports_exit_code(server: Server, online_agent: Agent) -> None:
    node = online_agent.node_id
    rc, out, _ = run_json(server, "--target", node, "--", "echo before; exit 7")
    assert rc == 1
    assert out["status"] == "Failed"
    only = inv(out, node)
    assert (only["status"], only["exit_code"], only["stdout"]) == ("Failed", 7, "before\n")

    text = server.cli_raw("run", "--target", node, "--", "exit 7")
    assert text.returncode == 1
    assert text.stdout.startswith(f"=== {node} ({HOST})  Failed  exit 7")


def test_list_and_show(server: Server, online_agent: Agent) -> None:
    node = online_agent.node_id
    _, ok, _ = run_json(server, "--comment", "listed", "--target", node, "--", "true")
    _, bad, _ = run_json(server, "--target", node, "--", "exit 3")

    listed = {c["command_id"]: c for c in server.cli("commands", "list")}
    assert listed[ok["command_id"]]["status"] == "Success"
    assert listed[ok["command_id"]]["comment"] == "listed"
    assert listed[ok["command_id"]]["targets"] == [node]
    assert listed[ok["command_id"]]["counts"] == {"Success": 1}
    assert listed[bad["command_id"]]["status"] == "Failed"
    assert listed[bad["command_id"]]["counts"] == {"Failed": 1}

    shown = show(server, bad["command_id"])
    assert shown["status"] == "Failed"
    assert shown["script"] == "exit 3"
    only = inv(shown, node)
    assert (only["status"], only["exit_code"]) == ("Failed", 3)
    assert only["started_at"] is not None and only["ended_at"] >= only["started_at"]

    human = server.cli_raw("commands", "show", bad["command_id"])
    assert human.returncode == 0, human.stderr
    assert re.search(rf"{node}\s+{re.escape(HOST)}\s+Failed\s+exit 3\b", human.stdout), human.stdout


def _disagreement(cmd: Command) -> str | None:
    statuses = [i["status"] for i in cmd["invocations"]]
    counts = {s: statuses.count(s) for s in set(statuses)}
    if counts != cmd["counts"] or (cmd["status"] in TERMINAL) == any(
            s in LIVE for s in statuses):
        return f"status {cmd['status']}, counts {cmd['counts']}, invocations {statuses}"
    return None


def test_show_is_consistent_while_commands_finish(server: Server,
                                                  online_agent: Agent) -> None:
    client = Client(server.url, server.token)
    found: list[str] = []
    for _ in range(40):  # stops at the first disagreement; ~0.1 s a round otherwise
        cid = client.post("/commands", {"targets": [online_agent.node_id],
                                        "script": "echo hi"})["command_id"]
        finished = threading.Event()

        def read(cid: str = cid, finished: threading.Event = finished) -> None:
            deadline = time.monotonic() + 15
            while not finished.is_set() and time.monotonic() < deadline:
                cmd = client.get(f"/commands/{cid}")
                problem = _disagreement(cmd)
                if problem:
                    found.append(problem)
                if cmd["status"] in TERMINAL:
                    finished.set()

        readers = [threading.Thread(target=read) for _ in range(4)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        if found:
            break
    assert not found, f"one response disagrees with itself: {found[0]}"


# -- timeout and cancel kill the whole process group -------------------------

def test_timeout_kills_the_process_group(server: Server, online_agent: Agent,
                                         tmp_path: Path) -> None:
    node = online_agent.node_id
    script = (f"echo $$ > {tmp_path}/shell.pid\n"
              f"sleep 300 & echo $! > {tmp_path}/child.pid\n"
              f"sh -c 'sleep 300 & echo $! > {tmp_path}/grandchild.pid; wait' &\n"
              # ignores SIGTERM: only the SIGKILL after the agent's 5 s grace stops it
              f"sh -c 'trap \"\" TERM; sleep 300 & echo $! > {tmp_path}/stubborn.pid; wait' &\n"
              "wait\n")
    started = time.monotonic()
    rc, out, _ = run_json(server, "--target", node, "--timeout", "1s", "--", script)
    elapsed = time.monotonic() - started
    assert rc == 1
    assert out["status"] == "TimedOut"
    only = inv(out, node)
    assert only["status"] == "TimedOut"
    assert "timeout" in only["reason"]
    assert elapsed < 12, f"took {elapsed:.1f} s for a 1 s timeout (+ 5 s kill grace)"
    for name in ("shell", "child", "grandchild", "stubborn"):
        assert_gone(int(wait_file(tmp_path / f"{name}.pid")))


def test_cancel_running_command(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    cmd = submit(server, [node],
                 f"echo $$ > {tmp_path}/shell.pid\n"
                 f"sleep 300 & echo $! > {tmp_path}/sleep.pid\n"
                 "wait\n")
    cid = cmd["command_id"]
    wait_command(server, cid, lambda c: inv(c, node)["status"] == "InProgress")
    shown = show(server, cid)
    assert shown["status"] == "InProgress"
    assert inv(shown, node)["status"] == "InProgress"
    shell_pid = int(wait_file(tmp_path / "shell.pid"))
    sleep_pid = int(wait_file(tmp_path / "sleep.pid"))

    answer = cancel(server, cid)
    assert answer["status"] in ("Cancelling", "Cancelled")
    done = wait_done(server, cid, timeout=15)
    assert done["status"] == "Cancelled"
    only = inv(done, node)
    assert only["status"] == "Cancelled"
    assert "cancel" in only["reason"]
    assert show(server, cid)["status"] == "Cancelled"
    assert_gone(sleep_pid)
    assert_gone(shell_pid)


def test_cancel_pending_command_on_offline_node(server: Server, make_agent: MakeAgent,
                                                tmp_path: Path) -> None:
    agent = make_agent().register()
    marker = tmp_path / "cancelled-ran"
    cmd = submit(server, [agent.node_id], f"touch {marker}")
    assert cmd["status"] == "Pending"
    assert inv(cmd, agent.node_id)["status"] == "Pending"

    answer = cancel(server, cmd["command_id"])  # answered at once: nothing to stop
    assert answer["status"] == "Cancelled"
    assert inv(answer, agent.node_id)["status"] == "Cancelled"
    assert show(server, cmd["command_id"])["status"] == "Cancelled"

    # The node coming online later does not run it.
    start_agents(agent)
    rc, later, _ = run_json(server, "--target", agent.node_id, "--", "echo later")
    assert rc == 0 and inv(later, agent.node_id)["stdout"] == "later\n"
    assert not marker.exists()


def test_submit_can_answer_with_counts_alone(server: Server, make_agent: MakeAgent) -> None:
    """What ``tether run`` asks for: no per-node list, counts from what was stored."""
    agents = [make_agent().register() for _ in range(3)]
    client = Client(server.url, server.token)
    body = {"targets": [a.node_id for a in agents], "script": "echo hi"}
    answer = client.request("POST", "/commands", body=body, query={"invocations": "false"})
    assert (answer["counts"], answer["invocations"], answer["status"]) == (
        {"Pending": 3}, [], "Pending")
    full = show(server, answer["command_id"])
    assert sorted(i["node_id"] for i in full["invocations"]) == sorted(
        a.node_id for a in agents)
    assert answer["version"] == full["version"]
    cancel(server, answer["command_id"])


# -- offline nodes -----------------------------------------------------------

def test_offline_node_gets_commands_in_order(server: Server, make_agent: MakeAgent,
                                             tmp_path: Path) -> None:
    agent = make_agent().register()
    log = tmp_path / "order.log"
    # Each script appends its shell's pid and its name. The agent starts the
    # queued invocations in delivery order but runs them concurrently, so the
    # order in which the two lines land in the file is a race between two
    # running shells; the pids (allocated in fork order) say which started first.
    first = submit(server, [agent.node_id], f'echo "$$ first" >> {log}')
    second = submit(server, [agent.node_id], f'echo "$$ second" >> {log}')
    for c in (first, second):
        assert show(server, c["command_id"])["status"] == "Pending"

    start_agents(agent)
    done = [wait_done(server, c["command_id"]) for c in (first, second)]
    for c in done:
        assert c["status"] == "Success"
        assert inv(c, agent.node_id)["status"] == "Success"
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for _, name in lines) == ["first", "second"]  # each ran exactly once
    assert [name for _, name in sorted(lines, key=lambda x: int(x[0]))] == ["first", "second"]
    started = [inv(c, agent.node_id)["started_at"] for c in done]
    assert started[0] <= started[1]


def test_delivery_timeout(server: Server, make_agent: MakeAgent, tmp_path: Path) -> None:
    agent = make_agent().register()
    marker = tmp_path / "expired-ran"
    began = time.monotonic()
    rc, out, _ = run_json(server, "--target", agent.node_id, "--delivery-timeout", "1s",
                          "--", f"touch {marker}")
    elapsed = time.monotonic() - began
    assert rc == 1
    assert out["status"] == "TimedOut"
    only = inv(out, agent.node_id)
    assert only["status"] == "DeliveryTimedOut"
    assert only["exit_code"] is None and only["started_at"] is None
    assert elapsed < 6, f"DeliveryTimedOut after {elapsed:.1f} s for a 1 s delivery timeout"

    start_agents(agent)
    rc, later, _ = run_json(server, "--target", agent.node_id, "--", "echo later")
    assert rc == 0 and inv(later, agent.node_id)["stdout"] == "later\n"
    assert not marker.exists()
    assert inv(show(server, out["command_id"]), agent.node_id)["status"] == "DeliveryTimedOut"


# -- output ------------------------------------------------------------------

def test_large_output_is_byte_exact(server: Server, online_agent: Agent,
                                    tmp_path: Path) -> None:
    node = online_agent.node_id
    # 2.25 MiB of random bytes is 3 MiB of base64 (plus newlines).
    script = ("head -c 2359296 /dev/urandom | base64 > big.txt\n"
              "cat big.txt\n"
              "sha256sum big.txt | cut -d' ' -f1 >&2\n")
    cmd = submit(server, [node], script, "--workdir", str(tmp_path))
    done = wait_done(server, cmd["command_id"], timeout=60)
    assert done["status"] == "Success", done
    data = output(server, cmd["command_id"], node, "stdout")
    digest = output(server, cmd["command_id"], node, "stderr").decode().strip()
    assert len(data) > 3 * 1024 * 1024
    assert inv(done, node)["stdout_size"] == len(data) == (tmp_path / "big.txt").stat().st_size
    assert not inv(done, node)["stdout_truncated"]
    assert hashlib.sha256(data).hexdigest() == digest


def test_binary_output_is_byte_exact(server: Server, online_agent: Agent,
                                     tmp_path: Path) -> None:
    node = online_agent.node_id
    blob = bytes(range(256)) * 3 + b"\xff\xfe\xc3(\x80\x00tail"
    source = tmp_path / "blob.bin"
    source.write_bytes(blob)
    cmd = submit(server, [node], f"cat {source}; cat {source} {source} >&2")
    done = wait_done(server, cmd["command_id"])
    assert done["status"] == "Success", done
    assert (inv(done, node)["stdout_size"], inv(done, node)["stderr_size"]) == (
        len(blob), 2 * len(blob))
    assert output(server, cmd["command_id"], node, "stdout") == blob
    assert output(server, cmd["command_id"], node, "stderr") == blob * 2


def test_output_cap(server: Server, online_agent: Agent) -> None:
    node = online_agent.node_id
    script = "head -c 5000 /dev/zero | tr '\\000' a; echo small >&2"
    rc, out, _ = run_json(server, "--target", node, "--output-cap", "1000", "--", script)
    assert rc == 0
    assert out["status"] == "Success"
    only = inv(out, node)
    assert only["status"] == "Success" and only["exit_code"] == 0
    assert (only["stdout_size"], only["stdout_truncated"]) == (1000, True)
    assert (only["stderr_size"], only["stderr_truncated"]) == (6, False)
    assert output(server, out["command_id"], node, "stdout") == b"a" * 1000

    text = server.cli_raw("run", "--target", node, "--output-cap", "1000", "--", script)
    assert text.returncode == 0, text.stderr
    assert "--- stdout was cut at the output cap (1000 bytes)" in text.stdout


# -- how the script runs -----------------------------------------------------

def test_clean_environment(server: Server, make_agent: MakeAgent) -> None:
    agent = start_with_env(make_agent().register(), SECRET_IN_AGENT_ENV="1",
                           LANG="de_DE.UTF-8").connected()
    assert agent.proc is not None
    agent_env = Path(f"/proc/{agent.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"SECRET_IN_AGENT_ENV=1" in agent_env  # the agent itself does have it

    rc, out, _ = run_json(server, "--target", agent.node_id, "--", "env")
    assert rc == 0
    only = inv(out, agent.node_id)
    env = dict(line.split("=", 1) for line in only["stdout"].splitlines())
    assert "SECRET_IN_AGENT_ENV" not in env
    assert set(env) >= DOCUMENTED_ENV, env
    assert set(env) - DOCUMENTED_ENV <= SHELL_ADDED_ENV, env
    assert env["PATH"] == SAFE_PATH
    assert env["SHELL"] == "/bin/sh"
    assert env["LANG"] == "C.UTF-8"
    assert env["TETHER_NODE_ID"] == agent.node_id
    assert env["TETHER_COMMAND_ID"] == out["command_id"]
    assert env["TETHER_INVOCATION_ID"] == only["invocation_id"]


def test_workdir(server: Server, online_agent: Agent, tmp_path: Path) -> None:
    node = online_agent.node_id
    rc, out, _ = run_json(server, "--target", node, "--workdir", str(tmp_path), "--", "pwd")
    assert rc == 0
    assert os.path.realpath(inv(out, node)["stdout"].strip()) == os.path.realpath(tmp_path)

    missing = tmp_path / "no-such-dir"
    rc, out, _ = run_json(server, "--target", node, "--workdir", str(missing), "--", "pwd")
    assert rc == 1
    assert out["status"] == "Failed"
    only = inv(out, node)
    assert only["status"] == "Failed"
    assert str(missing) in only["reason"]
    assert only["stdout"] == ""


def test_script_from_file_and_stdin(server: Server, online_agent: Agent,
                                    tmp_path: Path) -> None:
    node = online_agent.node_id
    script_file = tmp_path / "script.sh"
    script_file.write_text('greeting="from file"\necho "$greeting"\necho "line 2"\n')
    rc, out, _ = run_json(server, "--target", node, "--file", str(script_file))
    assert rc == 0
    assert inv(out, node)["stdout"] == "from file\nline 2\n"
    assert show(server, out["command_id"])["script"] == script_file.read_text()

    rc, out, _ = run_json(server, "--target", node,
                          stdin="x=stdin\necho \"from $x\"\necho err >&2\n")
    assert rc == 0
    assert inv(out, node)["stdout"] == "from stdin\n"
    assert inv(out, node)["stderr"] == "err\n"


# -- targets -----------------------------------------------------------------

def test_targets(server: Server, make_agent: MakeAgent) -> None:
    tagged, plain = make_agent().register(), make_agent().register()
    start_agents(tagged, plain)
    role = f"cmdtest-{uuid.uuid4().hex[:8]}"
    node = server.cli("nodes", "tag", tagged.node_id, f"role={role}")
    assert node["tags"] == {"role": role}

    # tag:k=v selects only the tagged node.
    rc, out, _ = run_json(server, "--target", f"tag:role={role}", "--", "echo tagged")
    assert rc == 0
    assert [i["node_id"] for i in out["invocations"]] == [tagged.node_id]
    assert out["invocations"][0]["stdout"] == "tagged\n"

    # Two nodes at once: two invocations, both Success.
    rc, out, _ = run_json(server, "--target", tagged.node_id, "--target", plain.node_id,
                          "--", "echo $TETHER_NODE_ID")
    assert rc == 0
    assert out["status"] == "Success"
    assert sorted(i["node_id"] for i in out["invocations"]) == sorted(
        [tagged.node_id, plain.node_id])
    for i in out["invocations"]:
        assert i["status"] == "Success" and i["stdout"] == f"{i['node_id']}\n"

    # all: every registered node, including offline ones of other tests (those
    # just time out their delivery), so only ours are required to succeed.
    cmd = submit(server, ["all"], "echo everyone", "--delivery-timeout", "2s")
    assert {tagged.node_id, plain.node_id} <= {i["node_id"] for i in cmd["invocations"]}
    done = wait_command(server, cmd["command_id"], lambda c: all(
        inv(c, n)["status"] not in LIVE for n in (tagged.node_id, plain.node_id)))
    for n in (tagged.node_id, plain.node_id):
        assert inv(done, n)["status"] == "Success"

    # Bad target expressions are refused before anything is stored.
    before = {c["command_id"] for c in server.cli("commands", "list")}
    for bad, error in (("bogus", "targets"), ("tag:novalue", "targets"),
                       ("mi-00000000000000000", "bad_targets"),
                       (f"tag:role=none-{role}", "bad_targets")):
        result = server.cli_raw("run", "--target", bad, "--", "true")
        assert result.returncode == 3, (bad, result.stderr)
        assert error in result.stderr, (bad, result.stderr)
    result = server.cli_raw("run", "--target", tagged.node_id, "--timeout", "soon", "--",
                            "true")
    assert result.returncode == 2, result.stderr
    assert "bad duration" in result.stderr
    assert {c["command_id"] for c in server.cli("commands", "list")} == before
