"""Inventory: parsers on captured text, discovery on this machine's real interfaces."""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

import tether
from tether.agent.inventory import (
    collect_inventory,
    interfaces_from_ioctl,
    interfaces_from_ip,
    inventory_fingerprint,
    list_interfaces,
    parse_if_inet6,
    parse_ip_json,
    parse_os_release,
)
from tether.protocol.messages import (
    AGENT_MESSAGES,
    Address,
    Interface,
    Inventory,
    decode,
    encode,
)

# `ip -j address show` (iproute2 6.1) on a Raspberry Pi with a dialled-up PPP
# link and a modem whose wwan0 is not connected yet. ppp0 shows iproute2's
# point-to-point form: "local" is our address, "address" the peer.
IP_JSON = """[
{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,
 "qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,
 "link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00",
 "addr_info":[
  {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet6","local":"::1","prefixlen":128,"scope":"host",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,
 "qdisc":"mq","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether",
 "address":"dc:a6:32:01:02:03","broadcast":"ff:ff:ff:ff:ff:ff",
 "addr_info":[
  {"family":"inet","local":"192.168.10.23","prefixlen":24,"broadcast":"192.168.10.255",
   "scope":"global","dynamic":true,"noprefixroute":true,"label":"eth0",
   "valid_life_time":85732,"preferred_life_time":74932},
  {"family":"inet6","local":"fd12:3456:789a:1::23","prefixlen":64,"scope":"global",
   "dynamic":true,"mngtmpaddr":true,"valid_life_time":86357,"preferred_life_time":14357},
  {"family":"inet6","local":"fe80::dea6:32ff:fe01:203","prefixlen":64,"scope":"link",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":3,"ifname":"wwan0","flags":["POINTOPOINT","NOARP"],"mtu":1500,"qdisc":"noop",
 "operstate":"DOWN","group":"default","txqlen":1000,"link_type":"none","addr_info":[]},
{"ifindex":7,"ifname":"ppp0","flags":["POINTOPOINT","MULTICAST","NOARP","UP","LOWER_UP"],
 "mtu":1500,"qdisc":"fq_codel","operstate":"UNKNOWN","group":"default","txqlen":3,
 "link_type":"ppp",
 "addr_info":[
  {"family":"inet","local":"10.64.64.64","address":"10.112.112.112","prefixlen":32,
   "scope":"global","label":"ppp0","valid_life_time":4294967295,
   "preferred_life_time":4294967295},
  {"family":"inet6","local":"fe80::1c2d:3e4f:5a6b:7c8d","address":"fe80::a1b2:c3d4:e5f6:1",
   "prefixlen":128,"scope":"link","valid_life_time":4294967295,
   "preferred_life_time":4294967295}]}
]"""

IF_INET6 = """\
fd1234567890a0010000000000000023 02 40 00 00     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000dea632fffe010203 02 40 20 80     eth0
fe800000000000001c2d3e4f5a6b7c8d 07 80 20 80     ppp0
not a line
"""

CORE_FLAGS = {"up", "loopback", "pointopoint", "running", "broadcast", "multicast", "noarp",
              "lower_up"}


def by_name(interfaces: list[Interface]) -> dict[str, Interface]:
    return {iface.name: iface for iface in interfaces}


def ipv4(iface: Interface) -> list[tuple[str, int, Optional[str]]]:
    return [(a.address, a.prefixlen, a.peer) for a in iface.addresses if a.family == "inet"]


# --- parse_ip_json ----------------------------------------------------------


def test_parse_ip_json_keeps_every_interface_in_order() -> None:
    assert [i.name for i in parse_ip_json(IP_JSON)] == ["lo", "eth0", "wwan0", "ppp0"]


def test_parse_ip_json_loopback_and_ethernet() -> None:
    ifaces = by_name(parse_ip_json(IP_JSON))
    assert ifaces["lo"] == Interface(
        name="lo",
        flags=["up", "loopback", "running", "lower_up"],
        addresses=[Address("127.0.0.1", 8, "inet"), Address("::1", 128, "inet6")],
    )
    assert ifaces["eth0"] == Interface(
        name="eth0",
        flags=["up", "broadcast", "running", "multicast", "lower_up"],
        addresses=[
            Address("192.168.10.23", 24, "inet"),
            Address("fd12:3456:789a:1::23", 64, "inet6"),
            Address("fe80::dea6:32ff:fe01:203", 64, "inet6"),
        ],
    )


def test_parse_ip_json_point_to_point_takes_local_as_ours_and_address_as_peer() -> None:
    ppp0 = by_name(parse_ip_json(IP_JSON))["ppp0"]
    assert ppp0.flags == ["up", "pointopoint", "running", "noarp", "multicast", "lower_up"]
    assert ppp0.addresses == [
        Address("10.64.64.64", 32, "inet", peer="10.112.112.112"),
        Address("fe80::1c2d:3e4f:5a6b:7c8d", 128, "inet6", peer="fe80::a1b2:c3d4:e5f6:1"),
    ]


