"""Every status write in the store goes through the one transition table.

Why: a hand-written ``WHERE status = 'Pending'`` agrees with the table today and
silently disagrees after the next change to it. The store builds each such WHERE
with ``_moving``, which refuses a source the table does not allow; the structural
test below keeps any new UPDATE from bypassing it.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from tether.protocol.statuses import InvocationStatus as S
from tether.server.store import store
from tether.server.store.store import _moving, _transition


def where_sql(clause: object) -> str:
    return str(clause.compile(compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]


def test_sources_default_to_every_legal_one() -> None:
    assert where_sql(_moving([S.IN_PROGRESS])) == "invocations.status IN ('Pending')"
    assert where_sql(_moving([S.UNDELIVERABLE])) == (
        "invocations.status IN ('InProgress', 'Pending')")


def test_a_bound_result_admits_only_what_every_result_status_allows() -> None:
    assert where_sql(_moving([S.SUCCESS, S.CANCELLED])) == (
        "invocations.status IN ('InProgress', 'Pending')")


@pytest.mark.parametrize(("target", "source"), [
    (S.SUCCESS, S.CANCELLED), (S.PENDING, S.IN_PROGRESS), (S.DELIVERY_TIMED_OUT, S.IN_PROGRESS),
    (S.IN_PROGRESS, S.SUCCESS)])
def test_a_source_the_table_refuses_is_a_bug_raised_at_once(
        target: S, source: S) -> None:
    with pytest.raises(ValueError, match=f"{source.value} -> {target.value}"):
        _moving([target], [source])


def test_every_update_of_an_invocation_goes_through_the_table() -> None:
    tree = ast.parse(inspect.getsource(store))
    updates = 0
    for node in ast.walk(tree):
        # invocations.update().where(...): the WHERE must call _moving.
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "where" and isinstance(node.func.value, ast.Call)
                and ast.unparse(node.func.value.func) == "invocations.update"):
            updates += 1
            calls = {ast.unparse(n.func) for a in node.args for n in ast.walk(a)
                     if isinstance(n, ast.Call)}
            assert "_moving" in calls, ast.unparse(node)
    assert updates == 2  # _transition, and the batched results (their status is bound)
    # A status is set only where its WHERE was built: in _transition.
    (transition,) = [f for f in ast.walk(tree)
                     if isinstance(f, ast.FunctionDef) and f.name == "_transition"]
    inside = {id(n) for n in ast.walk(transition)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "values" and id(node) not in inside):
            assert "status" not in {k.arg for k in node.keywords}, ast.unparse(node)
    assert where_sql(_transition(S.CANCELLED, S.PENDING)).startswith(
        "UPDATE invocations SET status='Cancelled' WHERE invocations.status IN ('Pending')")
