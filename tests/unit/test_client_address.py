"""Who the client is, with and without trusted proxies (access/client_address.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.server.access.client_address import (
    TrustedProxies,
    client_address,
    limit_key,
    parse_proxies,
)

PROXY = parse_proxies(["10.0.0.0/24", "fd00::1"])


def test_no_proxy_is_trusted_by_default_not_even_loopback() -> None:
    assert client_address("127.0.0.1", ["203.0.113.7"], ()) == "127.0.0.1"
    assert client_address("::1", ["203.0.113.7"], ()) == "::1"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    assert client_address("198.51.100.1", ["203.0.113.7"], PROXY) == "198.51.100.1"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # The client forged "1.2.3.4"; the proxy appended what it saw.
    assert client_address("10.0.0.5", ["1.2.3.4, 203.0.113.7"], PROXY) == "203.0.113.7"
    # Two proxies of ours: skip both.
    assert client_address("10.0.0.5", ["1.2.3.4", "203.0.113.7, 10.0.0.6"],
                          PROXY) == "203.0.113.7"
    assert client_address("fd00::1", ["[2001:db8::5]:4711"], PROXY) == "2001:db8::5"
    assert client_address("10.0.0.5", ["203.0.113.7:555"], PROXY) == "203.0.113.7"


def test_garbage_stops_at_the_last_trusted_hop() -> None:
    assert client_address("10.0.0.5", ["\x1b[2J"], PROXY) == "10.0.0.5"
    assert client_address("10.0.0.5", ["evil, 10.0.0.6"], PROXY) == "10.0.0.6"
    assert client_address("10.0.0.5", ["1.2.3.4" + ", 1.2.3.4" * 1000], PROXY) == "10.0.0.5"
    assert client_address("10.0.0.5", [], PROXY) == "10.0.0.5"
    assert client_address("10.0.0.5", ["10.0.0.7"], PROXY) == "10.0.0.7"  # all ours


@given(st.lists(st.text(max_size=60), max_size=5))
def test_the_answer_is_always_an_address_or_the_peer(values: list[str]) -> None:
    got = client_address("10.0.0.5", values, PROXY)
    assert got is not None
    ipaddress.ip_address(got)  # never the client's text


def test_bad_proxy_flags_are_named() -> None:
    with pytest.raises(ValueError, match="--trusted-proxy 'nope'"):
        parse_proxies(["nope"])


def test_limits_count_ipv6_by_prefix() -> None:
    assert limit_key("2001:db8::1") == limit_key("2001:db8::ffff") == "2001:db8::/64"
    assert limit_key("203.0.113.7") == "203.0.113.7"
    assert limit_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert limit_key("unknown") == "unknown"


def test_the_scope_is_rewritten_only_for_a_trusted_peer() -> None:
    trust = TrustedProxies(PROXY)
    headers = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
    scope = {"type": "http", "client": ("10.0.0.5", 1), "scheme": "http", "headers": headers}
    out = trust.rewrite(scope)
    assert out["client"] == ("203.0.113.7", 0) and out["scheme"] == "https"
    assert scope["client"] == ("10.0.0.5", 1)  # a copy
    ws = trust.rewrite({**scope, "type": "websocket", "scheme": "ws"})
    assert ws["scheme"] == "wss"
    other = {**scope, "client": ("198.51.100.1", 1)}
    assert trust.rewrite(other) is other
