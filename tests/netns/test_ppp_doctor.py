"""``tether-agent doctor`` on a device whose only link is ``ppp0``, healthy and broken.

Why: the doctor exists for a person at a device in a closed network whose
agent does not come Online. Only the field-like network shows what they
would see: the server's name in a private DNS zone served by the carrier's
resolver at the far end of ``ppp0``, a route over a point-to-point link, a
carrier in between. Each test runs the real
server (server namespace) and the real ``python -m tether.agent`` (device
namespace), breaks one thing the way it breaks in the field, and checks that
the doctor stops at that step with the hint for it and skips what depends
on it.

Nothing is sent anywhere but the test's namespaces: the device has no route
out, and its only nameserver is the test network's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pppnet import CARRIER_PPP_ADDR, DEVICE_ADDR, OutputWatcher, PppNetwork, clean_env

pytestmark = pytest.mark.netns

PORT = 8400  # the server namespace is fresh, so any port is free there
NODE_ID = re.compile(r"mi-[0-9a-f]{17}")
CHECKS = ["identity", "permissions", "resolve", "route", "tcp", "tls", "websocket", "auth",
          "clock"]
AGENT = [sys.executable, "-m", "tether.agent"]


class Field:
    """The server and one registered device of one test, and their output."""

    def __init__(self, net: PppNetwork, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.state_dir = tmp / "agent"
        self.watchers: dict[str, OutputWatcher] = {}
        self.server: subprocess.Popen[str] | None = None
        self.token = ""
        self.node_id = ""

    def logs(self) -> str:
        return "".join(f"\n--- {name} ---\n{w.text()}" for name, w in self.watchers.items())

    def start_server(self) -> None:
        data_dir = self.tmp / "server"
        url = f"http://{self.net.server_addr}:{PORT}"
        self.server, self.watchers["server"] = self.net.spawn(self.net.server_ns, [
            sys.executable, "-m", "tether", "server", "--insecure", "--data-dir", str(data_dir),
            "--host", self.net.server_addr, "--port", str(PORT)], env=clean_env())
        self.watchers["server"].wait_for(f"listening on {url}", timeout=30)
        self.token = (data_dir / "admin-token").read_text().strip()

    def cli(self, *args: str) -> Any:
        """The operator CLI in the server namespace; its --json output, parsed."""
        result = self.net.run(
            self.net.server_ns, [sys.executable, "-m", "tether.cli", *args],
            env=clean_env(TETHER_SERVER=f"http://{self.net.server_addr}:{PORT}",
                          TETHER_TOKEN=self.token))
        assert result.returncode == 0, (f"tether.cli {args}: exit {result.returncode}\n"
                                        f"{result.stdout}{result.stderr}{self.logs()}")
        return json.loads(result.stdout)

    def ping_status(self) -> str:
        status: str = self.cli("nodes", "show", self.node_id, "--json")["ping_status"]
        return status

    def stop_server(self) -> None:
        assert self.server is not None
        os.killpg(self.server.pid, signal.SIGTERM)
        self.server.wait(timeout=30)

    def register(self) -> str:
        """Register through the server's name, as a device would."""
        activation = self.cli("activation", "create", "--json")
        result = self.net.run(self.net.device_ns, [
            *AGENT, "register", "--insecure", "--server", f"http://{self.net.server_name}:{PORT}",
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"],
            "--state-dir", str(self.state_dir)], env=clean_env())
        found = NODE_ID.search(result.stdout)
        assert result.returncode == 0 and found, (
            f"register: exit {result.returncode}\n{result.stdout}{result.stderr}{self.logs()}")
        self.node_id = found.group(0)
        return self.node_id

    def run_agent(self) -> OutputWatcher:
        _, watcher = self.net.spawn(self.net.device_ns, [
            *AGENT, "run", "--state-dir", str(self.state_dir)], env=clean_env())
        self.watchers["agent"] = watcher
        watcher.wait_for("connected to", timeout=30)
        return watcher

    def doctor(self, state_dir: Path | None = None,
               *extra: str) -> tuple[int, list[dict[str, Any]]]:
        """``doctor --json`` in the device namespace: exit code and parsed results."""
        result = self.net.run(self.net.device_ns, [
            *AGENT, "doctor", "--state-dir", str(state_dir or self.state_dir), "--json",
            "--timeout", "5", *extra], env=clean_env())
        try:
            results: list[dict[str, Any]] = json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"doctor --json printed no JSON (exit {result.returncode}):\n"
                        f"{result.stdout}{result.stderr}{self.logs()}")
        assert [r["check"] for r in results] == CHECKS, results
        for r in results:
            assert set(r) >= {"check", "ok", "detail", "hint"}, r
        return result.returncode, results

    def copy_identity(self, **changes: str) -> Path:
        """A copy of the state directory (owner-only, like the original) with changed fields."""
        copy = self.tmp / "agent-copy"
        shutil.copytree(self.state_dir, copy)
        path = copy / "identity.json"
        identity = json.loads(path.read_text())
        identity.update(changes)
        path.write_text(json.dumps(identity))
        return copy


def by_check(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["check"]: r for r in results}


def statuses(results: list[dict[str, Any]]) -> dict[str, str]:
    return {r["check"]: r["status"] for r in results}


def expect(passed: list[str], failed: str) -> dict[str, str]:
    """Checks up to ``failed`` pass, ``failed`` fails, the ones after it are skipped."""
    return {c: "pass" if c in passed else "fail" if c == failed else "skipped"
            for c in CHECKS}


