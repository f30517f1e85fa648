"""End to end over the field-like network: server, operator CLI and agent on ppp0.

Why: unit and in-process tests cannot show that an agent whose only link is a
point-to-point ``ppp0`` finds the server by name, reports the right
addresses, and runs commands. This runs the real processes in the namespaces
of ``pppnet.PppNetwork``: the server and the CLI in the server namespace, the
agent in the device namespace.

PRODUCT CONTRACT under test (written against the CLI spec while the product
was being written; until it lands this test is expected to fail):

- ``python -m tether server --data-dir D --host H --port P
  --keepalive-interval 2 --keepalive-timeout 2`` prints a line containing
  ``listening on http://H:P`` when ready and writes the admin token, one line,
  to ``D/admin-token`` on first start.
- ``python -m tether.cli`` with TETHER_SERVER and TETHER_TOKEN set:
  ``activation create --json`` -> {activation_id, activation_code};
  ``nodes show ID --json`` -> {node_id, ping_status ("Online"/"ConnectionLost"),
  primary_address, peer_address, inventory: {interfaces: [{name, flags,
  addresses: [{address, prefixlen, family, peer}]}]}};
  ``run --target ID --json -- SCRIPT`` waits, prints {command_id, status,
  invocations: [{node_id, status, exit_code, stdout, stderr}]} and exits 0 if
  every invocation succeeded.
- ``python -m tether.agent register --server URL --activation-id ID
  --activation-code CODE --state-dir S`` prints the node id (``mi-`` + 17 hex)
  and exits 0; ``python -m tether.agent run --state-dir S`` connects and serves.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pppnet import DEVICE_ADDR, OutputWatcher, PppNetwork, clean_env

pytestmark = pytest.mark.netns

PORT = 8400  # the server namespace is fresh, so any port is free there
NODE_ID = re.compile(r"mi-[0-9a-f]{17}")


class Field:
    """The processes of one test run, and their output for failure messages."""

    def __init__(self, net: PppNetwork, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.server_url = f"http://{net.server_addr}:{PORT}"
        self.watchers: dict[str, OutputWatcher] = {}
        self.token = ""

    def logs(self) -> str:
        return "".join(f"\n--- {name} ---\n{w.text()}" for name, w in self.watchers.items())

    def start_server(self) -> None:
        data_dir = self.tmp / "server"
        _, self.watchers["server"] = self.net.spawn(self.net.server_ns, [
            sys.executable, "-m", "tether", "server", "--insecure", "--data-dir", str(data_dir),
            "--host", self.net.server_addr, "--port", str(PORT),
            "--keepalive-interval", "2", "--keepalive-timeout", "2"], env=clean_env())
        self.watchers["server"].wait_for(f"listening on {self.server_url}", timeout=30)
        token_file = data_dir / "admin-token"
        assert token_file.is_file(), f"no admin token after start{self.logs()}"
        self.token = token_file.read_text().strip()

    def cli(self, *args: str) -> Any:
        """The operator CLI in the server namespace; its --json output, parsed."""
        result = self.net.run(self.net.server_ns, [sys.executable, "-m", "tether.cli", *args],
                              env=clean_env(TETHER_SERVER=self.server_url,
                                            TETHER_TOKEN=self.token))
        assert result.returncode == 0, (
            f"tether.cli {args}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            f"{self.logs()}")
        return json.loads(result.stdout)

    def register_and_run_agent(self) -> str:
        """Register through the server's name, as a device would; start the agent."""
        activation = self.cli("activation", "create", "--json")
        state_dir = str(self.tmp / "agent")
        agent = [sys.executable, "-m", "tether.agent"]
        result = self.net.run(self.net.device_ns, [
            *agent, "register", "--insecure", "--server", f"http://{self.net.server_name}:{PORT}",
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"],
            "--state-dir", state_dir], env=clean_env())
        found = NODE_ID.search(result.stdout)
        assert result.returncode == 0 and found, (
            f"register: exit {result.returncode}\n{result.stdout}{result.stderr}{self.logs()}")
        _, self.watchers["agent"] = self.net.spawn(
            self.net.device_ns, [*agent, "run", "--state-dir", state_dir], env=clean_env())
        return found.group(0)

    def wait_online(self, node_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            node: dict[str, Any] = self.cli("nodes", "show", node_id, "--json")
            if node["ping_status"] == "Online" and node["inventory"]:
                return node
            assert time.monotonic() < deadline, f"never Online: {node}{self.logs()}"
            time.sleep(0.5)  # poll interval of a deadline-bound poll, not synchronisation


def test_agent_on_ppp0_registers_reports_and_runs_commands(
        ppp_network: PppNetwork, tmp_path: Path) -> None:
    field = Field(ppp_network, tmp_path)
    field.start_server()
    before = ppp_network.stats()
    node_id = field.register_and_run_agent()
    node = field.wait_online(node_id)

    assert node["node_id"] == node_id
    assert node["primary_address"] == DEVICE_ADDR
    # No NAT between carrier and server: the server sees the device's own address.
    assert node["peer_address"] == DEVICE_ADDR
    interfaces = {i["name"]: i for i in node["inventory"]["interfaces"]}
    assert "ppp0" in interfaces, interfaces
    ppp0 = interfaces["ppp0"]
    assert "pointopoint" in {flag.lower() for flag in ppp0["flags"]}, ppp0
    assert {(a["address"], a["peer"]) for a in ppp0["addresses"]} >= {
        (DEVICE_ADDR, "10.64.0.1")}, ppp0

    result = field.cli("run", "--target", node_id, "--json", "--",
                       "echo hello-from-ppp; uname -n")
    (invocation,) = result["invocations"]
    assert invocation["node_id"] == node_id
    assert invocation["exit_code"] == 0, invocation
    # ip netns exec shares the UTS namespace, so the device's name is this host's.
    assert invocation["stdout"].splitlines() == ["hello-from-ppp", os.uname().nodename]

    after = ppp_network.stats()
    for direction in ("uplink", "downlink"):
        assert after[direction]["bytes"] > before[direction]["bytes"], (before, after)
