"""Registration limits cannot be aimed at someone else's activation (issue 12 #13).

Real server, real requests from several loopback source addresses (127.0.0.2, ...):
a forged X-Forwarded-For changes nothing unless the peer is a configured proxy
(127.0.0.9 here), many addresses guessing one activation do not stop its device,
and a right code refused (limit reached) is not a failed guess.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness import Server

PROXY = "127.0.0.9"
PER_ADDRESS, PER_ACTIVATION = 10, 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("registration-throttle") / "data", relaxed=False,
                 extra=["--trusted-proxy", PROXY, "--failed-tokens-per-address", "10000"]
                 ).start()
    yield srv
    srv.stop()


def register(server: Server, activation_id: str, code: str, source: str = "127.0.0.1",
             forwarded_for: str | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30,
                                      source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        conn.request("POST", "/api/v1/registrations", headers=headers, body=json.dumps(
            {"activation_id": activation_id, "activation_code": code}))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_forged_forwarded_for_from_loopback_changes_nothing(server: Server) -> None:
    """The review's reproduction: wrong codes under changing forged addresses."""
    activation_id, code = server.activation("--limit", "5")
    statuses = [register(server, activation_id, "tac_wrong", source="127.0.0.2",
                         forwarded_for=f"198.51.100.{i}")[0] for i in range(31)]
    assert statuses == [403] * PER_ADDRESS + [429] * (31 - PER_ADDRESS)
    # The address is throttled, the activation is not: the device registers.
    assert register(server, activation_id, code)[0] == 201


def test_an_activation_guessed_from_many_addresses_still_takes_its_code(
        server: Server) -> None:
    activation_id, code = server.activation("--limit", "5")
    attackers = [f"127.0.1.{i}" for i in range(1, 5)]
    statuses = [[register(server, activation_id, "tac_wrong", source=source)[0]
                 for _ in range(PER_ADDRESS)] for source in attackers]
    # Three addresses spend their budgets: 30 misses, the activation is under attack;
    # from then on a fourth address gets one try.
    assert statuses == [[403] * PER_ADDRESS] * 3 + [[403] + [429] * (PER_ADDRESS - 1)]
    # An address that missed it is refused before its code is checked, right or not...
    status, body = register(server, activation_id, code, source=attackers[0])
    assert (status, body["error"]) == (429, "too_many_failed_registrations")
    # ...and one that has not, with the right code, registers.
    assert register(server, activation_id, code, source="127.0.1.99")[0] == 201
    # A wrong code from a fresh address: its one try this minute.
    assert register(server, activation_id, "tac_wrong", source="127.0.1.98")[0] == 403
    assert register(server, activation_id, "tac_wrong", source="127.0.1.98")[0] == 429


def test_a_trusted_proxy_names_the_client_right_most_untrusted_hop(server: Server) -> None:
    activation_id, code = server.activation("--limit", "5")
    for i in range(PER_ADDRESS):  # forged left part changes; the proxy saw 198.51.100.7
        status, _ = register(server, activation_id, "tac_wrong", source=PROXY,
                             forwarded_for=f"10.9.9.{i}, 198.51.100.7")
        assert status == 403
    assert register(server, activation_id, "tac_wrong", source=PROXY,
                    forwarded_for="198.51.100.7")[0] == 429
    # Another client behind the same proxy has its own budget.
    assert register(server, activation_id, code, source=PROXY,
                    forwarded_for="198.51.100.8")[0] == 201


def test_a_right_code_past_the_registration_limit_is_no_failed_guess(server: Server) -> None:
    activation_id, code = server.activation("--limit", "1")
    assert register(server, activation_id, code, source="127.0.2.1")[0] == 201
    for _ in range(PER_ADDRESS * 2):
        status, body = register(server, activation_id, code, source="127.0.2.1")
        assert (status, body["error"]) == (403, "registration_limit_reached")
