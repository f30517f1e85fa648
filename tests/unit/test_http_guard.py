"""HTTP connection phases, deadlines and the per-address cap on request heads, sans I/O."""

from __future__ import annotations

import json

import h11
import pytest

from tether.server.http_guard import (
    TRANSITIONS,
    HttpGuard,
    HttpLimits,
    Phase,
    Watch,
    malformed_response,
    raw_error,
)

LIMITS = HttpLimits(header_timeout=10.0, body_timeout=30.0, heads_per_address=2)


def guard(exempt: frozenset[str] = frozenset()) -> HttpGuard:
    return HttpGuard(LIMITS, exempt=lambda host: host in exempt)


def test_the_whole_head_must_arrive_within_the_header_timeout() -> None:
    w = guard().watch("10.0.0.1")
    assert w.move(Phase.HEAD, 100.0) and w.deadline == 110.0
    assert w.move(Phase.HEAD, 105.0) and w.deadline == 110.0  # more header lines: same deadline
    assert not w.expired(109.9) and w.expired(110.0)


def test_the_body_gets_its_own_deadline_and_handling_none() -> None:
    w = guard().watch("10.0.0.1")
    w.move(Phase.HEAD, 0.0)
    w.move(Phase.BODY, 2.0)
    assert w.deadline == 32.0
    w.move(Phase.HANDLING, 5.0)
    assert w.deadline is None and not w.expired(1e9)
    w.move(Phase.IDLE, 6.0)
    assert w.deadline is None  # uvicorn's keep-alive timeout closes idle connections
    w.move(Phase.HEAD, 7.0)  # the next request's first byte: a new head deadline
    assert w.deadline == 17.0


def test_heads_per_address_are_capped_and_released() -> None:
    g = guard()
    a, b, c = (g.watch("10.0.0.1") for _ in range(3))
    assert a.move(Phase.HEAD, 0) and b.move(Phase.HEAD, 0)
    assert not c.move(Phase.HEAD, 0) and c.phase is Phase.NEW  # over the cap: close it
    assert g.watch("10.0.0.2").move(Phase.HEAD, 0)  # another address is not affected
    a.move(Phase.HANDLING, 1)  # its head is whole: room for one more
    assert g.watch("10.0.0.1").move(Phase.HEAD, 1)
    b.move(Phase.CLOSED, 2)
    c.move(Phase.CLOSED, 2)  # never counted: releases nothing
    assert g.heads["10.0.0.1"] == 1


def test_a_kept_alive_connection_starting_its_next_head_is_capped_too() -> None:
    g = guard()
    w = g.watch("10.0.0.1")
    w.move(Phase.HEAD, 0)
    w.move(Phase.HANDLING, 0)
    w.move(Phase.IDLE, 0)
    g.watch("10.0.0.1").move(Phase.HEAD, 0)
    g.watch("10.0.0.1").move(Phase.HEAD, 0)
    assert not w.move(Phase.HEAD, 1)


def test_one_ipv6_prefix_is_one_address() -> None:
    g = guard()
    assert g.watch("2001:db8::1").move(Phase.HEAD, 0)
    assert g.watch("2001:db8::2").move(Phase.HEAD, 0)
    assert not g.watch("2001:db8::ffff:1").move(Phase.HEAD, 0)
    assert g.watch("2001:db8:0:1::1").move(Phase.HEAD, 0)  # another /64


def test_trusted_proxies_are_not_capped() -> None:
    g = guard(exempt=frozenset({"10.0.0.9"}))
    watches = [g.watch("10.0.0.9") for _ in range(10)]
    assert all(w.move(Phase.HEAD, 0) for w in watches)
    assert all(w.deadline == 10.0 for w in watches)  # but they have deadlines
    for w in watches:
        w.move(Phase.CLOSED, 1)
    assert g.heads["10.0.0.9"] == 0


@pytest.mark.parametrize("start", list(Phase))
def test_illegal_transitions_fail_loudly(start: Phase) -> None:
    for target in Phase:
        if target is start or target in TRANSITIONS[start]:
            continue
        w = Watch(guard(), "10.0.0.1")
        w.phase = start
        with pytest.raises(RuntimeError):
            w.move(target, 0)


def test_closed_is_final_and_every_phase_can_close() -> None:
    assert TRANSITIONS[Phase.CLOSED] == frozenset()
    assert all(Phase.CLOSED in TRANSITIONS[p] for p in Phase if p is not Phase.CLOSED)


def parse(answer: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_an_answer_below_the_application_is_an_error_body_that_closes() -> None:
    status, headers, body = parse(raw_error(408, "too slow"))
    assert (status, headers["content-type"], headers["connection"]) == (
        408, "application/json", "close")
    assert body == {"error": "request_timeout", "message": "too slow"}


@pytest.mark.parametrize(("error", "status", "code"), [
    (h11.RemoteProtocolError("illegal request line: b'\\x1b[2J'"), 400, "bad_request"),
    (h11.RemoteProtocolError("Receive buffer too long", error_status_hint=431), 431,
     "head_too_large"),
    (h11.RemoteProtocolError("Transfer-Encoding: gzip", error_status_hint=501), 400,
     "bad_request"),
    (None, 400, "bad_request"),
])
def test_bytes_that_are_not_http_are_answered_without_h11s_words(
        error: h11.RemoteProtocolError | None, status: int, code: str) -> None:
    answer = malformed_response(error)
    assert parse(answer)[0] == status and parse(answer)[2]["error"] == code
    assert b"illegal" not in answer and b"gzip" not in answer  # h11 may quote the request
