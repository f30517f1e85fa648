"""Finding and stopping the script group a killed agent left behind, and nothing else.

Why: the restarted agent reports the interrupted invocation Failed; a script
still running behind that report would make it a lie. But pids are reused, so
the mark must never lead the agent to signal a process that is not the script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.runner import ProcessMark, mark_of, start_ticks_of, stop_leftover


def test_start_time_is_read_after_the_last_parenthesis() -> None:
    # The command name may contain ") " itself; field 22 is counted from the end of it.
    fields = ["S", "1", "2", "3"] + [str(n) for n in range(7, 22)] + ["424242", "0"]
    assert start_ticks_of("77 (evil) 1 2 (x) " + " ".join(fields)) == 424242


def test_a_mark_survives_a_round_trip_through_the_folder(tmp_path: Path) -> None:
    mark = mark_of(os.getpid())
    assert mark is not None and mark.pgid == os.getpid() and mark.boot_id
    mark.save(tmp_path)
    assert ProcessMark.load(tmp_path) == mark
    assert oct((tmp_path / "process.json").stat().st_mode & 0o777) == "0o600"
    assert ProcessMark.load(tmp_path / "missing") is None


ORPHAN = ("import subprocess as s; p = s.Popen(['/bin/sh', '-c', 'sleep 60 & wait'], "
          "start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL); print(p.pid)")


@pytest.fixture
def group() -> Iterator[int]:
    """A script-like group, orphaned as a killed agent leaves it: a shell leader with a
    child, in a session of its own, whose parent has exited (so nothing here reaps it)."""
    pgid = int(subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True,
                              text=True, check=True).stdout)
    deadline = time.monotonic() + 10
    while len(running_members(pgid)) < 2:  # the shell has yet to start its child
        assert time.monotonic() < deadline, "the orphaned group never started"
        time.sleep(0.01)
    yield pgid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def running_members(pgid: int) -> list[int]:
    """Pids in the group that still run (zombies waiting for a reaper do not)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        state, _, group = text[text.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state not in "ZX":
            found.append(int(stat.parent.name))
    return found


def test_the_marked_group_is_stopped_whole(group: int) -> None:
    mark = mark_of(group)
    assert mark is not None
    assert asyncio.run(stop_leftover(mark)) is True
    assert running_members(group) == []  # the backgrounded sleep too


def test_a_process_that_only_shares_the_number_is_left_alone(group: int) -> None:
    mark = mark_of(group)
    assert mark is not None
    for other in (ProcessMark(mark.pgid, mark.start_ticks + 1, mark.boot_id),
                  ProcessMark(mark.pgid, mark.start_ticks, "another-boot")):
        assert asyncio.run(stop_leftover(other)) is False
    assert len(running_members(group)) == 2 and mark_of(group) == mark
