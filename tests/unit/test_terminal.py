"""protocol/terminal.py: nothing a device or an operator writes can drive the terminal."""

from __future__ import annotations

import ast
import json
import logging
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
    VisibleFormatter,
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
    """dom.js's visibleText (which h(), put(), add() apply to every text child) agrees
    with visible() on every unsafe character but tab, LF and CR (the DOM lays those
    out; a device's output needs them), ESC and the lone surrogates included, and
    leaves those three and ordinary text alone."""
    unsafe = [c for a, b in UNSAFE_RANGES for c in range(a, b + 1)
              if chr(c) not in KEPT_IN_OUTPUT]
    kept = [*map(ord, sorted(KEPT_IN_OUTPUT)), 0x200C, 0x200D, ord("\\"), ord("é"),
            ord("東"), 0x1F642]
    script = ("import {visibleText} from " + json.dumps((CONSOLE / "dom.js").as_uri()) + ";"
              "const codes = JSON.parse(process.argv[1]);"
              "const shown = codes.map((c) => visibleText(String.fromCodePoint(c)));"
              "console.log(JSON.stringify(shown));")
    assert NODE_JS is not None
    got = subprocess.run([NODE_JS, "--input-type=module", "-e", script,
                          json.dumps(unsafe + kept)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    shown = json.loads(got)
    assert shown[:len(unsafe)] == [visible(chr(c)) for c in unsafe]
    assert shown[len(unsafe):] == [chr(c) for c in kept]


# Ways a script can put text or markup into a page. Outside dom.js, none at all: pages
# build with h() and change an element's children with put/add/addFirst, which turn
# every string into a text node of its visibleText. A DOM method takes a string as it
# is (``el.append("\u202e...")`` would show the override working).
HTML_SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|"
                        r"createContextualFragment|srcdoc|\beval\(|new Function")
TEXT_SINKS = re.compile(r"\.(append|prepend|replaceChildren|before|after|replaceWith|"
                        r"insertAdjacentText|insertAdjacentElement|setAttribute\w*|"
                        r"createTextNode|appendData|insertData|replaceData)\(|"
                        r"\.(textContent|innerText|outerText|nodeValue|data|title|ariaLabel|"
                        r"placeholder|alt|label)\s*=[^=]")
NOT_THE_DOM = {"api.js": ["q.append(k, x)"]}  # URLSearchParams, not an element


def test_the_console_puts_text_in_the_dom_only_as_visible_text() -> None:
    """No HTML sink anywhere; outside dom.js no DOM text sink either; in dom.js, text
    nodes and the attributes people read hold visibleText only."""
    files = [*CONSOLE.glob("*.js"), *CONSOLE.glob("pages/*.js")]
    assert len(files) >= 12 and CONSOLE / "pages/audit.js" in files
    for path in files:
        code = path.read_text()
        assert not HTML_SINKS.search(code), (path.name, HTML_SINKS.search(code))
        if path.name == "dom.js":
            continue
        found = [line.strip() for line in code.splitlines() if TEXT_SINKS.search(line)]
        allowed = NOT_THE_DOM.get(path.name, [])
        assert [x for x in found if not any(a in x for a in allowed)] == [], path.name
    dom = [line.strip() for line in (CONSOLE / "dom.js").read_text().splitlines()
           if TEXT_SINKS.search(line)]
    # dom.js's own sinks, each taking visibleText, an element, or data (not shown).
    assert dom == [
        "out.push(c instanceof Node ? c : document.createTextNode(visibleText(c)));",
        "else if (SHOWN_ATTRIBUTES.has(k)) el.setAttribute(k, visibleText(v));",
        'else el.setAttribute(k, v === true ? "" : v);',  # value, href, data-*, id...
        "el.append(...nodes(children));",
        "export function put(el, ...children) { el.replaceChildren(...nodes(children)); "
        "return el; }",
        "export function add(el, ...children) { el.append(...nodes(children)); return el; }",
        "export function addFirst(el, ...children) { el.prepend(...nodes(children)); "
        "return el; }",
        "document.body.append(a);",  # download(): an <a> made by h()
    ], "a new sink in dom.js: does what it shows go through visibleText?"


def test_the_structural_check_sees_each_way_of_putting_text_in() -> None:
    """The patterns above catch each sink they name (and the everyday page code passes)."""
    for line in ['el.append("x")', "x.replaceChildren(s)", "a.prepend(b)", "n.before(t)",
                 "n.after(t)", "n.replaceWith(t)", 'el.setAttribute("title", t)',
                 "document.createTextNode(t)", "el.textContent = t", "el.innerText = t",
                 "t.nodeValue = s", "t.data = s", "el.title = s", "el.insertAdjacentText(p, s)"]:
        assert TEXT_SINKS.search(line), line
    for line in ["el.innerHTML = s", "el.outerHTML = s", 'document.write(s)',
                 "el.insertAdjacentHTML(p, s)", "new DOMParser()", "frame.srcdoc = s"]:
        assert HTML_SINKS.search(line), line
    for line in ["put(body, table(rows))", "add(main, h('h1', {}, t))", "if (a.data == b)",
                 "el.textContent === s", "term.write(data)"]:
        assert not TEXT_SINKS.search(line) and not HTML_SINKS.search(line), line


def test_a_log_record_is_one_visible_line_and_a_traceback_keeps_its_breaks() -> None:
    formatter = VisibleFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "closing %s: %s", (
        "mi-0", "\x1b[2J\nWARNING forged line\u202e"), None)
    assert formatter.format(record) == "WARNING closing mi-0: \\x1b[2J\\nWARNING forged line\\u202e"
    try:
        raise ValueError("bad \x1b]52;c;AA==\x07")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert "\n" in text and not any(is_unsafe(ch) for ch in text.replace("\n", ""))
    assert "bad \\x1b]52;c;AA==\\x07" in text


# The agent's own lines: what tether-agent prints quotes servers and devices too.
AGENT = Path(__file__).resolve().parents[2] / "src" / "tether" / "agent"
SAFE_ARGUMENTS = {"visible", "visible_lines", "render_json"}  # render_json: ASCII JSON


def _unsafe_prints(tree: ast.AST) -> list[int]:
    """Lines of ``print`` calls whose text is neither a constant nor made visible first."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "_say":
            continue
        for call in ast.walk(fn):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id == "print"):
                continue
            arg = call.args[0] if call.args else None
            parts = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
            if not all(isinstance(p, ast.Constant) or (
                    isinstance(p, ast.Call) and isinstance(p.func, ast.Name)
                    and p.func.id in SAFE_ARGUMENTS) for p in parts):
                found.append(call.lineno)
    return sorted(set(found))


def test_the_agent_prints_only_visible_text() -> None:
    """tether-agent prints through ``_say`` (cli.py) or ``visible``; the child helper's
    ``sys.stderr.write`` is its protocol with the agent, not a terminal."""
    offenders = {str(path.relative_to(AGENT)): lines for path in sorted(AGENT.rglob("*.py"))
                 if (lines := _unsafe_prints(ast.parse(path.read_text())))}
    assert offenders == {}
    assert _unsafe_prints(ast.parse("def f(x):\n    print(f'{x}')\n")) == [2]
