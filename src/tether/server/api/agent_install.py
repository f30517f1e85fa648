"""Unauthenticated endpoints a device uses to install the agent from the server.

Nothing here is secret: the installer and the wheels are code. The one input
that reaches the installer's text is the server's own URL, taken from the
request; it is checked against a strict pattern before it is written into a
shell script, so a forged Host header cannot inject shell.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse

from tether import __version__
from tether.server.agent_dist.bundle import BundleError
from tether.server.api import params
from tether.server.api.errors import ApiError
from tether.server.api.models import ErrorBody
from tether.server.state import ServerState

router = APIRouter(prefix="/agent", tags=["agent install"])
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\]"
                       r"(:[0-9]{1,5})?")


def _state(request: Request) -> ServerState:
    s: ServerState = request.app.state.tether
    return s


_ERROR = {"model": ErrorBody, "content": {"application/json": {}}}


@router.get("/install.sh", response_class=PlainTextResponse, responses={
    200: {"content": {"text/x-shellscript": {}}}, 400: _ERROR})
async def install_script(request: Request) -> PlainTextResponse:
    """The installer: ``curl -fsS SERVER/agent/install.sh | sh -s -- --activation-id ...``."""
    base = str(request.base_url).rstrip("/")
    if not _SAFE_URL.fullmatch(base):
        raise ApiError(400, "bad_host", "the Host header is not a plain host name or address")
    text = resources.files("tether.server.agent_dist").joinpath("install.sh").read_text()
    text = text.replace("__SERVER_URL__", base).replace("__AGENT_VERSION__", __version__)
    return PlainTextResponse(text, media_type="text/x-shellscript")


@router.get("/ca.pem", response_class=PlainTextResponse, responses={
    200: {"content": {"application/x-pem-file": {}}}, 404: _ERROR})
async def ca_certificate(request: Request) -> PlainTextResponse:
    """The private CA of ``--tls auto``, for a device to pin.

    Public by nature (it is a certificate); fetched over an unverified
    connection, it is only as good as the fingerprint the operator compares it
    with, which the server prints at start (``openssl x509 -noout -fingerprint
    -sha256 -in ca.pem`` shows the same form).
    """
    tls = _state(request).settings.tls
    if tls is None or tls.ca is None:
        raise ApiError(404, "no_private_ca",
                       "this server does not run tether's private CA (--tls auto)")
    return PlainTextResponse(tls.ca.read_text(), media_type="application/x-pem-file")


@router.get("/wheels", response_class=PlainTextResponse, responses={404: _ERROR})
async def wheel_list(request: Request,
                     python: Annotated[str, Query(description="e.g. 3.11",
                                                  pattern=r"^3\.[0-9]{1,2}$", max_length=5)],
                     ) -> PlainTextResponse:
    """The wheel files a device with this Python version installs, one per line."""
    try:
        names = _state(request).agent_bundle.wheels_for(python)
    except BundleError as exc:
        raise ApiError(404, "no_agent_bundle", str(exc)) from None
    return PlainTextResponse("\n".join(names) + "\n")


@router.get("/wheels/{filename}", response_class=FileResponse, responses={
    200: {"content": {"application/octet-stream": {}}}, 404: _ERROR})
async def wheel_file(filename: params.FilePath, request: Request) -> FileResponse:
    path = _state(request).agent_bundle.path_of(filename)
    if path is None:
        raise ApiError(404, "wheel_not_found", f"no wheel {filename[:100]}")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
