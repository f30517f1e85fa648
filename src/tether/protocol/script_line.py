"""What ran, in one line: a script's first line worth reading, for tables of commands.

Why: a table of commands showed an id, a status and a comment (often none), so nobody
could tell what ran. The server sends this line with every command summary (the
console's tables and ``tether commands list`` show it), so each client does not cut
scripts its own way. A ``#!`` line and blank lines say nothing and are skipped.
"""

from __future__ import annotations

WIDTH = 120  # characters of the line kept; longer ones end in ELLIPSIS
ELLIPSIS = "…"


def script_line(script: str, width: int = WIDTH) -> str:
    """The first line that is not blank or a ``#!`` line, stripped and cut to ``width``
    characters (the last an ellipsis when cut); ``" …"`` follows when more lines do."""
    lines = [line.strip() for line in script.splitlines()]
    shown = [i for i, line in enumerate(lines) if line and not line.startswith("#!")]
    if not shown:
        return ""
    line = lines[shown[0]]
    if len(line) > width:
        return line[:width - 1] + ELLIPSIS
    more = any(lines[shown[0] + 1:])
    return f"{line} {ELLIPSIS}" if more else line
