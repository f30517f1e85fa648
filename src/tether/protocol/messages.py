"""Every message of the agent-server protocol, its validation and its encoding.

A message is one WebSocket text frame holding one JSON object whose ``t``
field names its type. Fields are checked against the dataclass annotations and
against their bound in ``tether.protocol.limits`` on decode, so a message
object that exists is a valid one, and one small enough to store; a frame that
is not becomes a ``ProtocolError`` with the close code to send. Unknown fields
are ignored (that is how a version grows optional fields); unknown types are not.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Optional, TypeVar, Union

from tether.protocol.errors import CloseCode, ProtocolError
from tether.protocol.ids import is_node_id
from tether.protocol.limits import (
    CHANNEL,
    FIELD_LIMITS,
    WINDOW,
    Items,
    Limit,
    Over,
    Span,
    Text,
    storable_text,
    truncate_text,
    unstorable,
)

STREAMS = ("stdout", "stderr")
ENCODINGS = ("utf-8", "base64")
# Statuses an agent may report in a result; the rest are the server's to decide.
AGENT_RESULT_STATUSES = ("Success", "Failed", "TimedOut", "Cancelled")


@dataclasses.dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """First frame from the agent: who it is and which protocol it speaks."""

    TYPE: ClassVar[str] = "hello"
    protocol: int
    node_id: str
    credential: str
    agent_version: str
    # A check (tether-agent doctor), not a session: the server authenticates,
    # welcomes and closes, leaving the node's real connection alone.
    probe: bool = False

    def __post_init__(self) -> None:
        if not is_node_id(self.node_id):
            raise ValueError("node_id must be 'mi-' and 17 lowercase hex digits")


@dataclasses.dataclass(frozen=True)
class Welcome(Message):
    """Server's answer to a good hello; carries the keepalive the agent must keep."""

    TYPE: ClassVar[str] = "welcome"
    protocol: int
    server_version: str
    keepalive_interval: float
    keepalive_timeout: float

    def __post_init__(self) -> None:
        if self.keepalive_interval <= 0 or self.keepalive_timeout <= 0:
            raise ValueError("keepalive settings must be positive")


@dataclasses.dataclass(frozen=True)
class Address:
    address: str
    prefixlen: int
    family: str  # "inet" or "inet6"
    peer: Optional[str] = None  # the far end of a point-to-point link


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    flags: list[str]  # among "up", "loopback", "pointopoint", "running", ...
    addresses: list[Address]


@dataclasses.dataclass(frozen=True)
class Inventory(Message):
    """What the device is and every address it has, sent on connect and on change."""

    TYPE: ClassVar[str] = "inventory"
    computer_name: str
    os_name: str
    os_version: str
    kernel: str
    arch: str
    agent_version: str
    python_version: str
    interfaces: list[Interface]
    primary_address: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[str] = "ping"


@dataclasses.dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"


@dataclasses.dataclass(frozen=True)
class Command(Message):
    """One invocation to run. Delivered at least once; the agent dedupes by id."""

    TYPE: ClassVar[str] = "command"
    invocation_id: str
    command_id: str
    script: str
    timeout: float
    output_cap: int
    workdir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.output_cap < 0:
            raise ValueError("output_cap must not be negative")


@dataclasses.dataclass(frozen=True)
class Accepted(Message):
    """The agent recorded the invocation durably and started it."""

    TYPE: ClassVar[str] = "accepted"
    invocation_id: str


