"""The bound of every field of every protocol message, in one table.

A peer is untrusted: whatever it sends is stored, indexed, listed to
operators and written into columns of a fixed width. So every field has a
limit here, and ``messages.decode`` applies it to every frame, so a message
object that exists is one the server can store whole. A field without an
entry is a bug that ``tests/unit/test_messages.py`` fails on.

Over its limit a field is either

- **refused** (``Over.REFUSE``): the frame is malformed, the connection is
  closed with ``4000``. For identifiers, addresses, credentials, paths and
  numbers, where a cut value would be a wrong one. No honest agent comes
  near these bounds; they are sized from the database columns and from what
  the kernel allows (``IFNAMSIZ``, ``HOST_NAME_MAX``, a 32-bit exit status).
- **truncated** (``Over.TRUNCATE``): kept, cut to the limit. A string ends
  with ``TRUNCATED_MARK`` so a reader sees it was cut; a list keeps its
  first items. For descriptions and reasons (an agent may quote a long path
  in a reason) and for the inventory's lists, so a device with more
  interfaces than the cap (a container host) still connects, old agents
  included, and is shown with its first ones.

String lengths count characters (code points), as ``VARCHAR(n)`` does.

Characters no text column can hold: U+0000 (PostgreSQL's ``text`` refuses it,
SQLite keeps it, so the two databases would differ) and a lone surrogate (it
has no UTF-8, so neither database nor the next peer could take it). In a
field refused past its length they are refused too; in a field cut past its
length each becomes U+FFFD (``REPLACEMENT``), so a device whose hostname or
error message carries one still connects and both databases store the same
string. Only a field marked ``raw`` keeps U+0000: the payloads that are
bytes, not text to a column (output slices, kept as blobs; the script and
its working directory, which go to a file and the kernel), and even there a
lone surrogate is refused, as it could never be sent on.

docs/protocol.md ("Limits") is kept true to this table.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Union

__all__ = [
    "FIELD_LIMITS",
    "FLAG",
    "INT32",
    "REASON",
    "REPLACEMENT",
    "TRUNCATED_MARK",
    "Flag",
    "Items",
    "Limit",
    "Over",
    "Span",
    "Text",
    "storable_text",
    "truncate_text",
    "unstorable",
]

TRUNCATED_MARK = " [truncated]"
REPLACEMENT = "\ufffd"
# U+0000 and the surrogates: what a text column cannot hold (see the docstring).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Over(enum.Enum):
    REFUSE = "refuse"
    TRUNCATE = "truncate"


@dataclasses.dataclass(frozen=True)
class Text:
    """A string of at most ``max_chars`` characters."""

    max_chars: int
    over: Over = Over.REFUSE
    raw: bool = False  # bytes, not text for a column: U+0000 is kept

    def __post_init__(self) -> None:
        if self.over is Over.TRUNCATE and self.max_chars <= len(TRUNCATED_MARK):
            raise ValueError("a truncated string needs room for the mark")


@dataclasses.dataclass(frozen=True)
class Items:
    """A list of at most ``max_items`` items, each within ``each``."""

    max_items: int
    each: Limit
    over: Over = Over.REFUSE


@dataclasses.dataclass(frozen=True)
class Span:
    """A number in ``lo..hi`` (both included); out of it is always refused."""

    lo: float
    hi: float


@dataclasses.dataclass(frozen=True)
class Flag:
    """A bool: bounded by its type. Listed anyway, so every field has an entry."""


@dataclasses.dataclass(frozen=True)
class Nested:
    """An object checked against its own class's entries."""


Limit = Union[Text, Items, Span, Flag, Nested]

FLAG = Flag()
NESTED = Nested()
INT32 = Span(-(2**31), 2**31 - 1)           # exit statuses, versions
SIZE = Span(0, 2**63 - 1)                   # byte counts and offsets (BIGINT)
CHANNEL = Span(1, 2**32 - 1)
WINDOW = Span(0, 16 * 1024 * 1024)
CREDIT = Span(1, 16 * 1024 * 1024)
TERMINAL_SIZE = Span(1, 65535)
MODE = Span(0, 0o177777)                    # st_mode: type and permission bits
SECONDS = Span(0, 30 * 86400)               # timeouts, keepalive (the API's largest)

