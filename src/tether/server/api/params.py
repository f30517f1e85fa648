"""The bound of every query and path parameter of every route, in one place.

A parameter without one went to the database as it came: a 60 KiB ``name`` filter
(up to the request head's limit) compared against every node's name, sixty thousand
``tag=`` filters one subquery each. Every route takes its parameters as one of the
types below (or another ``Query``/``Path`` with a ``max_length``); past the bound the
answer is the 422 ``invalid_request`` ErrorBody of ``api/errors.py``, which never
echoes the value. The bounds are the columns' (or the identifiers' own length), so
nothing that could be stored is refused.

Numbers are bounded at both ends, and a float is finite: ``?since=nan`` and
``?since=1e999`` were accepted (Python's float() takes them) and compared against
every audit record. ``number`` makes the Query of every numeric parameter.

Guard: ``tests/integration/test_params.py`` fails any string parameter of any route
(WebSocket routes included) without a ``maxLength``, any list without ``maxItems``,
any number without both a ``minimum`` and a ``maximum``, and any float a route takes
without ``number``'s finiteness; and it sends NaN and infinities to each.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

NODE_ID = 20     # mi- and 17 hex digits
ID = 64          # activation, command, token and session ids (36 to 38 characters)
NAME = 100       # an operator's name (operators.name)
TEXT = 255       # a node's name (nodes.name), a file name
ADDRESS = 64     # an address (nodes.primary_address, node_addresses.address)
AUDIT = 200      # the audit log's actor, action and target columns
WORD = 40        # a status or a stream name

NodeIdPath = Annotated[str, Path(max_length=NODE_ID)]
IdPath = Annotated[str, Path(max_length=ID)]
NamePath = Annotated[str, Path(max_length=NAME)]
FilePath = Annotated[str, Path(max_length=TEXT)]
WordPath = Annotated[str, Path(max_length=WORD)]

NodeIdQuery = Annotated[str | None, Query(pattern=r"^mi-[0-9a-f]{17}$", max_length=NODE_ID)]
IdQuery = Annotated[str | None, Query(max_length=ID)]
NameQuery = Annotated[str | None, Query(max_length=NAME)]
TextQuery = Annotated[str | None, Query(max_length=TEXT)]
AddressQuery = Annotated[str | None, Query(max_length=ADDRESS)]
AuditQuery = Annotated[str | None, Query(max_length=AUDIT)]
WordQuery = Annotated[str | None, Query(max_length=WORD)]

# The largest integer a parameter may be (a version, an offset): a signed 64-bit
# column's; and the latest time one may name (Unix seconds, the year 5138).
MAX_INT = 2**63 - 1
MAX_TIME = 1e11


def number(ge: float, le: float) -> Any:
    """The Query of a numeric parameter: both bounds, and finite (no NaN, no inf)."""
    return Query(ge=ge, le=le, allow_inf_nan=False)


TimeQuery = Annotated[float | None, number(0, MAX_TIME)]
VersionQuery = Annotated[int | None, number(0, MAX_INT)]
