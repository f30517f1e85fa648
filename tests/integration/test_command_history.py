"""Issue 13, "every day": what ran and where, in ``tether run`` / ``commands list`` /
``commands show``, and finding commands back (``commands list`` filters, paging,
``nodes history``). The CLI runs through its real entry point against a real server;
the store's filters, being SQL, run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Agent, Server


def named_agent(server: Server, state_dir: Path, name: str) -> Agent:
    """An Online agent registered under ``name`` (``tether-agent register --name``)."""
    agent = Agent(server, state_dir)
    act, code = server.activation()
    result = agent.register_raw(act, code, "--name", name)
    assert result.returncode == 0, result.stderr
    found = re.search(r"mi-[0-9a-f]{17}", result.stdout)
    assert found, result.stdout
    agent.node_id = found.group(0)
    return agent.start().connected()


@pytest.fixture
def gw(sqlite_server: Server, tmp_path: Path) -> Iterator[Agent]:
    agent = named_agent(sqlite_server, tmp_path / "gw", "gw-7")
    yield agent
    agent.stop()


def cid_of(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"command (\S+) on \d+ node\(s\)", result.stderr)
    assert found, result.stderr
    return found.group(1)


# -- what ran, and where ------------------------------------------------------------------

def test_list_and_show_say_what_ran_and_run_names_the_node(sqlite_server: Server,
                                                          gw: Agent) -> None:
    script = "#!/bin/sh\n\n  echo first-line\necho second\n"
    ran = sqlite_server.cli_raw("run", "--target", gw.node_id, stdin=script)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"=== {gw.node_id} (gw-7)  Success  exit 0\n"), ran.stdout
    assert f"  {gw.node_id} (gw-7)  Success" in ran.stderr
    cid = cid_of(ran)

    listed = sqlite_server.cli_raw("commands", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[-1] == "SCRIPT"
    (row,) = [r for r in rows if r.startswith(cid)]
    assert row.endswith("echo first-line …"), row

    shown = sqlite_server.cli_raw("commands", "show", cid)
    assert shown.returncode == 0, shown.stderr
    assert "script:   echo first-line …\n" in shown.stdout, shown.stdout
    assert re.search(rf"^{gw.node_id}\s+gw-7\s+Success\s+exit 0\b", shown.stdout, re.M), \
        shown.stdout
    detail = sqlite_server.cli("commands", "show", cid)
    assert detail["invocations"][0]["node_name"] == "gw-7"
