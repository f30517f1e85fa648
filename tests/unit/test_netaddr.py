"""Which addresses stay on this machine (plain HTTP is allowed there without --insecure)."""

from __future__ import annotations

import pytest

from tether.protocol.netaddr import is_loopback_host, is_wildcard_host, plain_http_off_machine


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("10.64.0.1", False), ("server.example", False), ("", False), ("localhost.evil", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("url, off", [
    ("http://127.0.0.1:8720", False), ("http://localhost:8720/", False),
    ("http://[::1]:8720", False), ("https://10.0.0.1:8720", False),
    ("http://10.0.0.1:8720", True), ("http://tether.lan", True)])
def test_plain_http_off_machine(url: str, off: bool) -> None:
    assert plain_http_off_machine(url) is off


@pytest.mark.parametrize("host, wildcard", [
    ("0.0.0.0", True), ("::", True), ("[::]", True), ("::0", True), ("", True),
    ("127.0.0.1", False), ("10.64.0.1", False), ("server.example", False)])
def test_wildcard_hosts(host: str, wildcard: bool) -> None:
    assert is_wildcard_host(host) is wildcard