def test_parse_ip_json_keeps_a_down_interface_without_addresses() -> None:
    wwan0 = by_name(parse_ip_json(IP_JSON))["wwan0"]
    assert wwan0 == Interface(name="wwan0", flags=["pointopoint", "noarp"], addresses=[])


def test_parse_ip_json_peer_equal_to_local_is_no_peer() -> None:
    text = """[{"ifname":"tun0","flags":["POINTOPOINT","UP"],"operstate":"UNKNOWN",
      "addr_info":[{"family":"inet","local":"10.8.0.6","address":"10.8.0.6","prefixlen":24}]}]"""
    assert parse_ip_json(text)[0].addresses == [Address("10.8.0.6", 24, "inet")]


def test_parse_ip_json_skips_what_it_cannot_use() -> None:
    # Older iproute2 writes empty objects into addr_info; other families and
    # entries without a name are not interfaces or addresses we report.
    text = """[{"ifname":"eth1","flags":["BROADCAST","NO-CARRIER","UP"],"operstate":"DOWN",
      "addr_info":[{}, {"family":"link"}, {"family":"inet","local":"10.0.0.1","prefixlen":8}]},
      {"ifindex":9}, "junk"]"""
    (eth1,) = parse_ip_json(text)
    assert eth1 == Interface(
        name="eth1", flags=["up", "broadcast", "no-carrier"],
        addresses=[Address("10.0.0.1", 8, "inet")])


