"""One error shape for every API failure: ``{"error": code, "message": text}``.

``error`` is a stable name scripts can switch on; ``message`` is for people.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        super().__init__(message)


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status,
                        headers=exc.headers)
