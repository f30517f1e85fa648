"""The parts of a running server, gathered so routes and tasks can reach them."""

from __future__ import annotations

import dataclasses

from tether.server.access.throttle import RegistrationThrottle, Throttle
from tether.server.admin_access import AdminAccess
from tether.server.agent_dist.bundle import AgentBundle
from tether.server.blobs import FolderBlobStore
from tether.server.bus import Bus
from tether.server.config import Settings
from tether.server.dispatch.dispatcher import Dispatcher
from tether.server.dispatch.watch import CommandWatch
from tether.server.gateway.registry import Registry
from tether.server.sessions.manager import SessionManager
from tether.server.store import Store


@dataclasses.dataclass
class ServerState:
    settings: Settings
    store: Store
    blobs: FolderBlobStore
    registry: Registry
    watch: CommandWatch
    dispatcher: Dispatcher
    agent_bundle: AgentBundle
    registration_throttle: RegistrationThrottle
    sessions: SessionManager
    bus: Bus  # the cluster seam: what a change must reach on every replica
    # What start-up found about the way in: the banner says it (server/admin_access.py).
    admin_access: AdminAccess | None = None
    # Wrong operator tokens per client address, this minute (api/auth.py).
    failed_tokens: Throttle = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.failed_tokens = Throttle(self.settings.failed_tokens_per_address, 60.0)
