"""Result rows as plain dicts, the shape every store method returns.

``dict(row)`` over ``result.mappings()`` builds a ``RowMapping`` per row and then
copies it through its key view: 60 % of ``GET /commands/ID`` with 10,000
invocations went there. Zipping the result's keys with each plain row tuple
gives the same dicts in a fraction of the time.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Result

__all__ = ["as_dicts"]


def as_dicts(result: Result[Any]) -> list[dict[str, Any]]:
    keys = list(result.keys())
    return [dict(zip(keys, row)) for row in result]
