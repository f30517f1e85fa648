"""The ASGI application: routes, the agent endpoint and the background sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from tether import __version__
from tether.protocol.errors import CloseCode
from tether.protocol.versions import AGENT_WS_PATH
from tether.server import console
from tether.server.access.client_address import TrustedProxies, parse_proxies
from tether.server.access.throttle import RegistrationThrottle
from tether.server.admin_access import prepare_admin_access, write_secret_file
from tether.server.agent_dist.bundle import AgentBundle
from tether.server.api import agent_install, audit, errors, fleet, operators, sessions
from tether.server.api.audit_record import AuditMiddleware
from tether.server.api.limits import BodyLimit
from tether.server.api.routes import router
from tether.server.blobs import FolderBlobStore
from tether.server.bus import InProcessBus
from tether.server.config import Settings
from tether.server.dispatch.dispatcher import Dispatcher
from tether.server.dispatch.watch import CommandWatch
from tether.server.gateway.endpoint import serve_agent
from tether.server.gateway.registry import Registry
from tether.server.sessions.manager import SessionManager
from tether.server.state import ServerState
from tether.server.store import open_store
from tether.server.store.writer import GroupWriter

log = logging.getLogger(__name__)


def audit_key(path: Path) -> bytes:
    """The audit chain's HMAC key: made once, kept beside the database, never in it."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_hex(32)
        write_secret_file(path, key)
        return bytes.fromhex(key)


async def start(settings: Settings) -> ServerState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    store = await open_store(settings.database_url)
    admin_access = await prepare_admin_access(settings, store)
    for line in admin_access.messages():
        print(line, flush=True)
    await store.mark_all_connection_lost()
    await store.audit.open(audit_key(settings.audit_key_file), settings.audit_anchor_file,
                           settings.audit_repeat_window)
    registry = Registry()
    watch = CommandWatch()
    blobs = FolderBlobStore(settings.blob_dir)
    writer = GroupWriter(store)
    writer.start()
    live_sessions = SessionManager(
        store, registry, blobs, idle_timeout=settings.session_idle_timeout,
        max_duration=settings.session_max_duration, record_input=settings.record_input)
    bus = InProcessBus(registry, live_sessions)  # sessions hear of revocations through it
    dispatcher = Dispatcher(store, blobs, bus, watch, writer)
    bundle = AgentBundle(settings.agent_bundle_dir)
    await asyncio.to_thread(bundle.prepare)
    throttle = RegistrationThrottle(settings.registrations_per_address,
                                    settings.registrations_per_activation)
    await live_sessions.open()
    return ServerState(settings, store, blobs, registry, watch, dispatcher, bundle, throttle,
                       live_sessions, bus, admin_access=admin_access)


async def sweep(s: ServerState) -> None:
    """Once a second: expire undeliverable work and drop links that went silent."""
    bound = s.settings.keepalive_interval + s.settings.keepalive_timeout
    last_flush = last_rotation_check = time.monotonic()
    while True:
        await asyncio.sleep(s.settings.sweep_interval)
        try:
            now = time.monotonic()
            for conn in s.registry:
                if now - conn.last_received > bound:
                    log.info("%s silent for %.1f s: ConnectionLost", conn.node_id,
                             now - conn.last_received)
                    conn.close(CloseCode.KEEPALIVE_TIMEOUT,
                               f"nothing received for {bound:g} s")
                    if s.registry.remove(conn):
                        await s.dispatcher.node_disconnected(conn)
            await s.dispatcher.expire(time.time())
            max_age = s.settings.credential_max_age
            if max_age > 0 and now - last_rotation_check >= min(
                    s.settings.rotation_check_interval, max_age / 4):
                last_rotation_check = now
                await rotate_old_credentials(s)
            if now - last_flush >= s.settings.last_seen_flush_interval:
                last_flush = now
                await s.store.touch({c.node_id: c.last_received_wall for c in s.registry})
        except Exception:
            log.exception("sweep failed; trying again")


async def rotate_old_credentials(s: ServerState) -> None:
    """Connected nodes whose credential is older than the limit get a new one."""
    live = {c.node_id: c for c in s.registry}
    due = await s.store.due_for_rotation(sorted(live),
                                         time.time() - s.settings.credential_max_age)
    for node_id in due:
        await s.dispatcher.start_rotation(live[node_id])


# What the document does not list one by one (tests/integration/test_error_bodies.py).
METHODS = ("Every path answers HEAD wherever it answers GET: the same status and headers, "
           "no body. OPTIONS is not served: like any method a path does not list, it is "
           "405 with an `Allow` header naming every method the path has. No string, in a "
           "body, a path or a query, may hold U+0000 (NUL) or a lone surrogate, which no "
           "text column stores: refused with 422 in a body, 400 in a path or query.")


def build_app(settings: Settings) -> AgentFront:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = await start(settings)
        app.state.tether = s
        sweeper = asyncio.create_task(sweep(s))
        yield
        sweeper.cancel()
        await s.sessions.close()
        s.registry.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await s.dispatcher.writer.stop()
        await s.store.close()

    app = FastAPI(title="tether", version=__version__, lifespan=lifespan,
                  description=METHODS, openapi_url="/api/v1/openapi.json",
                  docs_url="/api/v1/docs", redoc_url=None)
    errors.install(app)
    app.include_router(fleet.router)  # before routes: /nodes/search is not a node id
    app.include_router(router)
    app.include_router(operators.router)
    app.include_router(audit.router)
    app.include_router(sessions.router)
    app.add_middleware(AuditMiddleware)
    app.include_router(agent_install.router)
    app.mount(console.PREFIX, console.Console(), name="console")
    app.add_route("/", console.to_console, include_in_schema=False)

    return AgentFront(app, settings)


def _holds_nul(scope: Scope) -> bool:
    """Whether the decoded path or the query (``%00``) carries U+0000."""
    return "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")


class AgentFront:
    """ASGI front door: the agents' WebSocket goes straight to its handler.

    Through FastAPI each of 10,000 idle links kept a dozen suspended coroutines
    (middleware, router, dependency exit stacks) and their closures for its whole
    life; the agent endpoint needs none of that. Everything else, lifespan
    included, is the FastAPI app's.
    """

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.http = BodyLimit(app, settings.max_request_body)
        # Who the client is, decided once for every route and the agents' endpoint.
        self.proxies = TrustedProxies(parse_proxies(settings.trusted_proxies))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxies.proxies and scope["type"] in ("http", "websocket"):
            scope = self.proxies.rewrite(scope)
        if scope["type"] in ("http", "websocket") and _holds_nul(scope):
            # No parameter takes U+0000 and PostgreSQL's text refuses it (a 500 once):
            # refused here, once, for every route and stream.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            refusal = errors.error_response(400, "invalid_request", "the request's path or "
                                            "query holds U+0000, which no parameter takes")
            await refusal(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # HEAD is GET without the body (RFC 9110), wherever GET is: the routes see
            # a GET, and uvicorn, whose own scope still says HEAD, sends no body bytes
            # (its h11 protocol drops them; the headers, Content-Length included, stay).
            scope = {**scope, "method": "GET"}
        if scope["type"] == "websocket" and scope["path"] == AGENT_WS_PATH:
            s: ServerState = self.app.state.tether
            await serve_agent(WebSocket(scope, receive, send), s.settings, s.store, s.registry,
                              s.dispatcher)
        else:
            await self.http(scope, receive, send)
