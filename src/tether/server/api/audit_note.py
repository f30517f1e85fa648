"""What a route adds to its audit record, beyond what the path and outcome say."""

from __future__ import annotations

from typing import Any

from fastapi import Request


def note(request: Request, **detail: Any) -> None:
    """Add to the audit record of this request (e.g. the script a command runs)."""
    if not hasattr(request.state, "audit"):
        request.state.audit = {}
    request.state.audit.update(detail)
