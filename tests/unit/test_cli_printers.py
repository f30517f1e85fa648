"""Every human-readable printer of the CLI shows hostile strings as text, never as controls.

Two guards for one class (finding 2 of issue 12, terminal escape injection):

- Structural: no module under ``tether.cli`` writes to standard output or
  error except ``tether.cli.output``, whose every line for people goes through
  ``tether.protocol.terminal.visible``. A new ``print()`` fails here.
- Behavioural: every command in the argparse tree is run (in-process, through
  ``tether.cli.main.main``) against an API that answers every field with
  hostile text, its standard output and error on real pseudo-terminals; no
  control, bidi or format character may reach them, and the hostile text must
  show up escaped (so a printer that prints nothing proves nothing). A command
  added to the tree without being walked here, or listed as not walkable with
  a reason, fails ``test_every_command_is_walked``.

The API is a small HTTP server on loopback whose answers are built from the
server's own response models (the FastAPI routes' ``response_model``), so the
shapes follow the real API; every string in them is hostile. The real server,
real agents and a hostile device are in tests/integration/test_cli_escaping.py.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import os
import pty
import sys
import threading
import tty
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

import tether.cli
from tether.cli import main as cli_main
from tether.protocol import messages
from tether.protocol.terminal import KEPT_IN_OUTPUT, is_unsafe, visible, visible_output
from tether.server.api import audit, fleet, operators, routes, sessions

# Clear screen; cursor up + erase line; OSC 52 (clipboard); C1 CSI; bidi override and
# isolate; DEL; NUL; line separator; a lone surrogate; a newline and a backslash.
HOSTILE = ("evil\x1b[2J\x1b[1A\x1b[2K\x1b]52;c;aGk=\x07\x9b31m\u202eexe.txt\u2066\x7f\x00"
           "\u2028\ud800\r\t\n\\x")
SHOWN = visible(HOSTILE)
DEVICE_BYTES = b"out\x1b[2J\x1b]52;c;aGk=\x07\xc2\x9b\xe2\x80\xae\tcol\r\n"
NODE = "mi-0123456789abcdef0"

SRC = Path(tether.cli.__file__).parent
# Writes to the terminal outside output.py, each with why it is not text for people.
RAW_WRITES = {
    ("shell.py", "sys.stdout"): "the live shell: the remote PTY's bytes are the terminal's",
    ("shell.py", "os.write"): "the live shell: the remote PTY's bytes are the terminal's",
    ("entry.py", "print"): "runs before the CLI can be imported; prints only its own text",
    ("entry.py", "sys.stderr"): "runs before the CLI can be imported; prints only its own text",
}
# Commands the walk does not run, and why.
NOT_WALKED = {
    ("server",): "the server, not a client printer (its log is tested on the server side)",
    ("agent-bundle", "fetch"): "prints local wheel paths; needs pip and an index",
    ("shell",): "a live stream; its two lines go through output.out (structural test)",
    ("forward",): "a live stream; its lines go through output.out (structural test)",
    ("cp",): "a live stream; its lines go through output.out (structural test)",
    ("admin", "recover"): "local, on the server machine: prints its own text and a new token",
}
# Commands whose standard output is the device's bytes or a recording, not text.
DEVICE_OUTPUT = {("run",), ("commands", "output")}
RAW_OUTPUT = {("sessions", "replay"): "a shell's recording is terminal output by nature, "
              "as the live shell is: replayed as it was",
              ("audit", "export"): "JSON lines (test_audit_export_is_exact_json_lines)"}
NO_FIELDS = {("commands", "output"): "prints the device's bytes only"}


# -- structural guard ----------------------------------------------------------------


def _writes(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Each way of reaching the terminal in one module, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("print", "pprint"):
            yield node.func.id, node.lineno
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in ("sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__",
                        "os.write", "os.writev"):
                yield name, node.lineno
        if isinstance(node, ast.Constant) and node.value in ("/dev/tty", "/dev/stdout",
                                                              "/dev/stderr"):
            yield str(node.value), node.lineno


def test_only_the_output_module_writes_to_the_terminal() -> None:
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(SRC.glob("*.py")):
        if path.name == "output.py":
            continue
        for what, line in _writes(ast.parse(path.read_text(), str(path))):
            found.setdefault((path.name, what), []).append(line)
    stray = {f"{m}:{lines} {w}" for (m, w), lines in found.items() if (m, w) not in RAW_WRITES}
    assert not stray, ("print through tether.cli.output (out, fail, table, emit, print_json, "
                       f"device_output), not directly: {sorted(stray)}")
    assert all(len(found.get(k, [])) == 1 for k in RAW_WRITES), found


def test_the_structural_check_sees_each_way_of_writing() -> None:
    code = ("import sys, os\nprint('x')\nsys.stdout.write('x')\nsys.stderr.buffer.write(b'')\n"
            "os.write(1, b'')\nopen('/dev/tty', 'w')\n")
    assert sorted(w for w, _ in _writes(ast.parse(code))) == [
        "/dev/tty", "os.write", "print", "sys.stderr", "sys.stdout"]


# -- a hostile API built from the server's response models ----------------------------


def _from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"]
            return _from_schema(options[0], defs) if options else None
    if "enum" in schema or "const" in schema:
        return schema.get("enum", [schema.get("const")])[0]
    kind = schema.get("type")
    if kind == "string":
        return HOSTILE
    if kind == "integer":
        return 1
    if kind == "number":
        return 1_700_000_000.0
    if kind == "boolean":
        return False  # audit verify: not ok, so that its problem is printed
    if kind == "array":
        return [_from_schema(schema.get("items", {"type": "string"}), defs)]
    props = schema.get("properties")
    if props is not None:
        return {k: _from_schema(v, defs) for k, v in props.items()}
    extra = schema.get("additionalProperties")
    return {HOSTILE: _from_schema(extra, defs) if isinstance(extra, dict) and extra
            else HOSTILE}


def _from_dataclass(tp: Any) -> Any:
    """A hostile instance of a protocol dataclass, as JSON (the stored inventory)."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: _from_dataclass(hints[f.name]) for f in dataclasses.fields(tp)
                if not f.name.isupper()}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return [_from_dataclass(args[0])]
    if origin is typing.Union:
        return _from_dataclass(next(a for a in args if a is not type(None)))
    return {str: HOSTILE, int: 24, bool: True, float: 1.0}[tp]


