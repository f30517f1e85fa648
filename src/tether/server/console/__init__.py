"""The web console: static pages served by the server itself, speaking the REST API.

Why a static single-page app with no build step: the console has no
privileges of its own. It signs in with an operator token and calls the same
REST API as the CLI, so every page shows and does exactly what that operator's
policy allows, and there is one place (the API) to get access right. Plain
ES modules need no Node.js at run time or build time; the one front-end
package (xterm.js, for the shell) is vendored from npm by
``scripts/vendor-console`` and served from the Python package.

The token lives in the tab's ``sessionStorage``, never in a cookie (so there
is nothing for another site to ride on: no CSRF), and a strict Content
Security Policy allows only the console's own scripts.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache")]
PREFIX = "/console"


class Console:
    """``/console/...``: the static files, each answer with the console's security headers."""

    def __init__(self) -> None:
        folder = resources.files("tether.server.console").joinpath("static")
        self.files = StaticFiles(directory=str(folder), html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.files(scope, receive, with_headers)


async def to_console(request: Request) -> Response:
    """``/``: where a browser pointed at the server should land."""
    return RedirectResponse(PREFIX + "/")