@dataclasses.dataclass(frozen=True)
class Output(Message):
    """A slice of one stream, placed at ``offset``; resending a slice is harmless."""

    TYPE: ClassVar[str] = "output"
    invocation_id: str
    stream: str
    offset: int
    data: str
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}")
        if self.offset < 0:
            raise ValueError("offset must not be negative")
        if self.encoding == "base64":
            self.payload()  # binascii.Error is a ValueError: refused at decode time

    @classmethod
    def from_bytes(cls, invocation_id: str, stream: str, offset: int, raw: bytes) -> Output:
        """Text stays readable on the wire; only bytes that are not UTF-8 pay for base64."""
        try:
            return cls(invocation_id, stream, offset, raw.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(invocation_id, stream, offset,
                       base64.b64encode(raw).decode("ascii"), "base64")

    def payload(self) -> bytes:
        if self.encoding == "base64":
            return base64.b64decode(self.data.encode("ascii"), validate=True)
        return self.data.encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Result(Message):
    """How an invocation ended and how many bytes of each stream it produced."""

    TYPE: ClassVar[str] = "result"
    invocation_id: str
    status: str
    stdout_size: int
    stderr_size: int
    exit_code: Optional[int] = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    reason: Optional[str] = None
    # The agent had to drop this output from its spool; sizes are what it produced,
    # and the server keeps whatever part of it already arrived.
    output_evicted: bool = False

    def __post_init__(self) -> None:
        if self.status not in AGENT_RESULT_STATUSES:
            raise ValueError(f"status must be one of {AGENT_RESULT_STATUSES}")
        if self.stdout_size < 0 or self.stderr_size < 0:
            raise ValueError("sizes must not be negative")


@dataclasses.dataclass(frozen=True)
class ResultAck(Message):
    """The server stored the result and all output; the agent may forget it."""

    TYPE: ClassVar[str] = "result_ack"
    invocation_id: str


@dataclasses.dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    invocation_id: str


@dataclasses.dataclass(frozen=True)
class Rotate(Message):
    """Protocol 3: keep this credential from now on (and say so with ``rotated``)."""

    TYPE: ClassVar[str] = "rotate"
    credential: str


@dataclasses.dataclass(frozen=True)
class Rotated(Message):
    """Protocol 3: the new credential is on disk; the server may retire the old one."""

    TYPE: ClassVar[str] = "rotated"


# -- channels (protocol 4): see tether.protocol.channels -------------------------

CHANNEL_KINDS = ("shell", "tcp", "file_read", "file_write")


@dataclasses.dataclass(frozen=True)
class Open(Message):
    """Server: open channel ``channel`` of ``kind``; the agent may send ``window`` bytes.

    Which of the optional fields count depends on the kind: a shell takes
    ``user``, ``rows``, ``cols`` and ``term``; a tcp channel ``host`` and ``port``;
    ``file_read`` ``path`` and ``offset`` (resume from there); ``file_write``
    ``path``, ``mode``, ``size``, ``sha256`` and ``force``.
    """

    TYPE: ClassVar[str] = "open"
    channel: int
    kind: str
    window: int
    user: Optional[str] = None
    rows: Optional[int] = None
    cols: Optional[int] = None
    term: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    path: Optional[str] = None
    offset: Optional[int] = None
    mode: Optional[int] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    force: bool = False

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        _check_window(self.window)
        if self.kind not in CHANNEL_KINDS:
            raise ValueError(f"kind must be one of {CHANNEL_KINDS}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError("port must be 1..65535")
        for name in ("offset", "mode", "size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("rows", "cols"):  # what Resize allows, so a shell can always be resized
            value = getattr(self, name)
            if value is not None and not 0 < value < 65536:
                raise ValueError(f"{name} must be 1..65535")


@dataclasses.dataclass(frozen=True)
class Opened(Message):
    """Agent: the channel is open; the server may send ``window`` bytes.

    ``size`` and ``mode``: of the file being read, or, for ``file_write``, the
    bytes already held from an interrupted attempt (``size``), where the
    server resumes.
    """

    TYPE: ClassVar[str] = "opened"
    channel: int
    window: int
    size: Optional[int] = None
    mode: Optional[int] = None

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        _check_window(self.window)
        for name in ("size", "mode"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")


@dataclasses.dataclass(frozen=True)
class Window(Message):
    """Either side: the receiver consumed ``credit`` more bytes; send that much more."""

    TYPE: ClassVar[str] = "window"
    channel: int
    credit: int

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        if not 0 < self.credit <= MAX_WINDOW:
            raise ValueError(f"credit must be 1..{MAX_WINDOW}")


@dataclasses.dataclass(frozen=True)
class Eof(Message):
    """Either side: no more data from me on this channel (a half-close)."""

    TYPE: ClassVar[str] = "eof"
    channel: int
    sha256: Optional[str] = None  # file_read: the digest of the whole file

    def __post_init__(self) -> None:
        _check_channel(self.channel)


@dataclasses.dataclass(frozen=True)
class Close(Message):
    """Either side: the channel is over. ``error`` says why when it failed."""

    TYPE: ClassVar[str] = "close"
    channel: int
    exit_code: Optional[int] = None
    error: Optional[str] = None

    def __post_init__(self) -> None:
        _check_channel(self.channel)


@dataclasses.dataclass(frozen=True)
class Resize(Message):
    """Server: the operator's terminal changed size."""

    TYPE: ClassVar[str] = "resize"
    channel: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        _check_channel(self.channel)
        if not (0 < self.rows < 65536 and 0 < self.cols < 65536):
            raise ValueError("rows and cols must be 1..65535")


MAX_CHANNEL = int(CHANNEL.hi)
MAX_WINDOW = int(WINDOW.hi)


def _check_channel(channel: int) -> None:
    if not 0 < channel <= MAX_CHANNEL:
        raise ValueError(f"channel must be 1..{MAX_CHANNEL}")


def _check_window(window: int) -> None:
    if not 0 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be 0..{MAX_WINDOW}")


def _by_type(*classes: type[Message]) -> dict[str, type[Message]]:
    return {c.TYPE: c for c in classes}


AGENT_MESSAGES: Mapping[str, type[Message]] = _by_type(
    Hello, Inventory, Ping, Accepted, Output, Result, Rotated, Opened, Window, Eof, Close)
SERVER_MESSAGES: Mapping[str, type[Message]] = _by_type(
    Welcome, Pong, Command, ResultAck, Cancel, Rotate, Open, Window, Eof, Close, Resize)


def encode(message: Message) -> str:
    """One compact JSON object; fields still at a None default are left out."""
    body: dict[str, Any] = {"t": message.TYPE}
    for name, optional, nested in _fields_out(type(message)):
        value = getattr(message, name)
        if value is None and optional:
            continue
        body[name] = _plain(value) if nested else value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# Per class, once: each field's name, whether a None there is left out, and whether
# its value may hold dataclasses (``_plain``). Asking ``dataclasses.fields`` and
# ``is_dataclass`` per field per message was a tenth of a 10,000-node fan-out.
_OUT: dict[type, tuple[tuple[str, bool, bool], ...]] = {}


def _fields_out(cls: type) -> tuple[tuple[str, bool, bool], ...]:
    plan = _OUT.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = _OUT[cls] = tuple(
            (f.name, f.default is None, _may_nest(hints[f.name]))
            for f in dataclasses.fields(cls))
    return plan


def _may_nest(tp: Any) -> bool:
    if dataclasses.is_dataclass(tp):
        return True
    return any(_may_nest(a) for a in typing.get_args(tp))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode(frame: Union[str, bytes], allowed: Mapping[str, type[Message]]) -> Message:
    """Parse one frame into a message of one of the ``allowed`` types, or raise."""
    if isinstance(frame, bytes):
        raise ProtocolError(CloseCode.MALFORMED, "binary frames are not used by this protocol")
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(CloseCode.MALFORMED, f"frame is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(CloseCode.MALFORMED, "frame is not a JSON object")
    kind = body.get("t")
    if not isinstance(kind, str):
        raise ProtocolError(CloseCode.MALFORMED, "frame has no string field 't'")
    cls = allowed.get(kind)
    if cls is None:
        raise ProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    try:
        return typing.cast(Message, _build(cls, body))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(CloseCode.MALFORMED, f"bad {kind!r} message: {exc}") from None


_N = TypeVar("_N", int, float)
# What a field's value is checked by: the value and the field's name (for the error)
# in, the value to keep (cut to its limit where that is the rule) out.
Checker = typing.Callable[[Any, str], Any]
# Per class, once: each field's name, its checker, and whether it must be present.
# Reading type hints per field per message (``typing.get_origin``, ``get_args``)
# was a sixth of the server's time in a 10,000-node fan-out.
_IN: dict[type, tuple[tuple[str, Checker, bool], ...]] = {}


def _build(cls: type, body: Mapping[str, Any]) -> Any:
    plan = _IN.get(cls)
    if plan is None:
        plan = _IN[cls] = _plan(cls)
    kwargs: dict[str, Any] = {}
    for name, check, required in plan:
        if name in body:
            kwargs[name] = check(body[name], name)
        elif required:
            raise ValueError(f"missing field {name!r}")
    return cls(**kwargs)


def _plan(cls: type) -> tuple[tuple[str, Checker, bool], ...]:
    hints = typing.get_type_hints(cls)
    limits = FIELD_LIMITS[cls.__name__]  # KeyError: a class without limits is a bug
    return tuple((f.name, _checker(hints[f.name], limits[f.name]),
                  f.default is dataclasses.MISSING) for f in dataclasses.fields(cls))


def _checker(tp: Any, limit: Limit) -> Checker:
    """The checker of one annotation with its limit (see ``FIELD_LIMITS``)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args: tuple[Any, ...] = typing.get_args(tp)
        nullable = type(None) in args
        (inner,) = [a for a in args if a is not type(None)]
        check = _checker(inner, limit)

        def optional(value: Any, where: str) -> Any:
            return None if value is None and nullable else check(value, where)
        return optional
    if origin is list:
        assert isinstance(limit, Items), tp
        (item,) = typing.get_args(tp)
        return _list_checker(limit, _checker(item, limit.each))
    if dataclasses.is_dataclass(tp):
        cls = typing.cast(type, tp)

        def nested(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be an object")
            return _build(cls, value)
        return nested
    if tp is bool:
        return _typed(lambda v: isinstance(v, bool), lambda v, w: v, "bool")
    if tp is int:
        return _typed(lambda v: isinstance(v, int) and not isinstance(v, bool),
                      lambda v, w: _in_span(v, limit, w), "int")
    if tp is float:
        return _typed(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                      lambda v, w: _finite(v, limit, w), "float")
    if tp is str:
        assert isinstance(limit, Text), tp
        return _typed(lambda v: isinstance(v, str), lambda v, w: _text(v, limit, w), "str")
    raise TypeError(f"no checker for {tp!r}")  # a new annotation without one is a bug here


def _typed(is_type: typing.Callable[[Any], bool], then: Checker, name: str) -> Checker:
    def check(value: Any, where: str) -> Any:
        if not is_type(value):
            raise ValueError(f"{where} must be of type {name}")
        return then(value, where)
    return check


def _list_checker(limit: Items, each: Checker) -> Checker:
    def items(value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list")
        if len(value) > limit.max_items:
            if limit.over is Over.REFUSE:
                raise ValueError(f"{where} has more than {limit.max_items} items")
            value = value[:limit.max_items]  # before building them: the rest costs nothing
        return [each(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return items


def _finite(value: float, limit: Limit, where: str) -> float:
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{where} is out of range") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number")
    return _in_span(value, limit, where)


def _text(value: str, limit: Text, where: str) -> str:
    if len(value) > limit.max_chars:
        if limit.over is Over.REFUSE:
            raise ValueError(f"{where} is longer than {limit.max_chars} characters")
        value = truncate_text(value, limit)
    if unstorable(value, limit.raw):  # U+0000, a lone surrogate: see limits.py
        if limit.over is Over.REFUSE or limit.raw:
            raise ValueError(f"{where} holds U+0000 or a lone surrogate")
        value = storable_text(value)
    return value


def _in_span(value: _N, limit: Limit, where: str) -> _N:
    assert isinstance(limit, Span), where
    if not limit.lo <= value <= limit.hi:
        raise ValueError(f"{where} must be {limit.lo}..{limit.hi}")
    return value
