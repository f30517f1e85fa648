"""Tests of the namespace network itself, so product tests can trust it.

Traffic only ever goes to loopback or to the namespaces' own addresses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pppnet import (
    DEVICE_ADDR,
    SERVER_ADDR,
    SERVER_NAME,
    NetnsUnavailable,
    PppNetwork,
    unavailable_reason,
)

pytestmark = pytest.mark.netns

# Echoes each line prefixed with the client's address as the server sees it.
ECHO_SERVER = r"""
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(self.client_address[0].encode() + b" " + line)
socketserver.ThreadingTCPServer.daemon_threads = True
server = socketserver.ThreadingTCPServer((sys.argv[1], 0), Echo)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
"""

# Prints "ok <reply>", "timeout" or "error <errno>": one line, always exit 0.
CLIENT = r"""
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"hello over ppp0\n")
        print("ok", sock.makefile().readline().strip())
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error", exc.errno)
"""


def start_echo(net: PppNetwork) -> int:
    """An echo server on the server address; its port once it is listening."""
    _, out = net.spawn(net.server_ns, [sys.executable, "-c", ECHO_SERVER, SERVER_ADDR])
    return int(out.wait_for("listening", timeout=10).split()[1])


def connect(net: PppNetwork, ns: str, host: str, port: int, timeout: float = 5) -> str:
    result = net.run(ns, [sys.executable, "-c", CLIENT, host, str(port), str(timeout)],
                     timeout=timeout + 10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def ip_json(net: PppNetwork, ns: str, *args: str) -> list[dict]:
    result = net.run(ns, ["ip", "-j", *args])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_device_has_only_lo_and_a_point_to_point_ppp0(ppp_network: PppNetwork) -> None:
    links = {link["ifname"]: link for link in ip_json(ppp_network, ppp_network.device_ns, "link")}
    assert set(links) == {"lo", "ppp0"}
    assert "UP" in links["lo"]["flags"]
    assert {"POINTOPOINT", "NOARP", "UP"} <= set(links["ppp0"]["flags"])
    (ppp0,) = ip_json(ppp_network, ppp_network.device_ns, "addr", "show", "dev", "ppp0")
    assert [(a["family"], a["local"], a.get("address")) for a in ppp0["addr_info"]] == [
        ("inet", DEVICE_ADDR, "10.64.0.1")]


def test_device_routes_only_through_ppp0(ppp_network: PppNetwork) -> None:
    routes = ip_json(ppp_network, ppp_network.device_ns, "route")
    assert {r["dev"] for r in routes} == {"ppp0"}
    assert any(r["dst"] == "default" for r in routes)


def test_every_namespace_has_loopback_up(ppp_network: PppNetwork) -> None:
    for ns in (ppp_network.device_ns, ppp_network.carrier_ns, ppp_network.server_ns):
        (lo,) = ip_json(ppp_network, ns, "link", "show", "dev", "lo")
        assert "UP" in lo["flags"], ns


def test_device_reaches_server_by_name_and_relay_counts(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    before = ppp_network.stats()
    # The server sees the device's own address: the carrier routes, it does not NAT.
    assert connect(ppp_network, ppp_network.device_ns, SERVER_NAME, port) == (
        f"ok {DEVICE_ADDR} hello over ppp0")
    after = ppp_network.stats()
    for direction in ("uplink", "downlink"):
        assert after[direction]["bytes"] > before[direction]["bytes"], (before, after)


def test_cut_drops_everything_and_restore_brings_it_back(ppp_network: PppNetwork) -> None:
    port = start_echo(ppp_network)
    ppp_network.cut()
    assert ppp_network.stats()["cut"] is True
    assert connect(ppp_network, ppp_network.device_ns, SERVER_NAME, port, timeout=1) == "timeout"
    assert ppp_network.stats()["uplink"]["dropped"] > 0
    ppp_network.restore()
    assert connect(ppp_network, ppp_network.device_ns, SERVER_NAME, port).startswith("ok ")


def test_device_cannot_reach_root_namespace_loopback(ppp_network: PppNetwork) -> None:
    with socket.socket() as root_service:
        root_service.bind(("127.0.0.1", 0))
        root_service.listen()
        root_service.setblocking(False)
        port = root_service.getsockname()[1]
        refused = "error 111"  # ECONNREFUSED: the device's own lo has no listener
        assert connect(ppp_network, ppp_network.device_ns, "127.0.0.1", port) == refused
        assert connect(ppp_network, ppp_network.device_ns, "127.0.0.1", 5432) == refused
        with pytest.raises(BlockingIOError):
            root_service.accept()  # nothing arrived in the root namespace


def test_unknown_names_do_not_resolve_on_the_device(ppp_network: PppNetwork) -> None:
    """The device's resolver is its own hosts file; no DNS query leaves the network."""
    result = ppp_network.run(ppp_network.device_ns, ["getent", "hosts", "example.com"])
    assert result.returncode != 0
    resolved = ppp_network.run(ppp_network.device_ns, ["getent", "hosts", SERVER_NAME])
    assert resolved.stdout.split() == [SERVER_ADDR, SERVER_NAME]


def test_teardown_removes_everything() -> None:
    """Namespaces, relay, tun devices and /etc/netns files are all gone after close()."""
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    try:
        net = PppNetwork().__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    relay = net._relay
    net.close()
    assert relay is not None and relay.returncode is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in (net.device_ns, net.carrier_ns, net.server_ns):
        assert ns not in listed
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert not any(tun in root_links for tun in net._tun_names)
    assert not (Path("/etc/netns") / net.device_ns).exists()