def hostile(model: Any) -> Any:
    value = TypeAdapter(model).json_schema(ref_template="#/$defs/{model}")
    doc = _from_schema(value, value.get("$defs", {}))

    def fix(v: Any) -> None:  # the free-form dicts, shaped as the CLI reads them
        if isinstance(v, list):
            for x in v:
                fix(x)
        elif isinstance(v, dict):
            if "inventory" in v:
                v["inventory"] = _from_dataclass(messages.Inventory)
            if isinstance(v.get("target"), dict):
                v["target"] = dict.fromkeys(("user", "host", "port", "direction", "path"),
                                            HOSTILE)
            for x in v.values():
                fix(x)
    fix(doc)
    return doc


ROUTES = [r for router in (fleet.router, routes.router, operators.router, audit.router,
                           sessions.router) for r in router.routes]


class HostileApi(BaseHTTPRequestHandler):
    failing = False  # answer every request with an error body instead

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        route = next((r for r in ROUTES if r.path_regex.match(path)  # type: ignore[attr-defined]
                      and self.command in r.methods), None)  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, ctype, body = 200, "application/json", b""
        if route is None:
            status, body = 404, json.dumps({"error": "no_route", "message": path}).encode()
        elif type(self).failing:
            status, body = 409, json.dumps({"error": HOSTILE, "message": HOSTILE}).encode()
        elif path.endswith(("/stdout", "/stderr")):
            ctype, body = "application/octet-stream", DEVICE_BYTES
        elif path.endswith("/recording"):
            ctype = "application/x-asciicast"
            body = (json.dumps({"version": 2}) + "\n" + json.dumps([0.0, "o", HOSTILE])
                    + "\n").encode()
        else:
            doc = hostile(route.response_model)  # type: ignore[attr-defined]
            if path.startswith("/api/v1/commands") and isinstance(doc, dict):
                doc["status"] = "Failed"  # terminal, so that run stops waiting
                doc["command_id"] = "cmd-x"  # run puts it in URLs (a lone surrogate cannot)
                for inv in doc.get("invocations", []):
                    inv.update(status="Failed", node_id=NODE)
            body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HostileApi)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# -- the walk -----------------------------------------------------------------------


