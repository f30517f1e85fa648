"""Text that is safe to show on a terminal: controls and invisible formatting made visible.

Strings that reach an operator's terminal come from devices (computer name,
OS, interface names, result reasons), from other operators (tags, comments)
and from unauthenticated clients (an activation id in a failed registration,
a request path in the audit log). Printed raw, ``ESC [2J`` clears the screen,
cursor-up + erase-line hides the audit rows above, ``OSC 52`` writes the
operator's clipboard, and a right-to-left override makes ``exe.txt`` read as
``txt.exe``. So every such string is shown through :func:`visible`, and a
command's output shown on a terminal through :func:`visible_output`.

What is made visible (``UNSAFE_RANGES``): the C0 controls, DEL and the C1
controls (U+0080-U+009F: a terminal may take U+009B as CSI); the invisible
format characters of Unicode category Cf (the bidi embeddings, overrides and
isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E/U+200F/U+061C,
zero-width spaces, U+FEFF, the tag characters U+E0000 block that can smuggle
ASCII); the line and paragraph separators U+2028/U+2029; and lone surrogates,
which JSON can carry and which a UTF-8 stream cannot print. ZWNJ and ZWJ
(U+200C, U+200D) are left alone: Persian and Indic scripts and emoji need them
and they cannot move or hide text.

The escapes are Python's: ``\\x1b``, ``\\n``, ``\\u202e``, ``\\U000e0041``.
:func:`visible` escapes the backslash too (``\\\\``), so its output decodes
back to exactly one input: a device cannot make its text look like an escape
of something else. The table is written out, not derived from this Python's
``unicodedata``, so a device's string is shown the same by every CLI and
agent version; ``tests/unit/test_terminal.py`` checks that it covers every
Cc/Cf/Zl/Zp/Cs character this Python knows.

Pure: no I/O. Used by the CLI's one output module (``tether.cli.output``)
and available to the agent's ``doctor``.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "KEPT_IN_OUTPUT",
    "UNSAFE_RANGES",
    "VisibleFormatter",
    "is_unsafe",
    "log_to_stderr",
    "visible",
    "visible_lines",
    "visible_output",
]

# Inclusive code point ranges shown as escapes. Category Cf as of Unicode 15.1,
# minus ZWNJ/ZWJ, plus every control, the line/paragraph separators and surrogates.
UNSAFE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F),  # C0, DEL, C1
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200B), (0x200E, 0x200F),  # zero-width space; LRM, RLM
    (0x2028, 0x202E),  # line/paragraph separators; bidi embeddings and overrides
    (0x2060, 0x2064), (0x2066, 0x206F),  # word joiner...; bidi isolates; deprecated formats
    (0xD800, 0xDFFF),  # lone surrogates
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F),  # language tag; tag characters
)

# What a command's output keeps on a terminal: lines, tabs, and carriage returns
# (progress bars). A CR only moves to the start of the line the device itself is
# writing; it cannot reach a line tether printed.
KEPT_IN_OUTPUT = frozenset("\n\t\r")

_PLAIN_ASCII = bytes(range(0x20, 0x7F)) + "".join(sorted(KEPT_IN_OUTPUT)).encode()

_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


_UNSAFE = re.compile(f"[{_class(UNSAFE_RANGES)}]")
_FIELD = re.compile(f"[{_class(UNSAFE_RANGES)}\\\\]")
_OUTPUT = re.compile(f"(?![{re.escape(''.join(sorted(KEPT_IN_OUTPUT)))}])"
                     f"[{_class(UNSAFE_RANGES)}]")


def is_unsafe(ch: str) -> bool:
    """Whether one character is shown as an escape (the backslash is not "unsafe")."""
    return _UNSAFE.fullmatch(ch) is not None


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` as one unambiguous run of printable characters.

    Every unsafe character, newline and tab included, becomes an escape, and
    the backslash becomes ``\\\\``: a value cannot start a new table row or
    pass for another value. Printable text (accents, CJK, emoji) is unchanged.
    """
    if _FIELD.search(text) is None:  # the common case: nothing to do, no copy
        return text
    return _FIELD.sub(lambda m: _escape(m.group()), text)


def _escape_output(m: re.Match[str]) -> str:
    ch = m.group()
    if "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return _escape(ch)


def visible_output(data: bytes) -> bytes:
    """A command's output, readable on a terminal without the terminal obeying it.

    Escape sequences lose their ESC (shown ``\\x1b``), so nothing clears the
    screen, moves the cursor or writes the clipboard; lines, tabs and carriage
    returns are kept; bytes that are not UTF-8 are shown ``\\xNN``. Backslashes
    are left as they are, for reading: this is a view of the output, and the
    exact bytes are what a pipe, a file or ``--raw`` gets.
    """
    if not data.translate(None, _PLAIN_ASCII):  # printable ASCII, lines, tabs: as it is
        return data
    text = data.decode("utf-8", "surrogateescape")
    if _OUTPUT.search(text) is None:
        return data
    return _OUTPUT.sub(_escape_output, text).encode("utf-8")


def visible_lines(text: str) -> str:
    """``text`` with each line made :func:`visible`, its own line breaks kept.

    For multi-line text whose line breaks tether wrote itself (a traceback, a
    doctor's report) and whose lines may quote a device or a server.
    """
    return "\n".join(visible(line) for line in text.split("\n"))


class VisibleFormatter(logging.Formatter):
    """A log formatter that shows every unsafe character of a record as an escape.

    Log records quote what devices and clients sent (close reasons, invocation ids,
    addresses, a server's refusal), and logs are read on terminals: ``tether server``
    in the foreground, ``tail -f``, ``journalctl``. So a record is one visible line:
    it cannot clear the screen, hide the lines above it, write the clipboard, or
    start a line of its own that passes for the server's. A traceback keeps its line
    breaks; each of its lines is made visible too.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        return visible_lines(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return visible_lines(super().formatStack(stack_info))


def log_to_stderr(level: str) -> None:
    """Send every logger's records to stderr, one visible line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
