"""protocol/terminal.py: nothing a device or an operator writes can drive the terminal."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.terminal import (
    KEPT_IN_OUTPUT,
    UNSAFE_RANGES,
    is_unsafe,
    visible,
    visible_output,
)

# The characters the review named, plus the rest of the table's kinds.
ATTACKS = ["\x1b[2J", "\x1b[1A\x1b[2K", "\x1b]52;c;aGVsbG8=\x07", "\x9b31m", "\u202etxt.exe",
           "\u2066x\u2069", "\u200e\u200f\u061c", "\x7f", "\x00", "\u2028", "\ud800",
           "\U000e0041"]
BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


def unsafe_in(text: str) -> list[str]:
    return [ch for ch in text if is_unsafe(ch)]


def unvisible(shown: str) -> str:
    """The inverse of ``visible``: if it exists, ``visible`` is injective."""
    def one(m: re.Match[str]) -> str:
        e = m.group()
        return {"\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\r": "\r"}.get(e) or chr(int(e[2:], 16))
    rest = re.sub(r"\\(\\|n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", one, shown)
    return rest


# Any code point, lone surrogates included (JSON can carry them).
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)
biased_text = st.lists(st.one_of(st.sampled_from(ATTACKS + BIDI + ["\\", "\\x1b", "\n"]),
                                 any_text), max_size=8).map("".join)


@given(st.one_of(any_text, biased_text))
def test_visible_leaves_no_control_bidi_or_format_character(text: str) -> None:
    shown = visible(text)
    assert unsafe_in(shown) == []
    assert not any(ch in shown for ch in BIDI)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in shown)
    shown.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogate left


@given(st.one_of(any_text, biased_text))
def test_visible_is_injective_it_decodes_back_to_its_input(text: str) -> None:
    assert unvisible(visible(text)) == text


@given(st.one_of(any_text, biased_text), st.one_of(any_text, biased_text))
def test_distinct_values_stay_distinct(a: str, b: str) -> None:
    if a != b:
        assert visible(a) != visible(b)


def test_the_review_s_attacks_are_shown_as_text() -> None:
    assert visible("\x1b[2J") == "\\x1b[2J"
    assert visible("\x1b]52;c;aGVsbG8=\x07") == "\\x1b]52;c;aGVsbG8=\\x07"
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible("\u202etxt.exe") == "\\u202etxt.exe"
    assert visible("\x9b") == "\\x9b"
    assert visible("\\x1b") == "\\\\x1b"  # a literal backslash never passes for an escape
    assert visible("\U000e0041") == "\\U000e0041"


def test_printable_text_is_unchanged() -> None:
    for text in ("web-01", "café", "東京-1", "fe80::1%eth0", "🙂", "a\u200db", "ک\u200cی"):
        assert visible(text) is text or visible(text) == text


def test_the_table_covers_every_control_and_format_character_this_python_knows() -> None:
    """The table is fixed (same on every version); this catches a newer Unicode's additions."""
    covered: set[int] = set()
    for a, b in UNSAFE_RANGES:
        covered.update(range(a, b + 1))
    missing = [f"U+{c:04X}" for c in range(sys.maxunicode + 1)
               if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp", "Cs")
               and c not in covered and c not in (0x200C, 0x200D)]
    assert missing == [], f"add to UNSAFE_RANGES (Unicode {unicodedata.unidata_version})"


@given(st.binary(max_size=200) | st.lists(st.sampled_from(
    [a.encode("utf-8", "surrogatepass") for a in ATTACKS] + [b"\n", b"\t", b"\r", b"\xff"]),
    max_size=8).map(b"".join))
def test_output_keeps_lines_tabs_and_returns_and_nothing_else_unsafe(data: bytes) -> None:
    shown = visible_output(data).decode("utf-8")  # always UTF-8 now
    assert [ch for ch in unsafe_in(shown) if ch not in KEPT_IN_OUTPUT] == []
    for kept in KEPT_IN_OUTPUT:
        assert shown.count(kept) == data.count(kept.encode())


def test_output_shows_escapes_and_bad_bytes_and_passes_clean_bytes_as_they_are() -> None:
    assert visible_output(b"\x1b[2Jok\r\n") == b"\\x1b[2Jok\r\n"
    assert visible_output(b"caf\xc3\xa9 \xff\xc2\x9b") == "café \\xff\\x9b".encode()
    assert visible_output(b"C:\\Users\tx\n") == b"C:\\Users\tx\n"
    clean = b"line 1\nline 2\n" * 1000
    assert visible_output(clean) is clean


# -- the web console: the same characters made visible (its DOM obeys no ESC) ---------

CONSOLE = Path(__file__).resolve().parents[2] / "src/tether/server/console/static"
NODE_JS = shutil.which("node")


@pytest.mark.skipif(NODE_JS is None, reason="needs node to load the console's dom.js")
def test_the_console_shows_the_same_invisible_characters_as_the_cli() -> None:
    """dom.js's visibleText (which h() applies to every text child) agrees with visible()
    on every format character, and leaves controls (the DOM ignores them) and text alone."""
    formats = [c for a, b in UNSAFE_RANGES for c in range(a, b + 1)
               if not (c < 0xA0 or 0xD800 <= c <= 0xDFFF)]
    kept = [0x1B, 0x0A, 0x200C, 0x200D, ord("é"), ord("東"), 0x1F642]
    script = ("import {visibleText} from " + json.dumps((CONSOLE / "dom.js").as_uri()) + ";"
              "const codes = JSON.parse(process.argv[1]);"
              "const shown = codes.map((c) => visibleText(String.fromCodePoint(c)));"
              "console.log(JSON.stringify(shown));")
    assert NODE_JS is not None
    got = subprocess.run([NODE_JS, "--input-type=module", "-e", script,
                          json.dumps(formats + kept)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    shown = json.loads(got)
    assert shown[:len(formats)] == [visible(chr(c)) for c in formats]
    assert shown[len(formats):] == [chr(c) for c in kept]


def test_the_console_puts_text_in_the_dom_only_as_visible_text() -> None:
    """No HTML sink anywhere; a textContent assignment shows visibleText or our own words."""
    own_words = {"shell.js": 1, "run.js": 1, "fleet.js": 1}  # literal or counted text
    for path in [*CONSOLE.glob("*.js"), *CONSOLE.glob("pages/*.js")]:
        code = path.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|"
                             r"\.innerText\s*=", code), path
        plain = [line for line in code.splitlines()
                 if re.search(r"textContent\s*=[^=]", line) and "visibleText(" not in line]
        assert len(plain) == own_words.get(path.name, 0), (path.name, plain)
        assert code.count("createTextNode(") == code.count("createTextNode(visibleText("), path
    assert "createTextNode(visibleText(c))" in (CONSOLE / "dom.js").read_text()  # h()'s text
