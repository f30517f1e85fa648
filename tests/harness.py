"""Real processes for tests and benchmarks: a tether server, agents, the CLI.

Nothing here is a fake: the server is ``python -m tether server`` on a free
loopback port, agents are ``python -m tether.agent`` processes, and the CLI is
run as a subprocess with TETHER_SERVER / TETHER_TOKEN, exactly as operators
run it. Waiting is done on events (a line printed, a status reached), with a
deadline, never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PYTHON = sys.executable
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("TETHER_")}
    env.update(extra)
    return env


class Output:
    """Collects a process's merged output on a thread so waits can watch for lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        proc.stdout.close()
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        """Wait for a line matching ``pattern`` at or after line index ``start``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = start
        while True:
            for line in self.lines[checked:]:
                m = rx.search(line)
                if m:
                    return m
            checked = max(checked, len(self.lines))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line matching {pattern!r} within {timeout} s:\n"
                                   + self.text())
            try:
                if self._new.get(timeout=remaining) is None and checked >= len(self.lines):
                    raise TimeoutError(f"process ended without {pattern!r}:\n" + self.text())
            except queue.Empty:
                pass

    def text(self) -> str:
        return "\n".join(self.lines[-200:])


def spawn(argv: list[str], env: dict[str, str] | None = None,
          prefix: list[str] | None = None) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen([*(prefix or []), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or clean_env(),
                            start_new_session=True)
    return proc, Output(proc)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"tether_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CliError(Exception):
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(f"exit {result.returncode}: {result.stderr.strip()}")


class Server:
    """A tether server process and a CLI pointed at it."""

    def __init__(self, data_dir: Path, database_url: str | None = None,
                 keepalive: tuple[float, float] = (1.0, 2.0), host: str = "127.0.0.1",
                 extra: list[str] | None = None, relaxed: bool = True) -> None:
        self.data_dir = data_dir
        self.relaxed = relaxed
        self.database_url = database_url
        self.keepalive = keepalive
        self.host = host
        self.extra = extra or []
        self.url = ""
        self.token = ""
        self.proc: subprocess.Popen[str] | None = None
        self.output: Output | None = None
        self.port = 0

    def start(self) -> Server:
        argv = [PYTHON, "-m", "tether", "server", "--data-dir", str(self.data_dir),
                "--host", self.host, "--port", str(self.port),
                "--keepalive-interval", str(self.keepalive[0]),
                "--keepalive-timeout", str(self.keepalive[1]),
                # Suites fail registrations and tokens on purpose, all from 127.0.0.1; the
                # limits' own tests (test_registration.py, test_audit_volume.py) run a
                # server with the defaults.
                *(["--registrations-per-address", "10000",
                   "--failed-tokens-per-address", "10000"] if self.relaxed else []),
                *self.extra]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        self.proc, self.output = spawn(argv)
        self.url = self.output.wait_for(r"listening on (https?://\S+)", timeout=60).group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.token = (self.data_dir / "admin-token").read_text().strip()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def env(self) -> dict[str, str]:
        return clean_env(TETHER_SERVER=self.url, TETHER_TOKEN=self.token)

    def cli_raw(self, *args: str, stdin: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                              text=True, env=self.env(), input=stdin, timeout=timeout)

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 120) -> Any:
        """Run a CLI command with --json; return the parsed output or raise CliError."""
        argv = list(args)
        argv.insert(argv.index("--") if "--" in argv else len(argv), "--json")
        result = self.cli_raw(*argv, stdin=stdin, timeout=timeout)
        if result.returncode not in (0, 1) or not result.stdout.strip():
            raise CliError(result)
        return json.loads(result.stdout)

    def activation(self, *args: str) -> tuple[str, str]:
        act = self.cli("activation", "create", *args)
        return act["activation_id"], act["activation_code"]

    def node(self, node_id: str) -> dict[str, Any]:
        node: dict[str, Any] = self.cli("nodes", "show", node_id)
        return node

    def wait_node(self, node_id: str, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 30) -> dict[str, Any]:
        """Poll a node's state until ``predicate`` holds (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.node(node_id)
            if predicate(node):
                return node
            if time.monotonic() > deadline:
                raise TimeoutError(f"node never matched: {node}")
            time.sleep(0.1)  # polling interval of a deadline-bound poll


class Agent:
    """A registered device: its state directory and, while running, its process."""

    def __init__(self, server: Server, state_dir: Path, prefix: list[str] | None = None,
                 python: str = PYTHON) -> None:
        self.server = server
        self.state_dir = state_dir
        self.prefix = prefix or []
        self.python = python
        self.node_id = ""
        self.proc: subprocess.Popen[str] | None = None
        self.output: Output | None = None

    def register_raw(self, activation_id: str, code: str, *extra: str,
                     server_url: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, self.python, "-m", "tether.agent", "register",
             "--server", server_url or self.server.url, "--activation-id", activation_id,
             "--activation-code", code, "--state-dir", str(self.state_dir), *extra],
            capture_output=True, text=True, env=clean_env(), timeout=60)

    def register(self, activation_id: str | None = None, code: str | None = None) -> Agent:
        if activation_id is None or code is None:
            activation_id, code = self.server.activation()
        result = self.register_raw(activation_id, code)
        if result.returncode != 0:
            raise CliError(result)
        self.node_id = re.search(r"mi-[0-9a-f]{17}", result.stdout).group(0)  # type: ignore[union-attr]
        return self

    def start(self, *extra: str) -> Agent:
        self.proc, self.output = spawn(
            [self.python, "-m", "tether.agent", "run", "--state-dir", str(self.state_dir),
             "--reconnect-cap", "2", *extra], prefix=self.prefix)
        return self

    def connected(self, timeout: float = 30) -> Agent:
        """Wait until the server lists this node Online with its inventory stored."""
        self.server.wait_node(self.node_id,
                              lambda n: n["ping_status"] == "Online" and bool(n["inventory"]),
                              timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
