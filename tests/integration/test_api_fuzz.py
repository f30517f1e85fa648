"""Every route of the REST API, fuzzed from its own OpenAPI document (schemathesis).

A bounded number of generated requests per operation, as the admin (so requests
get past authentication and reach the route's own code): no answer may be a
5xx, and every answer must match what the document says about it. The
operations are walked in one test (schemathesis's pytest plugin does not load
on this pytest), each failure kept with its operation and reproduction. A second
test runs the schemathesis command line with its coverage, fuzzing and stateful
phases and every check (negative data, wrong methods, missing auth among them).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from harness import Server, clean_env

EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(Path(tmp_path_factory.mktemp("fuzz")) / "data").start()
    yield srv
    srv.stop()


def test_every_route_answers_within_its_document(fuzzed_server: Server) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/api/v1/openapi.json")
    # The document's description says no string holds U+0000 (tests/integration/
    # test_nul_input.py shows the refusal); JSON Schema has no word for it.
    schema.config.generation.update(allow_x00=False)
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


# The schemathesis command line, as the review ran it: each operation's edges (coverage:
# every method a path lacks, OPTIONS among them, boundary values, the longest lists),
# generated requests per operation (fuzzing), then sequences that feed one answer's ids
# into the next call (stateful), every check it has. About 40 s on the CI machine.
CLI_EXAMPLES = 10
CONFIG = """\
[generation]
allow-x00 = false  # no string holds U+0000, as the document says (test_nul_input.py)

[parameters]
"query.wait" = 0   # a long poll may rightly take 60 s

# A body past the size limit is refused 413 before it is read: a rejection too.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429"]
"""


def test_schemathesis_coverage_fuzzing_and_stateful_with_every_check(
        fuzzed_server: Server, tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    argv = [str(Path(sys.executable).with_name("schemathesis")),
            "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run",
            fuzzed_server.url + "/api/v1/openapi.json",
            "--phases", "coverage,fuzzing,stateful", "--checks", "all",
            "--max-examples", str(CLI_EXAMPLES), "--seed", "12",
            "--generation-database", "none", "--workers", "2", "--request-timeout", "30",
            "--output-truncate", "true",
            "-H", f"Authorization: Bearer {fuzzed_server.token}"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env=clean_env())
    report = result.stdout.split("=== WARNINGS ===")[0]  # the failures, before the advice
    assert result.returncode == 0, report[-20_000:] + result.stderr[-5000:]
    assert all(phase in result.stdout for phase in ("Coverage", "Fuzzing", "Stateful"))