def leaves(parser: argparse.ArgumentParser,
           path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from leaves(child, (*path, name))


VALUES = {"node_id": NODE, "tags": "k=v", "target": "all", "role": "admin",
          "operator": "ops", "server": "", "token": "tth_x"}


def argv_for(path: tuple[str, ...], parser: argparse.ArgumentParser, api: str) -> list[str]:
    argv = list(path)
    tail: list[str] = []
    for action in parser._actions:
        value = api if action.dest == "server" else VALUES.get(action.dest, "x")
        if not action.option_strings:
            if action.nargs == argparse.REMAINDER:
                tail = ["--", "true"]
            else:
                argv.append(value)
        elif action.required or (path, action.dest) in ((("operators", "update"), "role"),
                                                        (("login",), "token")):
            argv += [action.option_strings[-1], value]
    return argv + tail


def has_json(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in a.option_strings for a in parser._actions)


@dataclasses.dataclass
class Captured:
    stdout: bytes
    stderr: bytes
    code: int


class _Drain(threading.Thread):
    """Reads a PTY's master end until the slave side is closed."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, bytearray()
        self.start()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not chunk:
                return
            self.data += chunk


def on_terminals(argv: list[str]) -> Captured:
    """``tether ARGV`` in-process, standard output and error each on a real (raw) PTY."""
    pairs = [pty.openpty() for _ in range(2)]
    drains = []
    for master, slave in pairs:
        tty.setraw(slave)  # bytes as written: no newline translation, no echo
        drains.append(_Drain(master))
    streams = [io.TextIOWrapper(io.BufferedWriter(io.FileIO(slave, "w", closefd=False)),
                                encoding="utf-8") for _, slave in pairs]
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = streams
    try:
        try:
            code = cli_main.main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        assert sys.stdout.isatty() and sys.stderr.isatty()
    finally:
        sys.stdout, sys.stderr = saved
        for stream in streams:
            with contextlib.suppress(ValueError):
                stream.flush()
    for (master, slave), drain in zip(pairs, drains):
        os.close(slave)
        drain.join(10)
        os.close(master)
    return Captured(bytes(drains[0].data), bytes(drains[1].data), code)


def unsafe(data: bytes, allowed: frozenset[str]) -> list[str]:
    text = data.decode("utf-8", "surrogateescape")
    return sorted({repr(ch) for ch in text if is_unsafe(ch) and ch not in allowed})


def commands(api: str) -> list[tuple[tuple[str, ...], list[str], bool]]:
    found = []
    for path, parser in leaves(cli_main._parser()):
        if path in NOT_WALKED:
            continue
        found.append((path, argv_for(path, parser, api), has_json(parser)))
    return found


def test_every_command_is_walked(api: str) -> None:
    tree = {path for path, _ in leaves(cli_main._parser())}
    walked = {path for path, _, _ in commands(api)}
    assert walked == tree - set(NOT_WALKED)
    assert len(walked) >= 30  # the walk below really covers the tree


@pytest.fixture
def env(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TETHER_SERVER", api)
    monkeypatch.setenv("TETHER_TOKEN", "tth_test")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # tether login
    monkeypatch.chdir(tmp_path)
    return api


def test_every_printer_shows_hostile_strings_as_text(env: str) -> None:
    """Each command, for people: nothing unsafe on either terminal, the hostile text shown."""
    problems = []
    for path, argv, _ in commands(env):
        got = on_terminals(argv)
        allowed = KEPT_IN_OUTPUT if path in DEVICE_OUTPUT else frozenset("\n")
        for name, data in (("stdout", got.stdout), ("stderr", got.stderr)):
            if path in RAW_OUTPUT and name == "stdout":
                continue
            bad = unsafe(data, allowed)
            if bad:
                problems.append(f"{' '.join(path)} {name}: {bad}")
        if path in DEVICE_OUTPUT and visible_output(DEVICE_BYTES) not in got.stdout:
            problems.append(f"{' '.join(path)} did not show the device's output")
        if SHOWN.encode() not in got.stdout + got.stderr and path not in RAW_OUTPUT \
                and path not in NO_FIELDS:
            problems.append(f"{' '.join(path)} printed no hostile field (exit {got.code}): "
                            f"{(got.stdout + got.stderr)[:300]!r}")
    assert not problems, "\n".join(problems)


def test_every_error_from_the_server_is_shown_as_text(env: str) -> None:
    HostileApi.failing = True
    try:
        for path, argv, _ in commands(env):
            got = on_terminals(argv)
            assert got.code == cli_main.EXIT_API, (path, got)
            assert unsafe(got.stdout + got.stderr, frozenset("\n")) == [], path
            assert f"tether: {SHOWN} ({SHOWN})".encode() in got.stderr, (path, got.stderr)
    finally:
        HostileApi.failing = False


def strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, (list, dict)):
        for v in (doc if isinstance(doc, list) else [*doc, *doc.values()]):
            yield from strings(v)


def test_json_output_stays_exact_ascii_json(env: str) -> None:
    for path, argv, json_flag in commands(env):
        if not json_flag:
            continue
        got = on_terminals([*argv[:argv.index("--")], "--json", *argv[argv.index("--"):]]
                           if "--" in argv else [*argv, "--json"])
        assert got.stdout.isascii(), path
        assert any(HOSTILE in s for s in strings(json.loads(got.stdout))), path
        assert unsafe(got.stderr, frozenset("\n")) == [], path


def test_audit_export_is_exact_json_lines(env: str) -> None:
    got = on_terminals(["audit", "export"])
    assert got.stdout.isascii()
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert lines[0]["actor"] == HOSTILE


def test_command_output_on_a_terminal_is_shown_and_raw_gives_the_bytes(env: str) -> None:
    shown = on_terminals(["commands", "output", "cmd-x", NODE, "--stream", "stdout"])
    assert shown.stdout == b"out\\x1b[2J\\x1b]52;c;aGk=\\x07\\x9b\\u202e\tcol\r\n"
    raw = on_terminals(["commands", "output", "cmd-x", NODE, "--stream", "stdout", "--raw"])
    assert raw.stdout == DEVICE_BYTES
