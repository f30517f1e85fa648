"""Protocol versions and the rule for accepting a peer.

Rules (see docs/protocol.md): within one version, a sender may add optional
fields and a receiver ignores fields it does not know. Removing a field,
changing its meaning or type, or adding a required one makes a new version.
The server accepts every version in SUPPORTED_VERSIONS, so old agents keep
working until the server drops their version, and then they are refused with
a reason naming both versions.
"""

from __future__ import annotations

from tether.protocol.errors import CloseCode, ProtocolError

PROTOCOL_VERSION = 4
# Where the agent dials; the path's version is the URL's, not the protocol's.
AGENT_WS_PATH = "/agent/v1/connect"
SUPPORTED_VERSIONS = range(1, PROTOCOL_VERSION + 1)
# History: 1 - ping answered by pong. 2 - ping not answered; the agent relies on
# TCP_USER_TIMEOUT (the server's ACK is the answer), halving idle traffic.
# 3 - the server may send ``rotate`` (a new credential), answered by ``rotated``.
# 4 - channels (sessions): open/opened/window/eof/close/resize and binary data frames.


def check_version(agent_version: int, supported: range = SUPPORTED_VERSIONS) -> int:
    """Return the version to speak with an agent, or refuse it."""
    if agent_version in supported:
        return agent_version
    lo, hi = supported[0], supported[-1]
    raise ProtocolError(
        CloseCode.UNSUPPORTED_VERSION,
        f"agent speaks protocol {agent_version}; this server speaks {lo}..{hi}",
    )
