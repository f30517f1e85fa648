"""What a route adds to its audit record, beyond what the path and outcome say."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

# The detail key a refusal is marked with (``Principal.refuse``): the middleware then
# records the call as ``denied`` whatever its status.
REFUSED = "refused"


def note(request: HTTPConnection, **detail: Any) -> None:
    """Add to the audit record of this request (e.g. the script a command runs)."""
    if not hasattr(request.state, "audit"):
        request.state.audit = {}
    request.state.audit.update(detail)


def noted(request: HTTPConnection) -> dict[str, Any]:
    """What was noted for this request so far."""
    detail: dict[str, Any] = getattr(request.state, "audit", {})
    return detail