@pytest.mark.parametrize("text", ["", "Option \"-j\" is unknown", "{}", "[1,"])
def test_parse_ip_json_rejects_what_is_not_iproute2_json(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip_json(text)


# --- parse_if_inet6 ---------------------------------------------------------


def test_parse_if_inet6() -> None:
    assert parse_if_inet6(IF_INET6) == {
        "eth0": [
            Address("fd12:3456:7890:a001::23", 64, "inet6"),
            Address("fe80::dea6:32ff:fe01:203", 64, "inet6"),
        ],
        "lo": [Address("::1", 128, "inet6")],
        "ppp0": [Address("fe80::1c2d:3e4f:5a6b:7c8d", 128, "inet6")],
    }


def test_parse_if_inet6_empty() -> None:
    assert parse_if_inet6("") == {}


# --- os-release -------------------------------------------------------------

OS_RELEASE = """\
PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"
NAME="Raspbian GNU/Linux"
VERSION_ID="11"
VERSION='11 (bullseye)'
# a comment
ID=raspbian
ID_LIKE=debian
HOME_URL="http://www.raspbian.org/"
QUOTED="say \\"hi\\""
BROKEN="unbalanced

"""


def test_parse_os_release_unquotes_like_a_shell() -> None:
    release = parse_os_release(OS_RELEASE)
    assert release["PRETTY_NAME"] == "Raspbian GNU/Linux 11 (bullseye)"
    assert release["NAME"] == "Raspbian GNU/Linux"
    assert release["VERSION_ID"] == "11"
    assert release["VERSION"] == "11 (bullseye)"
    assert release["ID"] == "raspbian"
    assert release["HOME_URL"] == "http://www.raspbian.org/"
    assert release["QUOTED"] == 'say "hi"'
    assert release["BROKEN"] == '"unbalanced'
    assert "# a comment" not in release


def test_collect_inventory_from_os_release_file(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text(OS_RELEASE, encoding="utf-8")
    inv = collect_inventory("192.0.2.2", os_release_paths=[str(path)])
    assert inv.computer_name == socket.gethostname()
    assert (inv.os_name, inv.os_version) == ("Raspbian GNU/Linux", "11")
    assert inv.kernel == platform.release()
    assert inv.arch == platform.machine()
    assert inv.agent_version == tether.__version__
    assert inv.python_version == platform.python_version()
    assert inv.primary_address == "192.0.2.2"
    assert "lo" in by_name(inv.interfaces)
    # It is a valid protocol message: it survives the wire unchanged.
    assert decode(encode(inv), AGENT_MESSAGES) == inv


def test_collect_inventory_falls_back_to_pretty_name_then_unknown(tmp_path: Path) -> None:
    pretty_only = tmp_path / "pretty"
    pretty_only.write_text('PRETTY_NAME="Debian GNU/Linux trixie/sid"\n', encoding="utf-8")
    missing = tmp_path / "missing"
    inv = collect_inventory(None, os_release_paths=[str(missing), str(pretty_only)])
    assert (inv.os_name, inv.os_version) == ("Debian GNU/Linux trixie/sid", "unknown")
    assert inv.primary_address is None
    inv = collect_inventory(None, os_release_paths=[str(missing)])
    assert (inv.os_name, inv.os_version) == ("unknown", "unknown")


# --- fingerprint ------------------------------------------------------------


def sample_inventory(interfaces: Optional[list[Interface]] = None) -> Inventory:
    return Inventory(
        computer_name="pi-17", os_name="Raspbian GNU/Linux", os_version="11",
        kernel="6.1.21-v8+", arch="aarch64", agent_version="0.1.0", python_version="3.9.2",
        interfaces=parse_ip_json(IP_JSON) if interfaces is None else interfaces,
        primary_address="10.64.64.64",
    )


def redial(inv: Inventory, new_address: str) -> Inventory:
    """The same inventory after ppp0 came back with another address."""
    interfaces = []
    for iface in inv.interfaces:
        if iface.name == "ppp0":
            addresses = [dataclasses.replace(a, address=new_address) if a.family == "inet"
                         else a for a in iface.addresses]
            iface = dataclasses.replace(iface, addresses=addresses)
        interfaces.append(iface)
    return dataclasses.replace(inv, interfaces=interfaces)


def test_fingerprint_is_stable_for_the_same_inventory() -> None:
    assert inventory_fingerprint(sample_inventory()) == inventory_fingerprint(sample_inventory())


def test_fingerprint_ignores_order() -> None:
    inv = sample_inventory()
    shuffled = [dataclasses.replace(i, flags=i.flags[::-1], addresses=i.addresses[::-1])
                for i in reversed(inv.interfaces)]
    assert inventory_fingerprint(sample_inventory(shuffled)) == inventory_fingerprint(inv)


def test_fingerprint_changes_when_an_address_changes() -> None:
    inv = sample_inventory()
    assert inventory_fingerprint(redial(inv, "10.64.64.65")) != inventory_fingerprint(inv)
    assert inventory_fingerprint(redial(inv, "10.64.64.64")) == inventory_fingerprint(inv)


@pytest.mark.parametrize(
    "change",
    [
        {"primary_address": "192.168.10.23"},
        {"primary_address": None},
        {"os_version": "12"},
        {"agent_version": "0.2.0"},
    ],
)
def test_fingerprint_changes_with_any_field(change: dict[str, Optional[str]]) -> None:
    inv = sample_inventory()
    changed = dataclasses.replace(inv, **change)  # type: ignore[arg-type]
    assert inventory_fingerprint(changed) != inventory_fingerprint(inv)


def test_fingerprint_changes_when_an_interface_goes_down() -> None:
    inv = sample_inventory()
    down = [dataclasses.replace(i, flags=["pointopoint", "noarp"]) if i.name == "ppp0" else i
            for i in inv.interfaces]
    assert inventory_fingerprint(sample_inventory(down)) != inventory_fingerprint(inv)


# --- discovery on this machine ----------------------------------------------


def test_list_interfaces_finds_loopback() -> None:
    lo = by_name(list_interfaces())["lo"]
    assert "loopback" in lo.flags
    assert "up" in lo.flags
    assert ("127.0.0.1", 8, None) in ipv4(lo)


def test_interfaces_from_ip_is_none_when_ip_is_missing_or_fails() -> None:
    assert interfaces_from_ip(command=["/nonexistent/ip", "-j", "address", "show"]) is None
    assert interfaces_from_ip(command=["ip", "-j", "address", "show", "dev", "nosuchdev9"]) is None
    assert interfaces_from_ip(command=["ip", "address", "show"]) is None  # not JSON


def test_interfaces_from_ioctl_reads_ipv6_from_given_file(tmp_path: Path) -> None:
    fake = tmp_path / "if_inet6"
    fake.write_text("fd990000000000000000000000000042 01 70 00 80       lo\n", encoding="ascii")
    lo = by_name(interfaces_from_ioctl(if_inet6_path=str(fake)))["lo"]
    assert [a for a in lo.addresses if a.family == "inet6"] == [
        Address("fd99::42", 112, "inet6")]
    missing = by_name(interfaces_from_ioctl(if_inet6_path=str(tmp_path / "none")))["lo"]
    assert [a.family for a in missing.addresses] == ["inet"]


def stable_snapshots(
    read_other: Callable[[], list[Interface]],
) -> tuple[list[Interface], list[Interface]]:
    """An ip snapshot and another taken between two identical ip snapshots.

    Other tests may add or remove interfaces while this runs; retrying until
    ip sees the same thing before and after keeps the comparison fair.
    """
    for _ in range(10):
        before = interfaces_from_ip()
        other = read_other()
        after = interfaces_from_ip()
        assert before is not None, "ip -j address show must work on the test machine"
        if before == after:
            return before, other
    pytest.fail("interfaces kept changing during the comparison")


def test_ioctl_fallback_agrees_with_ip_on_this_machine() -> None:
    from_ip, from_ioctl = stable_snapshots(interfaces_from_ioctl)
    assert [i.name for i in from_ioctl] == [i.name for i in from_ip]
    ip_by_name = by_name(from_ip)
    for iface in from_ioctl:
        ours = ip_by_name[iface.name]
        # SIOCGIFADDR sees one IPv4 address per interface: the first one.
        assert ipv4(iface) == ipv4(ours)[:1], iface.name
        assert set(iface.flags) & CORE_FLAGS == set(ours.flags) & CORE_FLAGS, iface.name
        v6 = [a.address for a in iface.addresses if a.family == "inet6"]
        assert sorted(v6) == sorted(a.address for a in ours.addresses if a.family == "inet6")


# --- a real point-to-point device -------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def make_tun() -> Iterator[Callable[..., str]]:
    """Create tun devices (root only), removed after the test whatever happens."""
    created: list[str] = []

    def make(name: str, local: Optional[str] = None, peer: Optional[str] = None) -> str:
        if os.geteuid() != 0:
            pytest.skip("creating a tun device needs root")
        _ip("tuntap", "del", "dev", name, "mode", "tun")  # left over from a killed run
        made = _ip("tuntap", "add", "dev", name, "mode", "tun")
        if made.returncode != 0:
            pytest.skip(f"cannot create tun device {name}: {made.stderr.strip()}")
        created.append(name)
        if local is not None:
            add = ["addr", "add", local, *(["peer", peer] if peer else []), "dev", name]
            assert _ip(*add).returncode == 0
        assert _ip("link", "set", name, "up").returncode == 0
        return name

    try:
        yield make
    finally:
        for name in created:
            _ip("tuntap", "del", "dev", name, "mode", "tun")


def test_point_to_point_tun_is_listed_with_its_peer(make_tun: Callable[..., str]) -> None:
    make_tun("tttinv0", "10.99.0.2", "10.99.0.1")
    for discover in (interfaces_from_ip, interfaces_from_ioctl, list_interfaces):
        interfaces = discover()
        assert interfaces is not None, discover.__name__
        tun = by_name(interfaces)["tttinv0"]
        assert {"pointopoint", "up"} <= set(tun.flags), discover.__name__
        assert ipv4(tun) == [("10.99.0.2", 32, "10.99.0.1")], discover.__name__


def test_interface_without_ipv4_is_kept(make_tun: Callable[..., str]) -> None:
    make_tun("tttinv1")
    for discover in (interfaces_from_ip, interfaces_from_ioctl):
        interfaces = discover()
        assert interfaces is not None, discover.__name__
        tun = by_name(interfaces)["tttinv1"]
        assert "pointopoint" in tun.flags, discover.__name__
        assert ipv4(tun) == [], discover.__name__


def test_a_container_host_stays_within_the_limits_and_keeps_its_uplinks() -> None:
    """Issue 12 #12: an honest device with hundreds of interfaces is cut by the agent,
    not the server, and keeps the interfaces that matter (the point-to-point link last
    in the kernel's order included); what it sends the server stores whole."""
    from tether.agent.inventory import within_limits
    from tether.protocol import AGENT_MESSAGES, decode, encode
    from tether.protocol.limits import FIELD_LIMITS, Items

    veths = [Interface(f"veth{i}", ["up", "running"],
                       [Address(f"fe80::{i:x}", 64, "inet6")]) for i in range(300)]
    eth0 = Interface("eth0", ["up"], [Address(f"10.0.{i // 250}.{i % 250}", 16, "inet")
                                      for i in range(100)] + [Address("fe80::1", 64, "inet6")])
    wwan0 = Interface("wwan0", ["up", "pointopoint"], [Address("10.64.0.2", 32, "inet",
                                                               "10.64.0.1")])
    big = Inventory("h" * 300, "os", "1", "k", "x86_64", "1.0", "3.11", [*veths, eth0, wwan0])
    small = within_limits(big)
    caps = FIELD_LIMITS["Inventory"]["interfaces"], FIELD_LIMITS["Interface"]["addresses"]
    assert isinstance(caps[0], Items) and isinstance(caps[1], Items)
    assert len(small.interfaces) == caps[0].max_items
    assert [i.name for i in small.interfaces[:2]] == ["wwan0", "eth0"]
    assert len(small.interfaces[1].addresses) == caps[1].max_items
    assert len(small.computer_name) == 255
    assert decode(encode(small), AGENT_MESSAGES) == small  # nothing left for the server to cut
    ordinary = Inventory("h", "os", "1", "k", "x86_64", "1.0", "3.11", [wwan0, *veths[:3]])
    assert within_limits(ordinary) is ordinary
