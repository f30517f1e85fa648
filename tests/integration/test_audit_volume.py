"""An unauthenticated client cannot grow the audit log without bound.

Wrong tokens are throttled per client address (429 past
``--failed-tokens-per-address`` in a minute, the default here), and identical
refusals within ``--audit-repeat-window`` are one record, then one more with their
count when the window ends or the server stops. The flood comes from 127.0.0.2
(loopback, a second address), so the admin on 127.0.0.1 is not throttled with it.
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import Server
from tether.server.config import DEFAULT_FAILED_TOKENS_PER_ADDRESS

FLOOD_FROM = "127.0.0.2"
Record = dict[str, Any]


def wrong(i: int) -> str:
    return f"tth_wrong{i % 7}"


def flood(server: Server, n: int, path: str = "/api/v1/nodes",
          token: Callable[[int], str] = wrong) -> Iterator[http.client.HTTPResponse]:
    """``n`` requests (the ``i``th with ``token(i)``, by default a wrong one) over one
    keep-alive connection from FLOOD_FROM."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30,
                                      source_address=(FLOOD_FROM, 0))
    try:
        for i in range(n):
            conn.request("GET", path, headers={"Authorization": f"Bearer {token(i)}"})
            response = conn.getresponse()
            response.read()
            yield response
    finally:
        conn.close()


def flooded(server: Server) -> list[Record]:
    records: list[Record] = server.cli("audit", "list", "--actor", "anonymous",
                                       "--limit", "100000")
    return [r for r in records if r["source"] == FLOOD_FROM]


def test_a_thousand_wrong_tokens_are_a_handful_of_records_that_keep_the_count(
        tmp_path: Path) -> None:
    server = Server(tmp_path / "data", relaxed=False,
                    extra=["--audit-repeat-window", "3600"]).start()
    try:
        statuses = [(r.status, r.getheader("Retry-After")) for r in flood(server, 1000)]
        limit = DEFAULT_FAILED_TOKENS_PER_ADDRESS
        assert [s for s, _ in statuses[:limit]] == [401] * limit
        assert {s for s, _ in statuses[limit:]} == {429}
        assert all(int(after) >= 1 for _, after in statuses[limit:])  # type: ignore[arg-type]
        # Meanwhile: the first of each kind, written at once (the 401s differ only in
        # the wrong token, which no record holds).
        now = flooded(server)
        assert [(r["detail"]["status"], r["detail"]["error"]) for r in now] == [
            (401, "invalid_token"), (429, "too_many_failed_tokens")]
        server.stop()  # the counts still open are written on the way down
        server.start()
        records = flooded(server)
        assert len(records) == 4, records
        first_401, first_429, *counts = records
        by_status = {r["detail"]["status"]: r for r in counts}
        assert by_status[401]["detail"]["repeats"] == limit - 1
        assert by_status[401]["detail"]["repeat_of"] == first_401["seq"]
        assert by_status[429]["detail"]["repeats"] == 1000 - limit - 1
        assert by_status[429]["detail"]["repeat_of"] == first_429["seq"]
        assert 1 + 1 + sum(r["detail"]["repeats"] for r in counts) == 1000
        for r in counts:
            assert r["detail"]["since"] <= r["detail"]["until"]
            assert r["action"] == "GET /api/v1/nodes" and r["outcome"] == "denied"
        verdict = server.cli("audit", "verify")
        assert verdict["ok"], verdict
    finally:
        server.stop()


def test_a_right_token_from_a_throttled_address_is_accepted_at_once(tmp_path: Path) -> None:
    """Whoever shares an address with a guesser (a NAT, a proxy not named with
    --trusted-proxy) is not locked out with it: only wrong tokens are throttled."""
    server = Server(tmp_path / "data", relaxed=False).start()
    try:
        limit = DEFAULT_FAILED_TOKENS_PER_ADDRESS
        statuses = [r.status for r in flood(server, 1000)]
        assert statuses == [401] * limit + [429] * (1000 - limit)
        # The same address, the same connection: right tokens among wrong ones.
        right_every = 10

        def mixed(i: int) -> str:
            return server.token if i % right_every == 0 else wrong(i)

        answers = [r.status for r in flood(server, 100, token=mixed)]
        assert answers[::right_every] == [200] * (100 // right_every)
        assert {s for i, s in enumerate(answers) if i % right_every} == {429}
        # The wrong ones are still counted as refusals (one record and a count): the
        # admin's reads, right, leave none.
        server.stop()
        server.start()
        refused = flooded(server)
        assert {r["detail"]["status"] for r in refused} == {401, 429}
        assert sum(r["detail"].get("repeats", 1) for r in refused) == (
            1000 + 100 - 100 // right_every)
        assert not [r for r in server.cli("audit", "list", "--limit", "100000")
                    if r["source"] == FLOOD_FROM and r["outcome"] != "denied"]
    finally:
        server.stop()


def test_a_count_is_written_when_its_window_ends(tmp_path: Path) -> None:
    window = 1.0
    server = Server(tmp_path / "data", extra=["--audit-repeat-window", str(window)]).start()
    try:
        assert {r.status for r in flood(server, 5)} == {401}
        deadline = time.monotonic() + 30
        while len(records := flooded(server)) < 2:
            assert time.monotonic() < deadline, records
            time.sleep(0.2)  # polling interval of a deadline-bound poll
        first, count = records
        assert "repeats" not in first["detail"]
        assert (count["detail"]["repeats"], count["detail"]["repeat_of"]) == (4, first["seq"])
        assert count["at"] - first["at"] >= window
        assert json.dumps(count).count("tth_") == 0  # no token, right or wrong, is kept
    finally:
        server.stop()


def test_a_sigterm_writes_every_count_and_a_kill_loses_only_the_open_windows(
        tmp_path: Path) -> None:
    """Across restarts the log stays bounded and right. A server stopped with SIGTERM
    writes the counts still open before it exits. One killed with SIGKILL cannot: it
    loses the repeats of the windows still open (at most the last
    --audit-repeat-window seconds' worth), never a first record (written before its
    answer), nor a count whose window had ended. The chain verifies either way."""
    window = 2.0
    server = Server(tmp_path / "data", extra=["--audit-repeat-window", str(window)]).start()
    try:
        assert {r.status for r in flood(server, 5)} == {401}
        deadline = time.monotonic() + 30
        while len(flooded(server)) < 2:  # the first window ended: its count is written
            assert time.monotonic() < deadline
            time.sleep(0.2)  # polling interval of a deadline-bound poll
        assert {r.status for r in flood(server, 7)} == {401}  # a new window: 1 + 6
        server.stop(signal.SIGKILL)
        assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
        server.start()
        first, count, second = flooded(server)
        assert (count["detail"]["repeats"], count["detail"]["repeat_of"]) == (4, first["seq"])
        assert "repeats" not in second["detail"]  # its 6 repeats died with the process
        assert server.cli("audit", "verify")["state"] == "intact"
    finally:
        server.stop()
    # An hour's window now, so only the shutdown can write the count.
    server = Server(tmp_path / "data", extra=["--audit-repeat-window", "3600"]).start()
    try:
        assert {r.status for r in flood(server, 9)} == {401}  # a new process, a new window
        server.stop()  # SIGTERM
        server.start()
        *_, third, third_count = flooded(server)
        assert (third_count["detail"]["repeats"], third_count["detail"]["repeat_of"]) == (
            8, third["seq"])
        assert server.cli("audit", "verify")["state"] == "intact"
    finally:
        server.stop()