ID = Text(64)                               # uuids (36), node ids (20)
CREDENTIAL = Text(256)                      # "tnc_" + 43 characters today
VERSION = Text(40, Over.TRUNCATE)           # nodes.agent_version is VARCHAR(40)
ADDRESS = Text(64)                          # an IPv6 address with a zone fits
NAME = Text(255, Over.TRUNCATE)             # HOST_NAME_MAX is 64; nodes.name is 255
DESCRIPTION = Text(255, Over.TRUNCATE)      # os name and version, kernel, arch
REASON = Text(500, Over.TRUNCATE)           # invocations.reason is VARCHAR(500)
ERROR = Text(1000, Over.TRUNCATE)
DIGEST = Text(64)                           # hex SHA-256
PATH = Text(4096)                           # PATH_MAX
HOST = Text(255)                            # a DNS name
USER = Text(64)
TERM = Text(64)
STREAM = Text(16)                           # and one of STREAMS (messages.py)
KIND = Text(32)
# Output slices carry at most 64 KiB of raw output: as text, at most 64 Ki
# characters; as base64, 4/3 of that.
OUTPUT_DATA = Text(96 * 1024, raw=True)
SCRIPT = Text(256 * 1024, raw=True)         # the API's MAX_SCRIPT
OUTPUT_CAP = Span(0, 1024**3)               # the API's largest output_cap

# The inventory: at most 64 interfaces of at most 32 addresses each (2,048 in
# all, one address row each); the agent sends its most useful ones first
# (agent/inventory.py), the server keeps the first ones.
MAX_INTERFACES = 64
MAX_ADDRESSES_PER_INTERFACE = 32
MAX_FLAGS = 32

FIELD_LIMITS: Mapping[str, Mapping[str, Limit]] = {
    "Hello": dict(protocol=INT32, node_id=ID, credential=CREDENTIAL, agent_version=VERSION,
                  probe=FLAG),
    "Welcome": dict(protocol=INT32, server_version=VERSION, keepalive_interval=SECONDS,
                    keepalive_timeout=SECONDS),
    "Address": dict(address=ADDRESS, prefixlen=Span(0, 128), family=Text(16), peer=ADDRESS),
    "Interface": dict(name=Text(64),  # IFNAMSIZ is 16; node_addresses.interface is 64
                      flags=Items(MAX_FLAGS, Text(32, Over.TRUNCATE), Over.TRUNCATE),
                      addresses=Items(MAX_ADDRESSES_PER_INTERFACE, NESTED, Over.TRUNCATE)),
    "Inventory": dict(computer_name=NAME, os_name=DESCRIPTION, os_version=DESCRIPTION,
                      kernel=DESCRIPTION, arch=DESCRIPTION, agent_version=VERSION,
                      python_version=DESCRIPTION,
                      interfaces=Items(MAX_INTERFACES, NESTED, Over.TRUNCATE),
                      primary_address=ADDRESS),
    "Ping": {},
    "Pong": {},
    # workdir: raw, so a server that stored one with U+0000 (SQLite did) cannot make
    # the agent refuse the command on every connection; the agent fails it instead.
    "Command": dict(invocation_id=ID, command_id=ID, script=SCRIPT, timeout=SECONDS,
                    output_cap=OUTPUT_CAP, workdir=Text(PATH.max_chars, raw=True)),
    "Accepted": dict(invocation_id=ID),
    "Output": dict(invocation_id=ID, stream=STREAM, offset=SIZE, data=OUTPUT_DATA,
                   encoding=Text(16)),
    "Result": dict(invocation_id=ID, status=Text(16), stdout_size=SIZE, stderr_size=SIZE,
                   exit_code=INT32, stdout_truncated=FLAG, stderr_truncated=FLAG,
                   reason=REASON, output_evicted=FLAG),
    "ResultAck": dict(invocation_id=ID),
    "Cancel": dict(invocation_id=ID),
    "Rotate": dict(credential=CREDENTIAL),
    "Rotated": {},
    "Open": dict(channel=CHANNEL, kind=KIND, window=WINDOW, user=USER, rows=TERMINAL_SIZE,
                 cols=TERMINAL_SIZE, term=TERM, host=HOST, port=Span(1, 65535), path=PATH,
                 offset=SIZE, mode=MODE, size=SIZE, sha256=DIGEST, force=FLAG),
    "Opened": dict(channel=CHANNEL, window=WINDOW, size=SIZE, mode=MODE),
    "Window": dict(channel=CHANNEL, credit=CREDIT),
    "Eof": dict(channel=CHANNEL, sha256=DIGEST),
    "Close": dict(channel=CHANNEL, exit_code=INT32, error=ERROR),
    "Resize": dict(channel=CHANNEL, rows=TERMINAL_SIZE, cols=TERMINAL_SIZE),
}


def truncate_text(value: str, limit: Text) -> str:
    """``value`` within ``limit``: cut, ending with the mark, when it is longer."""
    if len(value) <= limit.max_chars:
        return value
    return value[:limit.max_chars - len(TRUNCATED_MARK)] + TRUNCATED_MARK


def unstorable(value: str, raw: bool = False) -> bool:
    """Whether ``value`` holds a character a text column cannot (``raw``: a surrogate)."""
    if value.isascii():  # the common case, one pass in C
        return not raw and "\x00" in value
    if raw:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    return _UNSTORABLE.search(value) is not None


def storable_text(value: str) -> str:
    """``value`` with each character a text column cannot hold replaced by U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)
