"""Every route of the REST API, fuzzed from its own OpenAPI document (schemathesis).

A bounded number of generated requests per operation, as the admin (so requests
get past authentication and reach the route's own code): no answer may be a
5xx, and every answer must match what the document says about it. The
operations are walked in one test (schemathesis's pytest plugin does not load
on this pytest), each failure kept with its operation and reproduction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from harness import Server

EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(Path(tmp_path_factory.mktemp("fuzz")) / "data").start()
    yield srv
    srv.stop()


def test_every_route_answers_within_its_document(fuzzed_server: Server) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {fuzzed_server.token}"}
    failures: dict[str, str] = {}
    operations = calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            if case.query and "wait" in case.query:  # a long poll may rightly take 60 s
                case.query["wait"] = 0
            case.call_and_validate(headers=headers)

        try:
            fuzz()
        except BaseException as exc:  # schemathesis raises a group: report each operation
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures[operation.label] = str(exc)[:2000]
    assert operations >= 20 and calls >= 3 * operations, (operations, calls)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
