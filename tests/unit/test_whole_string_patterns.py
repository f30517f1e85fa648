"""Every check of a string against a pattern takes the whole string.

Why: ``re.match(r"^...$", s)`` accepts ``s`` with a final newline, since ``$``
also matches just before one. ``tether admin recover --operator $'admin\\n'``
made an enabled admin named ``admin\\n`` that way, one the API's pattern
refuses and that looks like ``admin`` in a listing; ``tether copy`` dropped a
final newline from a node path (another file than the one typed). The guard:
no ``.match(`` call anywhere in the source, and no ``re.search`` of an anchored
literal; ``fullmatch`` says what is meant. (Pydantic's patterns are matched by
its Rust engine, where ``$`` is the end of the text: tested below too.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pydantic
import pytest

from tether.cli.admin import _refusal
from tether.cli.copy import REMOTE
from tether.cli.forward import parse_spec
from tether.cli.parsing import parse_duration
from tether.server.api.models import OPERATOR_NAME
from tether.server.config import Settings

SRC = Path(__file__).resolve().parents[2] / "src" / "tether"


def test_no_pattern_check_in_the_source_stops_short_of_the_end() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            anchored_search = (
                node.func.attr == "search" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "re" and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("^"))
            if node.func.attr == "match" or anchored_search:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"use fullmatch: {found}"


def test_names_and_specs_with_a_final_newline_are_refused(tmp_path: Path) -> None:
    settings = Settings.for_data_dir(tmp_path)
    refusal = _refusal(settings, "admin\n")
    assert refusal is not None and "is not an operator name" in refusal
    assert "is not an operator name" not in (_refusal(settings, "admin") or "")
    with pytest.raises(ValueError, match="forward spec"):
        parse_spec("8080:localhost:80\n")
    assert parse_spec("8080:localhost:80") == (8080, "localhost", 80)
    remote = REMOTE.fullmatch("mi-0123456789abcdef0:/etc/motd\n")
    assert remote is not None and remote.group(2) == "/etc/motd\n"  # as typed, not another
    assert parse_duration(" 7d\n") == 7 * 86400  # surrounding blanks are allowed, on purpose
    with pytest.raises(ValueError):
        parse_duration("7d\nx")


def test_the_apis_patterns_take_the_whole_string() -> None:
    name = pydantic.TypeAdapter(
        pydantic.constr(pattern=OPERATOR_NAME))  # type: ignore[misc]
    assert name.validate_python("admin") == "admin"
    with pytest.raises(pydantic.ValidationError):
        name.validate_python("admin\n")
    assert re.match(OPERATOR_NAME, "admin\n")  # what the CLI did: why this file exists