@pytest.fixture
def field(ppp_network: PppNetwork, tmp_path: Path) -> Field:
    field = Field(ppp_network, tmp_path)
    field.start_server()
    field.register()
    return field


def test_doctor_passes_on_a_healthy_device_and_leaves_the_agent_alone(field: Field) -> None:
    agent = field.run_agent()
    code, results = field.doctor()
    checks = by_check(results)

    assert code == 0, f"{results}{field.logs()}"
    assert all(r["ok"] is True for r in results), results
    assert statuses(results) == {**{c: "pass" for c in CHECKS}, "tls": "n/a"}, results
    resolve = checks["resolve"]["detail"]
    assert f"{field.net.server_name} -> {field.net.server_addr}" in resolve, resolve
    assert f"answered by DNS (nameservers {CARRIER_PPP_ADDR} from" in resolve, resolve
    route = checks["route"]["detail"]
    assert "ppp0, point-to-point" in route, route
    assert f"from {DEVICE_ADDR}" in route, route
    assert f"{field.net.server_addr}:{PORT}" in checks["tcp"]["detail"]
    assert "welcome" in checks["auth"]["detail"]
    # The doctor's hello was a probe: the server answered and closed it without
    # counting it as the node's connection. Had it taken over, the doctor's
    # close would have left the node ConnectionLost until the agent redialled.
    assert field.ping_status() == "Online", field.logs()

    text = field.net.run(field.net.device_ns, [
        *AGENT, "doctor", "--state-dir", str(field.state_dir), "--timeout", "5"],
        env=clean_env())
    assert text.returncode == 0, text.stdout + text.stderr
    assert "all checks passed" in text.stdout, text.stdout
    assert "via ppp0, point-to-point" in text.stdout, text.stdout
    assert field.ping_status() == "Online", field.logs()

    # The agent's first link still serves. A command is the synchronisation:
    # a close (4005) that either doctor run caused would have reached the agent
    # before it, on the same ordered stream, and the agent logs a lost link
    # before it redials.
    run = field.cli("run", "--target", field.node_id, "--json", "--", "echo still-here")
    (invocation,) = run["invocations"]
    assert invocation["exit_code"] == 0 and invocation["stdout"] == "still-here\n", invocation
    log = agent.text()
    assert log.count("connected to") == 1, log
    for word in ("replaced", "4005", "lost", "reconnecting"):
        assert word not in log, log
    assert field.ping_status() == "Online", field.logs()


def test_doctor_stops_at_the_route_when_the_device_has_none(field: Field) -> None:
    field.net.run(field.net.device_ns, ["ip", "route", "del", "default"]).check_returncode()
    code, results = field.doctor()
    route = by_check(results)["route"]

    assert code == 1
    assert statuses(results) == expect(["identity", "permissions", "resolve"], "route"), results
    assert route["ok"] is False
    assert f"no route to {field.net.server_addr}" in route["detail"], route
    assert "ppp0 is up" in route["hint"], route
    assert "ip route add default dev ppp0" in route["hint"], route
    assert all(r["ok"] is None for r in results[CHECKS.index("route") + 1:]), results


def test_doctor_stops_at_resolution_for_an_unknown_name(field: Field) -> None:
    state = field.copy_identity(server_url=f"http://tether-missing.carrier.internal:{PORT}")
    code, results = field.doctor(state)
    resolve = by_check(results)["resolve"]

    assert code == 1
    assert statuses(results) == expect(["identity", "permissions"], "resolve"), results
    assert "not in /etc/hosts" in resolve["detail"], resolve
    assert f"DNS (nameservers {CARRIER_PPP_ADDR} from" in resolve["detail"], resolve
    assert "no such name" in resolve["detail"], resolve
    assert "private DNS zone" in resolve["hint"], resolve
    assert "/etc/hosts" in resolve["hint"], resolve


def test_doctor_says_no_nameserver_answered_when_the_resolver_is_down(field: Field) -> None:
    field.net.stop_dns()
    code, results = field.doctor()
    resolve = by_check(results)["resolve"]

    assert code == 1
    assert statuses(results) == expect(["identity", "permissions"], "resolve"), results
    assert "no nameserver answered" in resolve["detail"], resolve
    assert CARRIER_PPP_ADDR in resolve["detail"], resolve
    assert "private DNS zone" in resolve["hint"], resolve


def test_doctor_says_refused_when_the_server_is_down(field: Field) -> None:
    field.stop_server()
    code, results = field.doctor()
    tcp = by_check(results)["tcp"]

    assert code == 1
    assert statuses(results) == expect(["identity", "permissions", "resolve", "route"],
                                       "tcp"), results
    assert tcp["detail"] == f"connection to {field.net.server_addr}:{PORT} refused", tcp
    assert "nothing listens" in tcp["hint"], tcp


def test_doctor_explains_a_credential_the_server_does_not_know(field: Field) -> None:
    state = field.copy_identity(credential="not-the-credential")
    code, results = field.doctor(state)
    checks = by_check(results)

    assert code == 1
    # The clock is read over plain HTTP, so it is still checked after the refusal.
    assert statuses(results) == {**expect(CHECKS[:7], "auth"), "tls": "n/a",
                                 "clock": "pass"}, results
    assert "AUTH_FAILED (4003)" in checks["auth"]["detail"], checks["auth"]
    assert checks["auth"]["hint"] == ("the server does not know this credential: "
                                      "re-register with tether-agent register --force")
