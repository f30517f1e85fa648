"""Channels (protocol 4): the new messages, binary data frames and credit windows.

Everything under test is sans-I/O: ``tether.protocol.channels`` and the channel
messages of ``tether.protocol.messages``. The flow-control tests drive a
``SendWindow`` and a ``ReceiveWindow`` against each other through a simulated
network (FIFO per direction, arbitrary delays) the way the agent and the server
do: the sender may take more than it sends and grant the rest back, the
receiver hands credit back only as it consumes.

Tests marked ``xfail(strict=True)`` pin down product bugs that are not fixed yet.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tether.protocol import AGENT_MESSAGES, SERVER_MESSAGES, CloseCode, Message, ProtocolError
from tether.protocol.channels import (
    DEFAULT_WINDOW,
    MAX_CHUNK,
    ReceiveWindow,
    SendWindow,
    pack_data,
    unpack_data,
)
from tether.protocol.messages import (
    CHANNEL_KINDS,
    MAX_CHANNEL,
    MAX_WINDOW,
    Close,
    Eof,
    Open,
    Opened,
    Resize,
    Window,
    decode,
    encode,
)

Side = Any  # AGENT_MESSAGES or SERVER_MESSAGES

# --- strategies ----------------------------------------------------------------

channels = st.integers(min_value=1, max_value=MAX_CHANNEL)
windows = st.integers(min_value=0, max_value=MAX_WINDOW)
credits = st.integers(min_value=1, max_value=MAX_WINDOW)
# Within each field's bound (tether.protocol.limits; tested in test_messages.py), and
# storable text: U+0000 is refused or replaced there, never round-tripped.
storable = st.characters(codec="utf-8", exclude_characters="\x00")
opt_texts = st.none() | st.text(storable, max_size=64)
opt_non_negative = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
modes = st.none() | st.integers(min_value=0, max_value=0o177777)
terminal_sizes = st.integers(min_value=1, max_value=65535)
sha256s = st.none() | st.text("0123456789abcdef", min_size=64, max_size=64) \
    | st.text(storable, max_size=64)

opens = st.builds(
    Open, channel=channels, kind=st.sampled_from(CHANNEL_KINDS), window=windows,
    user=opt_texts, rows=st.none() | st.integers(1, 65535),
    cols=st.none() | st.integers(1, 65535), term=opt_texts,
    host=opt_texts, port=st.none() | st.integers(min_value=1, max_value=65535),
    path=opt_texts, offset=opt_non_negative, mode=modes, size=opt_non_negative,
    sha256=sha256s, force=st.booleans())
openeds = st.builds(Opened, channel=channels, window=windows,
                    size=opt_non_negative, mode=modes)
window_msgs = st.builds(Window, channel=channels, credit=credits)
eofs = st.builds(Eof, channel=channels, sha256=sha256s)
closes = st.builds(Close, channel=channels,
                   exit_code=st.none() | st.integers(-(2**31), 2**31 - 1),
                   error=opt_texts)
resizes = st.builds(Resize, channel=channels, rows=terminal_sizes, cols=terminal_sizes)

STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Open: opens, Opened: openeds, Window: window_msgs, Eof: eofs, Close: closes,
    Resize: resizes,
}
# Which side may receive each new message: Open/Resize go server -> agent (the
# agent decodes them with SERVER_MESSAGES), Opened agent -> server, the rest both.
RECEIVED_BY_AGENT: set[type[Message]] = {Open, Window, Eof, Close, Resize}
RECEIVED_BY_SERVER: set[type[Message]] = {Opened, Window, Eof, Close}

DIRECTIONS: list[tuple[type[Message], str, Side]] = [
    (cls, "server->agent", SERVER_MESSAGES) for cls in sorted(RECEIVED_BY_AGENT,
                                                              key=lambda c: c.TYPE)
] + [
    (cls, "agent->server", AGENT_MESSAGES) for cls in sorted(RECEIVED_BY_SERVER,
                                                             key=lambda c: c.TYPE)
]
DIRECTION_IDS = [f"{cls.TYPE}:{way}" for cls, way, _ in DIRECTIONS]


def _malformed(frame: str, allowed: Side) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, allowed)
    assert info.value.code is CloseCode.MALFORMED, info.value
    return info.value


# --- message tables ------------------------------------------------------------


def test_new_messages_are_registered_on_the_right_sides() -> None:
    for cls in STRATEGIES:
        assert (SERVER_MESSAGES.get(cls.TYPE) is cls) == (cls in RECEIVED_BY_AGENT), cls
        assert (AGENT_MESSAGES.get(cls.TYPE) is cls) == (cls in RECEIVED_BY_SERVER), cls
    assert {c.TYPE for c in STRATEGIES} == {"open", "opened", "window", "eof", "close",
                                            "resize"}


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize(("cls", "way", "allowed"), DIRECTIONS, ids=DIRECTION_IDS)
@given(data=st.data())
def test_round_trip(cls: type[Message], way: str, allowed: Side, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    frame = encode(message)
    assert json.loads(frame)["t"] == cls.TYPE
    wire = frame.encode("utf-8")  # a valid WebSocket text frame
    assert decode(wire.decode("utf-8"), allowed) == message


@pytest.mark.parametrize("cls", [Window, Eof, Close], ids=lambda c: c.TYPE)
@given(data=st.data())
def test_both_way_messages_decode_the_same_on_both_sides(cls: type[Message],
                                                         data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    frame = encode(message)
    assert decode(frame, AGENT_MESSAGES) == decode(frame, SERVER_MESSAGES) == message


@pytest.mark.parametrize(("cls", "wrong_side"), [
    (Open, AGENT_MESSAGES), (Resize, AGENT_MESSAGES), (Opened, SERVER_MESSAGES)],
    ids=["open-to-server", "resize-to-server", "opened-to-agent"])
@given(data=st.data())
def test_one_way_messages_are_unknown_the_other_way(cls: type[Message], wrong_side: Side,
                                                    data: st.DataObject) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(data.draw(STRATEGIES[cls])), wrong_side)
    assert info.value.code is CloseCode.UNKNOWN_TYPE
    assert cls.TYPE in info.value.reason


def test_open_encoding_leaves_out_unset_fields() -> None:
    body = json.loads(encode(Open(7, "tcp", 1024, host="localhost", port=22)))
    assert body == {"t": "open", "channel": 7, "kind": "tcp", "window": 1024,
                    "host": "localhost", "port": 22, "force": False}


@pytest.mark.parametrize("message", [
    Open(MAX_CHANNEL, "shell", 0),
    Open(1, "file_write", MAX_WINDOW, port=1, offset=0, size=0, mode=0o644),
    Open(1, "tcp", DEFAULT_WINDOW, host="h", port=65535),
    Open(1, "shell", 1, rows=1, cols=65535),  # the range Resize allows
    Opened(MAX_CHANNEL, 0),
    Opened(1, MAX_WINDOW, size=0, mode=0),
    Window(1, 1),
    Window(MAX_CHANNEL, MAX_WINDOW),
    Eof(1),
    Close(1, exit_code=-1, error=""),
    Resize(1, 1, 1),
    Resize(MAX_CHANNEL, 65535, 65535),
], ids=repr)
def test_boundary_values_are_accepted(message: Message) -> None:
    allowed = SERVER_MESSAGES if type(message) in RECEIVED_BY_AGENT else AGENT_MESSAGES
    assert decode(encode(message), allowed) == message


# --- invalid values ----------------------------------------------------------------

OPEN = {"t": "open", "channel": 1, "kind": "shell", "window": DEFAULT_WINDOW}
OPENED = {"t": "opened", "channel": 1, "window": DEFAULT_WINDOW}
WINDOW = {"t": "window", "channel": 1, "credit": 1}
EOF = {"t": "eof", "channel": 1}
CLOSE = {"t": "close", "channel": 1}
RESIZE = {"t": "resize", "channel": 1, "rows": 24, "cols": 80}
BASES: list[tuple[dict[str, Any], Side]] = [
    (OPEN, SERVER_MESSAGES), (OPENED, AGENT_MESSAGES), (WINDOW, AGENT_MESSAGES),
    (WINDOW, SERVER_MESSAGES), (EOF, AGENT_MESSAGES), (EOF, SERVER_MESSAGES),
    (CLOSE, AGENT_MESSAGES), (CLOSE, SERVER_MESSAGES), (RESIZE, SERVER_MESSAGES)]


@pytest.mark.parametrize(("base", "allowed"), BASES, ids=lambda b: b.get("t", ""))
def test_bases_are_valid(base: dict[str, Any], allowed: Side) -> None:
    decode(json.dumps(base), allowed)


INVALID: list[tuple[dict[str, Any], Side, str, Any]] = [
    # channel: 1..2**32-1, an int
    *[(base, allowed, "channel", value) for base, allowed in BASES
      for value in (0, -1, MAX_CHANNEL + 1, 2**64, 1.0, True, "1", None)],
    # windows: 0..MAX_WINDOW
    *[(base, allowed, "window", value) for base, allowed in BASES[:2]
      for value in (-1, MAX_WINDOW + 1, 2**63, 10**100, 1.5, False)],
    (OPEN, SERVER_MESSAGES, "kind", "pty"),
    (OPEN, SERVER_MESSAGES, "kind", ""),
    (OPEN, SERVER_MESSAGES, "kind", "SHELL"),
    (OPEN, SERVER_MESSAGES, "kind", None),
    (OPEN, SERVER_MESSAGES, "kind", 1),
    (OPEN, SERVER_MESSAGES, "port", 0),
    (OPEN, SERVER_MESSAGES, "port", 65536),
    (OPEN, SERVER_MESSAGES, "port", -1),
    (OPEN, SERVER_MESSAGES, "port", "22"),
    (OPEN, SERVER_MESSAGES, "rows", -1),
    (OPEN, SERVER_MESSAGES, "cols", -1),
    (OPEN, SERVER_MESSAGES, "offset", -1),
    (OPEN, SERVER_MESSAGES, "mode", -1),
    (OPEN, SERVER_MESSAGES, "size", -1),
    (OPEN, SERVER_MESSAGES, "force", 1),
    (OPEN, SERVER_MESSAGES, "force", None),
    (OPEN, SERVER_MESSAGES, "user", 0),
    (OPEN, SERVER_MESSAGES, "path", ["/etc/passwd"]),
    (OPENED, AGENT_MESSAGES, "size", "0"),
    *[(WINDOW, side, "credit", value) for side in (AGENT_MESSAGES, SERVER_MESSAGES)
      for value in (0, -1, MAX_WINDOW + 1, 2**64, 1.0, None)],
    (EOF, SERVER_MESSAGES, "sha256", 5),
    (CLOSE, AGENT_MESSAGES, "exit_code", "1"),
    (CLOSE, AGENT_MESSAGES, "exit_code", 1.5),
    (CLOSE, AGENT_MESSAGES, "error", False),
    (RESIZE, SERVER_MESSAGES, "rows", 0),
    (RESIZE, SERVER_MESSAGES, "cols", 0),
    (RESIZE, SERVER_MESSAGES, "rows", -1),
    (RESIZE, SERVER_MESSAGES, "rows", 65536),
    (RESIZE, SERVER_MESSAGES, "cols", 65536),
    (RESIZE, SERVER_MESSAGES, "cols", None),
]


@pytest.mark.parametrize(("base", "allowed", "field", "value"), INVALID,
                         ids=[f"{b['t']}.{f}={v!r}" for b, _, f, v in INVALID])
def test_invalid_field_value_is_malformed(base: dict[str, Any], allowed: Side, field: str,
                                          value: Any) -> None:
    _malformed(json.dumps({**base, field: value}), allowed)


@pytest.mark.parametrize(("base", "allowed"), BASES, ids=lambda b: b.get("t", ""))
def test_missing_required_field_is_malformed(base: dict[str, Any], allowed: Side) -> None:
    for field in base.keys() - {"t"}:
        body = {k: v for k, v in base.items() if k != field}
        assert field in _malformed(json.dumps(body), allowed).reason


@pytest.mark.parametrize("build", [
    lambda: Open(0, "shell", 1),
    lambda: Open(1, "shell", -1),
    lambda: Open(1, "shell", MAX_WINDOW + 1),
    lambda: Open(1, "bogus", 1),
    lambda: Open(1, "tcp", 1, port=0),
    lambda: Open(1, "tcp", 1, port=65536),
    lambda: Open(1, "shell", 1, rows=-1),
    lambda: Open(1, "file_read", 1, offset=-1),
    lambda: Opened(0, 1),
    lambda: Opened(1, -1),
    lambda: Window(1, 0),
    lambda: Window(0, 1),
    lambda: Window(1, MAX_WINDOW + 1),
    lambda: Eof(0),
    lambda: Close(0),
    lambda: Close(MAX_CHANNEL + 1),
    lambda: Resize(1, 0, 80),
    lambda: Resize(1, 24, 0),
])
def test_invalid_messages_cannot_be_built(build: Callable[[], Message]) -> None:
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("field", ["size", "mode"])
def test_opened_refuses_negative_size_and_mode(field: str) -> None:
    _malformed(json.dumps({**OPENED, field: -1}), AGENT_MESSAGES)


@pytest.mark.parametrize(("field", "value"), [("rows", 0), ("cols", 0), ("rows", 65536),
                                              ("cols", 2**40)])
def test_open_terminal_size_matches_resize_range(field: str, value: int) -> None:
    _malformed(json.dumps({**OPEN, field: value}), SERVER_MESSAGES)


# --- data frames ---------------------------------------------------------------------


@given(channel=channels, data=st.binary(min_size=1, max_size=MAX_CHUNK))
@example(channel=1, data=b"x")
@example(channel=MAX_CHANNEL, data=b"\x00" * MAX_CHUNK)
def test_pack_unpack_round_trip(channel: int, data: bytes) -> None:
    frame = pack_data(channel, data)
    assert len(frame) == 4 + len(data)
    assert frame[:4] == channel.to_bytes(4, "big")
    assert unpack_data(frame) == (channel, data)


@pytest.mark.parametrize(("channel", "data"), [
    (0, b"x"), (-1, b"x"), (MAX_CHANNEL + 1, b"x"), (1, b""), (1, b"x" * (MAX_CHUNK + 1))])
def test_pack_refuses_bad_frames(channel: int, data: bytes) -> None:
    with pytest.raises(ValueError):
        pack_data(channel, data)


@pytest.mark.parametrize("frame", [
    b"", b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01",  # empty / header only
    b"\x00\x00\x00\x00x",  # channel 0
    b"\x00\x00\x00\x00" + b"x" * MAX_CHUNK,
    b"\x00\x00\x00\x01" + b"x" * (MAX_CHUNK + 1),  # oversize
    b"\xff\xff\xff\xff" + b"x" * (10 * MAX_CHUNK),
], ids=lambda f: f"len{len(f)}")
def test_unpack_refuses_bad_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        unpack_data(frame)
    assert info.value.code is CloseCode.MALFORMED


def _frames_near_the_limits() -> st.SearchStrategy[bytes]:
    lengths = st.integers(0, 8) | st.integers(MAX_CHUNK - 4, MAX_CHUNK + 8)
    header = st.sampled_from([0, 1, MAX_CHANNEL]) | st.integers(0, MAX_CHANNEL)
    return st.builds(lambda ch, n, fill: ch.to_bytes(4, "big") + bytes([fill]) * n,
                     header, lengths, st.integers(0, 255))


@given(st.binary(max_size=64) | _frames_near_the_limits())
@example(b"")
@example(b"\x00\x00\x00\x00")
@example(b"\x00\x00\x00\x01" + b"a" * MAX_CHUNK)
@example(b"\x00\x00\x00\x01" + b"a" * (MAX_CHUNK + 1))
def test_any_bytes_unpack_to_a_valid_frame_or_protocol_error(frame: bytes) -> None:
    try:
        channel, data = unpack_data(frame)
    except ProtocolError as exc:  # anything else propagates and fails the test
        assert exc.code is CloseCode.MALFORMED
        assert len(exc.reason.encode("utf-8")) <= 123
        assert (len(frame) <= 4 or len(frame) > 4 + MAX_CHUNK
                or frame[:4] == b"\x00\x00\x00\x00")
        return
    assert isinstance(channel, int)
    assert isinstance(data, bytes)
    assert 0 < channel <= MAX_CHANNEL
    assert 1 <= len(data) <= MAX_CHUNK
    assert pack_data(channel, data) == frame


# --- windows: unit behaviour --------------------------------------------------------


def test_send_window_takes_at_most_one_chunk_and_what_is_available() -> None:
    window = SendWindow(3 * MAX_CHUNK)
    assert window.take(10 * MAX_CHUNK) == MAX_CHUNK
    assert window.take(5) == 5
    assert window.available == 2 * MAX_CHUNK - 5
    assert window.take(2 * MAX_CHUNK) == MAX_CHUNK
    assert window.take(2 * MAX_CHUNK) == MAX_CHUNK - 5
    assert window.take(1) == 0
    assert window.available == 0
    window.grant(7)
    assert window.take(100) == 7
    assert window.take(100) == 0


def test_send_window_of_zero_waits_until_granted() -> None:
    window = SendWindow(0)
    assert window.take(1) == 0
    window.grant(DEFAULT_WINDOW)
    assert window.take(DEFAULT_WINDOW) == MAX_CHUNK


def test_receive_window_accepts_exactly_its_window() -> None:
    window = ReceiveWindow(100)
    window.received(60)
    assert window.remaining == 40
    window.received(40)
    assert window.remaining == 0
    assert window.outstanding == 100


@pytest.mark.parametrize(("size", "before", "extra"), [
    (100, 0, 101), (100, 100, 1), (100, 99, 2), (DEFAULT_WINDOW, DEFAULT_WINDOW - 1, MAX_CHUNK),
    (0, 0, 1)])
def test_receive_window_over_the_window_is_flow_control(size: int, before: int,
                                                        extra: int) -> None:
    window = ReceiveWindow(size)
    if before:
        window.received(before)
    with pytest.raises(ProtocolError) as info:
        window.received(extra)
    assert info.value.code is CloseCode.FLOW_CONTROL
    assert window.outstanding == before  # the refused bytes are not counted


def test_receive_window_returns_credit_in_half_window_batches() -> None:
    window = ReceiveWindow(100)
    window.received(100)
    assert window.consumed(30) == 0
    assert window.consumed(19) == 0
    assert window.outstanding == 100
    assert window.consumed(1) == 50  # exactly half: everything consumed so far
    assert window.outstanding == 50
    assert window.remaining == 50
    assert window.consumed(49) == 0
    assert window.consumed(1) == 50
    assert window.outstanding == 0


def test_default_window_credit_fits_a_window_message() -> None:
    window = ReceiveWindow()
    assert window.size == DEFAULT_WINDOW
    window.received(DEFAULT_WINDOW)
    credit = window.consumed(DEFAULT_WINDOW)
    assert credit == DEFAULT_WINDOW
    assert Window(1, credit).credit == credit


# --- windows: a sender and a receiver against each other ------------------------------


class FlowControl(RuleBasedStateMachine):
    """A sender and a receiver on one channel, with data and credit in flight.

    The sender behaves like the agent: it takes up to what it wants, sends
    part of it (perhaps nothing: the source had less) and grants the rest
    back. The receiver consumes arbitrary amounts of what it holds and sends
    the credit ``consumed`` returns. Both directions are FIFO.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.payload = b""
        self.sent = 0  # bytes of payload handed to the network
        self.sender = SendWindow(0)
        self.receiver = ReceiveWindow(1)
        self.data_in_flight: deque[bytes] = deque()
        self.credit_in_flight: deque[int] = deque()
        self.delivered = bytearray()  # received, in order
        self.consumed = 0  # of delivered

    @initialize(size=st.sampled_from([1, 2, 3, 7, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1,
                                      2 * MAX_CHUNK + 1, DEFAULT_WINDOW])
                | st.integers(1, 3 * MAX_CHUNK),
                windows_of_data=st.floats(0.0, 4.0), granted_later=st.booleans())
    def start(self, size: int, windows_of_data: float, granted_later: bool) -> None:
        self.size = size
        total = int(size * windows_of_data) + 1
        self.payload = (bytes(range(251)) * (total // 251 + 1))[:total]
        self.receiver = ReceiveWindow(size)
        # The agent opens with the announced window; the server starts at 0 and
        # grants the window that ``opened`` announces.
        self.sender = SendWindow(0 if granted_later else size)
        if granted_later:
            self.sender.grant(size)

    @rule()
    def wait(self) -> None:
        """Nothing happens (and a finished exchange still has a rule to run)."""

    # -- sender

    @precondition(lambda self: self.sent < len(self.payload))
    @rule(wanted=st.integers(1, 2 * MAX_CHUNK), short=st.integers(0, MAX_CHUNK))
    def send(self, wanted: int, short: int) -> None:
        n = self.sender.take(wanted)
        assert 0 <= n <= min(wanted, MAX_CHUNK)
        actual = max(0, min(n - short, len(self.payload) - self.sent))
        if n > actual:
            self.sender.grant(n - actual)  # the source had less: give the rest back
        if actual:
            chunk = self.payload[self.sent:self.sent + actual]
            self.data_in_flight.append(pack_data(5, chunk))
            self.sent += actual

    @precondition(lambda self: bool(self.credit_in_flight))
    @rule()
    def deliver_credit(self) -> None:
        self.sender.grant(self.credit_in_flight.popleft())

    # -- receiver

    @precondition(lambda self: bool(self.data_in_flight))
    @rule()
    def deliver_data(self) -> None:
        channel, data = unpack_data(self.data_in_flight.popleft())
        assert channel == 5
        self.receiver.received(len(data))  # must never raise FLOW_CONTROL
        self.delivered += data

    @precondition(lambda self: self.consumed < len(self.delivered))
    @rule(fraction=st.floats(0.0, 1.0))
    def consume(self, fraction: float) -> None:
        pending = len(self.delivered) - self.consumed
        n = max(1, int(pending * fraction))
        self.consumed += n
        credit = self.receiver.consumed(n)
        assert credit >= 0
        if credit:
            self.credit_in_flight.append(Window(5, credit).credit)

    # -- safety

    @invariant()
    def credit_is_conserved(self) -> None:
        in_flight = sum(len(f) - 4 for f in self.data_in_flight)
        assert (self.sender.available + in_flight + self.receiver.outstanding
                + sum(self.credit_in_flight)) == self.size

    @invariant()
    def nobody_holds_more_than_a_window(self) -> None:
        assert 0 <= self.receiver.outstanding <= self.size
        assert 0 <= self.sender.available <= self.size
        assert self.consumed <= len(self.delivered) <= self.sent

    @invariant()
    def data_arrives_in_order(self) -> None:
        assert bytes(self.delivered) == self.payload[:len(self.delivered)]

    # -- liveness

    @invariant()
    def a_quiet_blocked_sender_always_has_credit_coming(self) -> None:
        """Everything delivered and consumed, nothing in flight: the sender may send."""
        quiet = (not self.data_in_flight and not self.credit_in_flight
                 and self.consumed == len(self.delivered))
        if quiet and self.sent < len(self.payload):
            assert self.sender.available > 0, (
                f"deadlock: window {self.size}, outstanding {self.receiver.outstanding}")

    def teardown(self) -> None:
        """From wherever the run stopped, a cooperative finish moves every byte."""
        if not self.size:
            return
        for _ in range(10 * (len(self.payload) + 1)):
            if self.consumed == len(self.payload) and self.sent == len(self.payload):
                break
            progressed = False
            while self.credit_in_flight:
                self.deliver_credit()
                progressed = True
            while self.data_in_flight:
                self.deliver_data()
                progressed = True
            if self.consumed < len(self.delivered):
                self.consume(1.0)
                progressed = True
            if self.sent < len(self.payload) and self.sender.available:
                self.send(MAX_CHUNK, 0)
                progressed = True
            assert progressed, (f"deadlock: window {self.size}, sent {self.sent} of "
                                f"{len(self.payload)}, available {self.sender.available}, "
                                f"outstanding {self.receiver.outstanding}")
        assert bytes(self.delivered) == self.payload
        assert self.consumed == len(self.payload)


TestFlowControl = FlowControl.TestCase
TestFlowControl.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@settings(deadline=None, max_examples=200)
@given(size=st.integers(1, 4 * MAX_CHUNK), data=st.data())
def test_random_exchange_moves_every_byte_without_deadlock(size: int,
                                                           data: st.DataObject) -> None:
    """A lock-step run: random chunk sizes and consumption steps, to completion."""
    total = data.draw(st.integers(0, 4 * size + 64), label="total")
    sender, receiver = SendWindow(size), ReceiveWindow(size)
    sent = received = consumed = 0
    steps = 0
    while consumed < total:
        steps += 1
        assert steps < 100_000
        options = []
        if sent < total and sender.available:
            options.append("send")
        if consumed < received:
            options.append("consume")
        assert options, (f"deadlock: window {size}, sent {sent}/{total}, "
                         f"outstanding {receiver.outstanding}")
        if data.draw(st.sampled_from(options), label="action") == "send":
            n = sender.take(data.draw(st.integers(1, total - sent), label="chunk"))
            assert 0 < n <= MAX_CHUNK
            receiver.received(n)
            sent += n
            received += n
        else:
            step = data.draw(st.integers(1, received - consumed), label="step")
            consumed += step
            credit = receiver.consumed(step)
            if credit:
                sender.grant(credit)
        assert receiver.outstanding <= size
        assert sender.available + receiver.outstanding == size
    assert sent == received == consumed == total


def test_blocked_sender_is_released_once_the_window_is_consumed() -> None:
    """The worst case for batching: every byte consumed one at a time."""
    for size in (1, 2, 3, 5, 100, 101):
        sender, receiver = SendWindow(size), ReceiveWindow(size)
        n = sender.take(size)
        receiver.received(n)
        assert sender.take(1) == 0
        credit = 0
        for _ in range(n):
            credit = receiver.consumed(1) or credit
            if credit:
                sender.grant(credit)
                break
        assert credit, f"window {size}: all consumed, no credit returned"
        assert sender.take(size) == credit
