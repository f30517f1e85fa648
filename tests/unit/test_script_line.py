"""The one line a table of commands shows for a script (protocol/script_line.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.script_line import ELLIPSIS, WIDTH, script_line


def test_the_first_line_worth_reading_and_a_mark_when_more_follow() -> None:
    assert script_line("uptime") == "uptime"
    assert script_line("#!/bin/sh\n\n  apt-get update  \n") == "apt-get update"
    assert script_line("#!/bin/sh\nset -e\napt-get update\n") == f"set -e {ELLIPSIS}"
    assert script_line("#!/bin/sh\n\n") == ""
    assert script_line("x" * (WIDTH + 5)) == "x" * (WIDTH - 1) + ELLIPSIS


@given(st.text())
def test_always_one_bounded_line(script: str) -> None:
    line = script_line(script)
    assert len(line) <= WIDTH + 2
    assert len(line.splitlines()) <= 1
