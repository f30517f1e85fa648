"""How the CLI prints: aligned tables for people, JSON for scripts, a device's bytes as bytes.

This module is the only one in ``tether.cli`` that writes to standard output
or standard error (``tests/unit/test_cli_printers.py`` checks it), so that
every line for people passes through :func:`tether.protocol.terminal.visible`:
a computer name, a tag, a failure reason or an audit record cannot clear the
screen, hide the rows above, write the clipboard or reorder text with a bidi
override. The ways out:

- :func:`out`, :func:`fail`, :func:`table`, :func:`emit`: text for people,
  every character of it shown visibly (``\\x1b``, ``\\u202e``, ``\\\\``).
- :func:`print_json`, :func:`json_line`: exact JSON for scripts (ASCII, with
  controls and non-ASCII as ``\\u`` escapes, so it is safe on a terminal too).
- :func:`device_output`: a command's output, the device's bytes. Exact to a
  pipe or a file, or with ``--raw``; on a terminal, escape sequences are shown,
  not obeyed (:func:`tether.protocol.terminal.visible_output`).
- :func:`recording`: a shell's recording replayed, which is terminal output by
  nature (as the live shell is): written as it was.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from tether.protocol.terminal import visible, visible_output


def _stream(err: bool) -> TextIO:
    return sys.stderr if err else sys.stdout


def out(line: str = "", *, err: bool = False, flush: bool = False) -> None:
    """One line for people, shown visibly whole: a newline inside it is ``\\n``."""
    stream = _stream(err)
    stream.write(visible(line) + "\n")
    if flush:
        stream.flush()


def fail(message: str) -> None:
    out(f"tether: {message}", err=True)


def emit(as_json: bool, value: Any, line: Callable[[Any], str]) -> None:
    """The answer of a command: JSON for scripts, or one line for people."""
    if as_json:
        print_json(value)
    else:
        out(line(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned on what is shown (escapes included), one row a line."""
    cells = [[visible(str(c)) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [[visible(h) for h in headers], *cells]:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")


def json_line(value: Any) -> None:
    """One compact JSON document on one line (JSON lines, for export)."""
    sys.stdout.write(json.dumps(value, sort_keys=True, ensure_ascii=True) + "\n")


def device_output(data: bytes, *, err: bool = False, raw: bool = False) -> None:
    """A command's stdout (or stderr, ``err``) as the device wrote it.

    Through a pipe or into a file the bytes are unchanged, so ``tether
    commands output ... > file`` is exact. On a terminal they are shown, not
    obeyed, unless ``raw``: the device's ESC cannot drive the operator's
    terminal. Lines, tabs and carriage returns are kept.
    """
    stream = _stream(err)
    stream.flush()
    if not raw and stream.isatty():
        data = visible_output(data)
    # A large write can be short (a pipe whose reader went away takes part of it, and
    # only the next write fails): write until all of it went, or it raises.
    rest = memoryview(data)
    while rest:
        rest = rest[stream.buffer.write(rest):]
    stream.flush()


def closed_pipe() -> int:
    """The reader of our output went away (``tether ... | head``): stop quietly.

    Every command ends here on a BrokenPipeError (``main`` catches it once), so none
    prints ``[Errno 32] Broken pipe``. Standard output is pointed at /dev/null first:
    the interpreter's last flush at exit would otherwise fail again and print
    "Exception ignored". The exit status is that of a process killed by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def recording(text: str) -> None:
    """Part of a shell's recording (or the cast file itself), as it was written."""
    sys.stdout.write(text)
    sys.stdout.flush()
