"""Server settings: one frozen object built from the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.server.tls import TlsFiles

DEFAULT_KEEPALIVE_INTERVAL = 150.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
DEFAULT_OUTPUT_CAP = 16 * 1024 * 1024
DEFAULT_DELIVERY_TIMEOUT = 3600.0
DEFAULT_EXECUTION_TIMEOUT = 3600.0
DEFAULT_CREDENTIAL_MAX_AGE = 30 * 86400.0
DEFAULT_AGENT_MESSAGE_BURST = 2000
DEFAULT_AGENT_MESSAGE_RATE = 500.0
# Bytes of text frames one agent may send (burst, then per second) before the server
# stops reading from it for a while (docs/protocol.md "Limits"; measured in
# docs/benchmarks.md, "Heavy agent messages"). 16 MiB: a whole default output cap
# goes out at once.
DEFAULT_AGENT_BYTE_RATE = 1024 * 1024.0
DEFAULT_AGENT_BYTE_BURST = 16 * 1024 * 1024
DEFAULT_HANDSHAKES_PER_ADDRESS = 256
# Long enough for a hello over a lossy, high-latency cellular link (a few RTTs and
# retransmits), short enough that silent sockets cannot pile up.
DEFAULT_HELLO_TIMEOUT = 15.0
DEFAULT_REGISTRATIONS_PER_ADDRESS = 10
DEFAULT_REGISTRATIONS_PER_ACTIVATION = 30
# An HTTP request's head (request line and headers) must arrive whole within this, and
# its body within the second: a slow client holds a descriptor no longer. 10 s is a
# few hundred round trips on a cellular link for a head of a few hundred bytes; the
# largest body (1 MiB) in 30 s needs 35 kB/s.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
# An answer the client has stopped taking: once bytes wait for it, it must take them
# all within this, or the connection is dropped (a public wheel of several MB, never
# read, held a descriptor indefinitely). A client on a slow link takes some every
# few hundred milliseconds.
DEFAULT_SEND_TIMEOUT = 30.0
# Connections from one address (IPv6: one /64) still sending their request head. A
# burst of reconnects from a site behind one NAT stays under it (the swarm benchmark
# dials 128 at once from one address); a slow-header attacker holds at most this many.
DEFAULT_HEADS_PER_ADDRESS = 128
# Wrong operator tokens from one address in a minute before its wrong ones are 429: far
# above a person mistyping or a script with a stale token, and each one is recorded.
DEFAULT_FAILED_TOKENS_PER_ADDRESS = 30
# Identical refused or failed calls within this long are one audit record and a count.
DEFAULT_AUDIT_REPEAT_WINDOW = 60.0
DEFAULT_SESSION_IDLE_TIMEOUT = 20 * 60.0   # Session Manager's default too
DEFAULT_SESSION_MAX_DURATION = 12 * 3600.0


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8720
    # Idle link: the agent sends one small frame after this much silence (the
    # server's TCP ACK is the answer). 150 s keeps idle traffic near 2 MB a month...
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    # ...and each side gives up this long after that, so a silent link death turns
    # into ConnectionLost within interval + timeout + 1 s (181 s by default).
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    output_cap: int = DEFAULT_OUTPUT_CAP
    sweep_interval: float = 1.0
    last_seen_flush_interval: float = 30.0
    # Failed registrations allowed per minute from one source address and for one
    # activation id, before both are refused until the minute ends.
    registrations_per_address: int = DEFAULT_REGISTRATIONS_PER_ADDRESS
    registrations_per_activation: int = DEFAULT_REGISTRATIONS_PER_ACTIVATION
    failed_tokens_per_address: int = DEFAULT_FAILED_TOKENS_PER_ADDRESS
    audit_repeat_window: float = DEFAULT_AUDIT_REPEAT_WINDOW
    # Hostile input (docs/security.md): messages one agent may send (burst, then per
    # second), WebSocket handshakes in progress per source address, API body size.
    agent_message_burst: int = DEFAULT_AGENT_MESSAGE_BURST
    agent_message_rate: float = DEFAULT_AGENT_MESSAGE_RATE
    # Bytes one agent may send (burst, then per second); beyond, reading it pauses.
    agent_byte_rate: float = DEFAULT_AGENT_BYTE_RATE
    agent_byte_burst: int = DEFAULT_AGENT_BYTE_BURST
    handshakes_per_address: int = DEFAULT_HANDSHAKES_PER_ADDRESS
    hello_timeout: float = DEFAULT_HELLO_TIMEOUT
    max_request_body: int = 1024 * 1024
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    heads_per_address: int = DEFAULT_HEADS_PER_ADDRESS
    # Proxies (CIDR networks) whose X-Forwarded-For names the client; none by default,
    # loopback included (access/client_address.py).
    trusted_proxies: tuple[str, ...] = ()
    # Node credentials older than this are rotated while the node is connected
    # (protocol 3 agents); 0 turns scheduled rotation off.
    credential_max_age: float = DEFAULT_CREDENTIAL_MAX_AGE
    rotation_check_interval: float = 60.0
    # Certificate and key to serve HTTPS/WSS with (server/tls.py); None: plain HTTP.
    tls: TlsFiles | None = None
    # Sessions end after this long without a byte either way, and after this long at all.
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT
    session_max_duration: float = DEFAULT_SESSION_MAX_DURATION
    # Shell recordings always hold the output; the operator's keystrokes only with this.
    record_input: bool = False
    # auto: uvloop when installed (it is with tether[server]), else the stdlib loop.
    event_loop: str = "auto"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def agent_bundle_dir(self) -> Path:
        return self.data_dir / "agent-bundle"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def audit_key_file(self) -> Path:
        return self.data_dir / "audit-key"

    @property
    def audit_anchor_file(self) -> Path:
        return self.data_dir / "audit-anchor"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    @classmethod
    def for_data_dir(cls, data_dir: Path, database_url: str | None = None,
                     **overrides: object) -> Settings:
        url = database_url or f"sqlite:///{data_dir.resolve() / 'tether.db'}"
        return cls(data_dir=data_dir, database_url=url, **overrides)  # type: ignore[arg-type]
