"""Structural guards for live sessions: no way around the checks of sessions/authority.py.

- A session's channel is opened in one place, ``SessionManager.channel``, which
  checks the session against the store first: so every new stream, each of a
  forward's connections included, is checked.
- Every server function that can take a right away (a store call that updates
  an operator's policy, disables it, revokes a token, or retags a node) also
  asks the bus to review the live sessions it concerns. A new such store method
  (one that goes through the operators' ``_guarded`` change) is covered without
  editing this test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "src" / "tether" / "server"
# Store methods that can take a right away, beyond those found through _guarded.
TAKE_RIGHTS = {"operators": {"update", "disable", "revoke_token"}, "store": {"set_tags"}}
ADDS_RIGHTS_ONLY = {"recover"}  # break-glass: makes an admin, takes nothing away


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _calls(fn: ast.AST) -> Iterator[ast.Attribute]:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node.func


def _operator_methods_through_guarded() -> set[str]:
    tree = ast.parse((SERVER / "store" / "operators.py").read_text())
    return {fn.name for fn in _functions(tree)
            if any(c.attr == "_guarded" for c in _calls(fn))} - {"_guarded"}


def _sources() -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(SERVER.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_channels_are_opened_only_by_the_session_manager_s_checked_method() -> None:
    found = []
    for path, tree in _sources():
        for fn in _functions(tree):
            for call in _calls(fn):
                if call.attr == "open" and isinstance(call.value, ast.Attribute) \
                        and call.value.attr == "channels":
                    found.append((path.relative_to(SERVER).as_posix(), fn.name))
    assert found == [("sessions/manager.py", "channel")], found
    manager = ast.parse((SERVER / "sessions" / "manager.py").read_text())
    channel = next(f for f in _functions(manager) if f.name == "channel")
    assert any(c.attr == "_recheck" for c in _calls(channel)), \
        "SessionManager.channel must check the session before it opens a channel"


def test_every_change_that_can_take_a_right_away_reviews_live_sessions() -> None:
    operator_methods = (TAKE_RIGHTS["operators"] | _operator_methods_through_guarded()) \
        - ADDS_RIGHTS_ONLY
    callers = []
    for path, tree in _sources():
        if path.parent.name == "store":
            continue  # the store itself; its callers are what is checked
        for fn in _functions(tree):
            takes = [c.attr for c in _calls(fn)
                     if (c.attr in operator_methods and isinstance(c.value, ast.Attribute)
                         and c.value.attr == "operators")
                     or c.attr in TAKE_RIGHTS["store"]]
            if takes:
                callers.append(fn.name)
                reviews = any(c.attr == "review_sessions" for c in _calls(fn))
                assert reviews, (f"{path.relative_to(SERVER)}: {fn.name} calls {takes} but "
                                 "does not review live sessions (bus.review_sessions)")
    # The routes known today are all found (the walk itself works).
    assert {"update_operator", "disable_operator", "revoke_token", "tag_node"} <= set(callers)
