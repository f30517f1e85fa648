"""The agent-server protocol, shared by both sides and free of I/O.

Everything here is pure: messages, their encoding, the version rules, the
status table and the keepalive clock. The agent imports this package, so it
must stay on the standard library and Python 3.9.
"""

from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.messages import (
    AGENT_MESSAGES,
    SERVER_MESSAGES,
    Accepted,
    Cancel,
    Command,
    Hello,
    Inventory,
    Message,
    Output,
    Ping,
    Pong,
    Result,
    ResultAck,
    Rotate,
    Rotated,
    Welcome,
    decode,
    encode,
)
from tether.protocol.versions import PROTOCOL_VERSION, SUPPORTED_VERSIONS

__all__ = [
    "AGENT_MESSAGES",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "SUPPORTED_VERSIONS",
    "Accepted",
    "Cancel",
    "CloseCode",
    "Command",
    "Hello",
    "Inventory",
    "Message",
    "Output",
    "Ping",
    "Pong",
    "ProtocolError",
    "Result",
    "ResultAck",
    "Rotate",
    "Rotated",
    "Welcome",
    "decode",
    "encode",
]
