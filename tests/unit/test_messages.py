"""Messages: every valid message survives encode/decode, and garbage never crashes decode.

Text strategies use Hypothesis' default alphabet, which leaves out lone
surrogates (U+D800-U+DFFF). ``encode`` keeps them as they are
(``ensure_ascii=False``), so a str holding one round-trips through
encode/decode but cannot become the UTF-8 bytes of a WebSocket text frame;
see ``test_lone_surrogates_cannot_reach_the_wire``; decode refuses them.

Tests named ``test_regression_*`` pin down bugs found (and fixed) in
``tether.protocol``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import string
import typing
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether.protocol import (
    AGENT_MESSAGES,
    SERVER_MESSAGES,
    Accepted,
    Cancel,
    CloseCode,
    Command,
    Hello,
    Inventory,
    Message,
    Output,
    Ping,
    Pong,
    ProtocolError,
    Result,
    ResultAck,
    Rotate,
    Rotated,
    Welcome,
    decode,
    encode,
)
from tether.protocol.limits import (
    FIELD_LIMITS,
    INT32,
    MODE,
    OUTPUT_CAP,
    REPLACEMENT,
    SECONDS,
    TRUNCATED_MARK,
    Flag,
    Items,
    Limit,
    Nested,
    Over,
    Span,
    Text,
)
from tether.protocol.messages import (
    AGENT_RESULT_STATUSES,
    CHANNEL_KINDS,
    MAX_WINDOW,
    STREAMS,
    Address,
    Close,
    Eof,
    Interface,
    Open,
    Opened,
    Resize,
    Window,
)
from tether.protocol.versions import PROTOCOL_VERSION, SUPPORTED_VERSIONS, check_version

ALL_MESSAGES = {**AGENT_MESSAGES, **SERVER_MESSAGES}
GARBAGE_CODES = {CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE}

# --- strategies for valid messages ------------------------------------------

node_ids = st.text("0123456789abcdef", min_size=17, max_size=17).map(lambda h: "mi-" + h)
# Within the smallest bound of a string (tether.protocol.limits); the bounds
# themselves are tested field by field below.
# No lone surrogates (see the module docstring) and no U+0000: a valid message holds
# only what a text column can (see test_every_text_field_holds_only_what_a_column_can).
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
opt_texts = st.none() | texts
ints = st.integers(int(INT32.lo), int(INT32.hi))
positive_floats = st.floats(min_value=0.0, exclude_min=True, max_value=SECONDS.hi,
                            allow_nan=False, allow_infinity=False)
non_negative = st.integers(min_value=0, max_value=2**63 - 1)

addresses = st.builds(Address, address=texts, prefixlen=st.integers(0, 128),
                      family=st.sampled_from(["inet", "inet6"]) | texts.map(lambda t: t[:16]),
                      peer=opt_texts)
interfaces = st.builds(Interface, name=texts,
                       flags=st.lists(texts.map(lambda t: t[:32]), max_size=5),
                       addresses=st.lists(addresses, max_size=4))

channels = st.integers(1, 2**32 - 1)
windows = st.integers(0, MAX_WINDOW)

STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, protocol=ints, node_id=node_ids, credential=texts,
                     agent_version=texts),
    Welcome: st.builds(Welcome, protocol=ints, server_version=texts,
                       keepalive_interval=positive_floats, keepalive_timeout=positive_floats),
    Inventory: st.builds(Inventory, computer_name=texts, os_name=texts, os_version=texts,
                         kernel=texts, arch=texts, agent_version=texts, python_version=texts,
                         interfaces=st.lists(interfaces, max_size=4),
                         primary_address=opt_texts),
    Ping: st.just(Ping()),
    Pong: st.just(Pong()),
    Command: st.builds(Command, invocation_id=texts, command_id=texts, script=texts,
                       timeout=positive_floats, output_cap=st.integers(0, int(OUTPUT_CAP.hi)),
                       workdir=opt_texts),
    Accepted: st.builds(Accepted, invocation_id=texts),
    Output: st.builds(Output, invocation_id=texts, stream=st.sampled_from(STREAMS),
                      offset=non_negative, data=texts, encoding=st.just("utf-8"))
    | st.builds(Output, invocation_id=texts, stream=st.sampled_from(STREAMS),
                offset=non_negative, encoding=st.just("base64"),
                data=st.binary().map(lambda b: base64.b64encode(b).decode("ascii")))
    | st.builds(Output.from_bytes, texts, st.sampled_from(STREAMS), non_negative, st.binary()),
    Result: st.builds(Result, invocation_id=texts, status=st.sampled_from(AGENT_RESULT_STATUSES),
                      stdout_size=non_negative, stderr_size=non_negative,
                      exit_code=st.none() | ints, stdout_truncated=st.booleans(),
                      stderr_truncated=st.booleans(), reason=opt_texts),
    ResultAck: st.builds(ResultAck, invocation_id=texts),
    Cancel: st.builds(Cancel, invocation_id=texts),
    Rotate: st.builds(Rotate, credential=texts),
    Rotated: st.just(Rotated()),
    Open: st.builds(Open, channel=channels, kind=st.sampled_from(CHANNEL_KINDS),
                    window=windows, user=opt_texts, rows=st.none() | st.integers(1, 65535),
                    host=opt_texts, port=st.none() | st.integers(1, 65535),
                    path=opt_texts, offset=st.none() | non_negative, sha256=opt_texts,
                    force=st.booleans()),
    Opened: st.builds(Opened, channel=channels, window=windows,
                      size=st.none() | non_negative,
                      mode=st.none() | st.integers(0, int(MODE.hi))),
    Window: st.builds(Window, channel=channels, credit=st.integers(1, MAX_WINDOW)),
    Eof: st.builds(Eof, channel=channels, sha256=opt_texts),
    Close: st.builds(Close, channel=channels, exit_code=st.none() | ints, error=opt_texts),
    Resize: st.builds(Resize, channel=channels, rows=st.integers(1, 65535),
                      cols=st.integers(1, 65535)),
}
# Channel messages that go both ways (protocol 4); every other type has one direction.
BOTH_WAYS = {"window", "eof", "close"}

DIRECTIONS = [(name, cls, AGENT_MESSAGES) for name, cls in AGENT_MESSAGES.items()] + [
    (name, cls, SERVER_MESSAGES) for name, cls in SERVER_MESSAGES.items()]
DIRECTION_IDS = [name for name, _, _ in DIRECTIONS]

# Arbitrary JSON values. NaN/Infinity and integers beyond float range are left
# out here; the regression tests below cover them.
json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _body(message: Message) -> dict[str, Any]:
    body = json.loads(encode(message))
    assert isinstance(body, dict)
    return body


def _assert_sendable(message: Message, allowed: Any) -> None:
    """What decode returns must be a message we could put back on the wire unchanged."""
    assert type(message) in allowed.values()
    wire = encode(message).encode("utf-8")
    assert decode(wire.decode("utf-8"), allowed) == message


def _decode_or_garbage(frame: Any, allowed: Any = ALL_MESSAGES) -> Message | ProtocolError:
    try:
        message = decode(frame, allowed)
    except ProtocolError as exc:
        assert exc.code in GARBAGE_CODES, exc
        assert len(exc.reason.encode("utf-8")) <= 123
        return exc
    _assert_sendable(message, allowed)
    return message


def _malformed(frame: str | bytes, allowed: Any = ALL_MESSAGES) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, allowed)
    assert info.value.code is CloseCode.MALFORMED, info.value
    return info.value


# --- round trip --------------------------------------------------------------


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(ALL_MESSAGES.values())
    assert set(AGENT_MESSAGES) & set(SERVER_MESSAGES) == BOTH_WAYS
    for name, cls in ALL_MESSAGES.items():
        assert name == cls.TYPE


@pytest.mark.parametrize(("name", "cls", "allowed"), DIRECTIONS, ids=DIRECTION_IDS)
@given(data=st.data())
def test_round_trip(name: str, cls: type[Message], allowed: Any, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    frame = encode(message)
    assert json.loads(frame)["t"] == name
    frame.encode("utf-8")  # a valid WebSocket text frame
    decoded = decode(frame, allowed)
    assert decoded == message
    if isinstance(message, Output):
        assert isinstance(decoded, Output)
        assert decoded.payload() == message.payload()


@pytest.mark.parametrize(("name", "cls", "allowed"), DIRECTIONS, ids=DIRECTION_IDS)
@given(data=st.data())
def test_wrong_direction_is_unknown_type(name: str, cls: type[Message], allowed: Any,
                                         data: st.DataObject) -> None:
    other = SERVER_MESSAGES if allowed is AGENT_MESSAGES else AGENT_MESSAGES
    if name in BOTH_WAYS:
        assert name == decode(encode(data.draw(STRATEGIES[cls])), other).TYPE
        return
    with pytest.raises(ProtocolError) as info:
        decode(encode(data.draw(STRATEGIES[cls])), other)
    assert info.value.code is CloseCode.UNKNOWN_TYPE
    assert name in info.value.reason


@pytest.mark.parametrize(("name", "cls", "allowed"), DIRECTIONS, ids=DIRECTION_IDS)
@given(data=st.data())
def test_unknown_fields_are_ignored(name: str, cls: type[Message], allowed: Any,
                                    data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    body = _body(message)
    known = {f.name for f in dataclasses.fields(cls)} | {"t"}
    extra = data.draw(st.dictionaries(st.text().filter(lambda k: k not in known), json_values,
                                      min_size=1, max_size=4))
    body.update(extra)
    # Nested objects grow fields too.
    for iface in body["interfaces"] if cls is Inventory else []:
        iface["mtu"] = 1500
        for addr in iface["addresses"]:
            addr["scope"] = {"global": True}
    assert decode(json.dumps(body), allowed) == message


@pytest.mark.parametrize(("name", "cls", "allowed"), DIRECTIONS, ids=DIRECTION_IDS)
@given(data=st.data())
def test_missing_required_field_is_malformed(name: str, cls: type[Message], allowed: Any,
                                             data: st.DataObject) -> None:
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not required:
        return
    body = _body(data.draw(STRATEGIES[cls]))
    field = data.draw(st.sampled_from(required))
    del body[field]
    error = _malformed(json.dumps(body), allowed)
    assert field in error.reason


def test_none_defaults_are_left_out() -> None:
    body = _body(Result("i", "Success", 1, 2))
    assert "exit_code" not in body
    assert "reason" not in body
    assert body["stdout_truncated"] is False
    assert _body(Command("i", "c", "true", 1.0, 0)).keys() == {
        "t", "invocation_id", "command_id", "script", "timeout", "output_cap"}


def test_integer_accepted_where_float_expected() -> None:
    frame = '{"t":"welcome","protocol":1,"server_version":"s",' \
            '"keepalive_interval":30,"keepalive_timeout":10}'
    welcome = decode(frame, SERVER_MESSAGES)
    assert isinstance(welcome, Welcome)
    assert welcome.keepalive_interval == 30.0
    assert isinstance(welcome.keepalive_interval, float)


# --- garbage -----------------------------------------------------------------


@given(st.binary())
def test_binary_frames_are_malformed(frame: bytes) -> None:
    error = _malformed(frame)
    assert "binary" in error.reason


@given(st.text(st.characters(codec=None, exclude_categories=())))
@example("")
@example("{}")
@example('{"t":"ping"}')
def test_arbitrary_text_never_crashes(frame: str) -> None:
    # The text may hold lone surrogates: decode must still only raise ProtocolError.
    try:
        decode(frame, ALL_MESSAGES)
    except ProtocolError as exc:
        assert exc.code in GARBAGE_CODES


@given(json_values)
def test_arbitrary_json_never_crashes(value: Any) -> None:
    result = _decode_or_garbage(json.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError)
        assert result.code is CloseCode.MALFORMED


@st.composite
def message_shaped(draw: Callable[..., Any]) -> str:
    """Objects with a real type name and its field names, holding arbitrary values."""
    name = draw(st.sampled_from(sorted(ALL_MESSAGES)))
    cls = ALL_MESSAGES[name]
    base = _body(draw(STRATEGIES[cls]))
    fields = sorted(base.keys() - {"t"})
    chosen = draw(st.lists(st.sampled_from(fields), unique=True)) if fields else []
    for field in chosen:
        if draw(st.booleans()):
            del base[field]
        else:
            base[field] = draw(json_values)
    ifaces = base.get("interfaces")
    if isinstance(ifaces, list) and ifaces and isinstance(ifaces[0], dict):
        key = draw(st.sampled_from(["name", "flags", "addresses"]))
        ifaces[0][key] = draw(json_values)
    return json.dumps(base)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(message_shaped())
def test_message_shaped_garbage_never_crashes(frame: str) -> None:
    _decode_or_garbage(frame)


@pytest.mark.parametrize("frame", [
    "", " ", "not json", "{", '{"t":"ping"', "'single'", "{'t': 'ping'}", "\x00",
    '{"t":"ping"}{"t":"ping"}', "[", "]", "nul", "tru",
])
def test_non_json_is_malformed(frame: str) -> None:
    assert "not JSON" in _malformed(frame).reason


@pytest.mark.parametrize("frame", [
    "[]", '[{"t":"ping"}]', '"ping"', "1", "null", "true", "1.5",
])
def test_json_that_is_not_an_object_is_malformed(frame: str) -> None:
    _malformed(frame)


@pytest.mark.parametrize("frame", [
    "{}", '{"type":"ping"}', '{"t":null}', '{"t":1}', '{"t":["ping"]}', '{"t":{"ping":1}}',
    '{"T":"ping"}',
])
def test_missing_or_non_string_t_is_malformed(frame: str) -> None:
    assert "'t'" in _malformed(frame).reason


@pytest.mark.parametrize("name", ["pingg", "PING", "", "hello\n", "délété", "x" * 30])
def test_unknown_type_names_the_type(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps({"t": name}), ALL_MESSAGES)
    assert info.value.code is CloseCode.UNKNOWN_TYPE
    assert repr(name) in info.value.reason


def test_unknown_type_with_long_name_keeps_reason_short() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps({"t": "ü" * 10_000}), ALL_MESSAGES)
    assert info.value.code is CloseCode.UNKNOWN_TYPE
    assert len(info.value.reason.encode("utf-8")) <= 123
    assert "ü" * 20 in info.value.reason


OUTPUT = {"t": "output", "invocation_id": "i", "stream": "stdout", "offset": 0, "data": "x"}
RESULT = {"t": "result", "invocation_id": "i", "status": "Success", "stdout_size": 0,
          "stderr_size": 0}
COMMAND = {"t": "command", "invocation_id": "i", "command_id": "c", "script": "true",
           "timeout": 5.0, "output_cap": 10}
WELCOME = {"t": "welcome", "protocol": 1, "server_version": "s", "keepalive_interval": 30.0,
           "keepalive_timeout": 10.0}
HELLO = {"t": "hello", "protocol": 1, "node_id": "mi-0123456789abcdef0", "credential": "c",
         "agent_version": "1"}
INVENTORY = {"t": "inventory", "computer_name": "c", "os_name": "o", "os_version": "v",
             "kernel": "k", "arch": "a", "agent_version": "1", "python_version": "3",
             "interfaces": [{"name": "lo", "flags": ["up"],
                             "addresses": [{"address": "::1", "prefixlen": 128,
                                            "family": "inet6"}]}]}


@pytest.mark.parametrize("base", [OUTPUT, RESULT, COMMAND, WELCOME, HELLO, INVENTORY],
                         ids=lambda b: b["t"])
def test_bases_are_valid(base: dict[str, Any]) -> None:
    decode(json.dumps(base), ALL_MESSAGES)


@pytest.mark.parametrize(("base", "field", "value"), [
    (OUTPUT, "offset", True),  # bool is not an int
    (OUTPUT, "offset", "0"),
    (OUTPUT, "offset", 0.0),
    (OUTPUT, "offset", -1),
    (OUTPUT, "offset", None),
    (OUTPUT, "data", 120),
    (OUTPUT, "data", None),
    (OUTPUT, "stream", "stdin"),
    (OUTPUT, "encoding", "latin-1"),
    (OUTPUT, "encoding", None),
    (RESULT, "status", "Pending"),
    (RESULT, "status", "InProgress"),
    (RESULT, "stdout_size", -1),
    (RESULT, "stdout_truncated", 1),  # int is not a bool
    (RESULT, "stdout_truncated", "false"),
    (RESULT, "exit_code", False),
    (RESULT, "exit_code", 1.5),
    (RESULT, "reason", 5),
    (COMMAND, "timeout", True),
    (COMMAND, "timeout", "5"),
    (COMMAND, "timeout", 0),
    (COMMAND, "timeout", -1.0),
    (COMMAND, "output_cap", -1),
    (COMMAND, "output_cap", 1.0),
    (COMMAND, "workdir", 7),
    (COMMAND, "script", ["true"]),
    (WELCOME, "keepalive_interval", False),
    (WELCOME, "keepalive_interval", 0.0),
    (WELCOME, "keepalive_timeout", -0.0),
    (WELCOME, "keepalive_timeout", -1e308),
    (HELLO, "protocol", "1"),
    (HELLO, "protocol", True),
    (HELLO, "node_id", "mi-0123456789ABCDEF0"),
    (HELLO, "node_id", "mi-0123456789abcdef"),
    (HELLO, "node_id", "mi-0123456789abcdef01"),
    (HELLO, "node_id", "i-0123456789abcdef0"),
    (HELLO, "node_id", " mi-0123456789abcdef0"),
    (HELLO, "credential", {"k": "v"}),
    (INVENTORY, "interfaces", {}),
    (INVENTORY, "interfaces", [None]),
    (INVENTORY, "interfaces", [{"name": "lo", "flags": "up", "addresses": []}]),
    (INVENTORY, "interfaces", [{"name": "lo", "flags": [1], "addresses": []}]),
    (INVENTORY, "interfaces", [{"name": "lo", "flags": []}]),
    (INVENTORY, "interfaces", [{"name": "lo", "flags": [], "addresses": [
        {"address": "::1", "prefixlen": "128", "family": "inet6"}]}]),
    (INVENTORY, "interfaces", [{"name": "lo", "flags": [], "addresses": [
        {"address": "::1", "family": "inet6"}]}]),
    (INVENTORY, "primary_address", 10),
])
def test_wrong_field_value_is_malformed(base: dict[str, Any], field: str, value: Any) -> None:
    _malformed(json.dumps({**base, field: value}))


@pytest.mark.parametrize("frame", [
    "[" * 100_000,
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000,
    '{"t":"ping","x":' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_deep_nesting_is_malformed_not_recursion_error(frame: str) -> None:
    _malformed(frame)


def test_moderate_nesting_in_unknown_field_is_ignored() -> None:
    frame = '{"t":"ping","x":' + "[" * 500 + "]" * 500 + "}"
    assert decode(frame, AGENT_MESSAGES) == Ping()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_in_ignored_fields_are_harmless(literal: str) -> None:
    assert decode('{"t":"ping","x":' + literal + "}", AGENT_MESSAGES) == Ping()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("field", ["offset", "stdout_size", "exit_code"])
def test_non_finite_literals_in_int_fields_are_malformed(literal: str, field: str) -> None:
    base = OUTPUT if field == "offset" else RESULT
    frame = json.dumps({**base, field: 0}).replace(f'"{field}": 0', f'"{field}": {literal}')
    assert literal in frame
    _malformed(frame)


def test_negative_infinity_in_float_field_is_malformed() -> None:
    # Rejected, but only by the "must be positive" check.
    _malformed(json.dumps(WELCOME).replace("30.0", "-Infinity"))


# --- regressions: bugs found by these tests, now fixed ---------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400"])
@pytest.mark.parametrize(("base", "field"), [
    (WELCOME, "keepalive_interval"), (WELCOME, "keepalive_timeout"), (COMMAND, "timeout")])
def test_regression_non_finite_floats_accepted(base: dict[str, Any], field: str,
                                               literal: str) -> None:
    frame = json.dumps({**base, field: 1.25}).replace("1.25", literal)
    try:
        message = decode(frame, SERVER_MESSAGES)
    except ProtocolError as exc:
        assert exc.code is CloseCode.MALFORMED
        return
    value = getattr(message, field)
    assert math.isfinite(value), f"decode returned {message!r}"


@pytest.mark.parametrize(("base", "field"), [
    (WELCOME, "keepalive_interval"), (WELCOME, "keepalive_timeout"), (COMMAND, "timeout")])
def test_regression_huge_int_in_float_field_escapes_as_overflow_error(base: dict[str, Any],
                                                               field: str) -> None:
    _malformed(json.dumps({**base, field: 10**400}))


@pytest.mark.parametrize("field", ["data", "invocation_id"])
def test_regression_lone_surrogate_escape_accepted(field: str) -> None:
    frame = json.dumps({**OUTPUT, field: "\ud800"})
    assert "\\ud800" in frame  # the frame itself is plain ASCII, valid on the wire
    frame.encode("utf-8")
    result = _decode_or_garbage(frame, AGENT_MESSAGES)
    if isinstance(result, Output):
        result.payload()


@pytest.mark.parametrize("data", ["!!!!", "abc", "é"])
def test_regression_invalid_base64_output_accepted(data: str) -> None:
    frame = json.dumps({**OUTPUT, "data": data, "encoding": "base64"})
    result = _decode_or_garbage(frame, AGENT_MESSAGES)
    if isinstance(result, Output):
        result.payload()


def test_regression_node_id_with_trailing_newline_accepted() -> None:
    frame = json.dumps({**HELLO, "node_id": HELLO["node_id"] + "\n"})
    result = _decode_or_garbage(frame, AGENT_MESSAGES)
    assert isinstance(result, ProtocolError), f"accepted {result!r}"


def test_lone_surrogates_cannot_reach_the_wire() -> None:
    # Why the strategies leave lone surrogates out: encode/decode carry them as str,
    # but the frame is not valid UTF-8, so no WebSocket library can send it.
    message = Accepted("\ud800")
    frame = encode(message)
    with pytest.raises(UnicodeEncodeError):
        frame.encode("utf-8")
    _malformed(frame)


# --- Output payloads -----------------------------------------------------------


@given(st.binary(max_size=4096), non_negative, st.sampled_from(STREAMS))
@example(b"\xff", 0, "stdout")
@example(b"\xed\xa0\x80", 0, "stdout")  # a UTF-8-encoded surrogate is not UTF-8
@example("é".encode()[:1], 0, "stderr")  # a character cut in half
def test_output_from_bytes_round_trips(raw: bytes, offset: int, stream: str) -> None:
    output = Output.from_bytes("inv", stream, offset, raw)
    assert output.payload() == raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert output.encoding == "base64"
        assert set(output.data) <= set(string.ascii_letters + string.digits + "+/=")
    else:
        assert output.encoding == "utf-8"
        assert output.data == text
    decoded = decode(encode(output).encode("utf-8").decode("utf-8"), AGENT_MESSAGES)
    assert isinstance(decoded, Output)
    assert decoded.payload() == raw


@given(st.text())
def test_utf8_text_output_stays_text(text: str) -> None:
    output = Output.from_bytes("inv", "stdout", 0, text.encode("utf-8"))
    assert output.encoding == "utf-8"
    assert output.data == text
    assert output.payload() == text.encode("utf-8")


# --- errors and versions -------------------------------------------------------


@given(st.text(), st.sampled_from(list(CloseCode)))
@example("é" * 200, CloseCode.MALFORMED)
@example("a" * 122 + "€", CloseCode.MALFORMED)  # the euro sign would straddle byte 123
def test_protocol_error_reason_is_truncated_to_123_bytes(reason: str, code: CloseCode) -> None:
    error = ProtocolError(code, reason)
    encoded = error.reason.encode("utf-8")
    assert len(encoded) <= 123
    assert reason.startswith(error.reason)
    if len(reason.encode("utf-8")) <= 123:
        assert error.reason == reason
    else:
        assert len(encoded) > 123 - 4  # cut only at the last whole character
    assert error.code is code
    assert error.reason in str(error)


@given(st.integers())
def test_check_version(version: int) -> None:
    if version in SUPPORTED_VERSIONS:
        assert check_version(version) == version
        return
    with pytest.raises(ProtocolError) as info:
        check_version(version)
    assert info.value.code is CloseCode.UNSUPPORTED_VERSION
    assert not info.value.code.retryable
    assert str(version) in info.value.reason
    assert str(PROTOCOL_VERSION) in info.value.reason


@pytest.mark.parametrize(("version", "supported"), [
    (1, range(2, 4)), (4, range(2, 4)), (0, range(1, 2)), (7, range(5, 7)),
])
def test_check_version_names_both_sides(version: int, supported: range) -> None:
    with pytest.raises(ProtocolError) as info:
        check_version(version, supported)
    reason = info.value.reason
    assert f"protocol {version}" in reason
    assert f"{supported[0]}..{supported[-1]}" in reason


def test_current_version_is_supported() -> None:
    assert check_version(PROTOCOL_VERSION) == PROTOCOL_VERSION
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS


# --- field limits (tether.protocol.limits) -------------------------------------

def _message_classes() -> dict[str, type]:
    """Every message class and every object class nested in one, by name."""
    found: dict[str, type] = {}

    def walk(cls: type) -> None:
        found[cls.__name__] = cls
        for tp in typing.get_type_hints(cls).values():
            for inner in (tp, *typing.get_args(tp), *(a for t in typing.get_args(tp)
                                                      for a in typing.get_args(t))):
                if isinstance(inner, type) and dataclasses.is_dataclass(inner) \
                        and inner.__name__ not in found:
                    walk(inner)

    for cls in ALL_MESSAGES.values():
        walk(cls)
    return found


def _kind_of(tp: Any) -> type:
    """The limit class a field of annotation ``tp`` must have."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        return _kind_of(args[0])
    if typing.get_origin(tp) is list:
        return Items
    if dataclasses.is_dataclass(tp):
        return Nested
    return {str: Text, int: Span, float: Span, bool: Flag}[tp]


def test_every_field_of_every_message_has_a_limit_of_its_kind() -> None:
    """The guard for the class: a new field (or message) without a bound fails here."""
    classes = _message_classes()
    assert set(FIELD_LIMITS) == set(classes)
    for name, cls in classes.items():
        hints = typing.get_type_hints(cls)
        limits = FIELD_LIMITS[name]
        assert set(limits) == {f.name for f in dataclasses.fields(cls)}, name
        for field, limit in limits.items():
            assert isinstance(limit, _kind_of(hints[field])), (name, field, limit)
            if isinstance(limit, Items):
                item = typing.get_args(hints[field])[0]
                assert isinstance(limit.each, _kind_of(item)), (name, field)


# A valid item for each list field, to make a list one item too long.
ITEM: dict[tuple[str, str], Any] = {("Interface", "flags"): "up",
        ("Interface", "addresses"): {"address": "::1", "prefixlen": 128, "family": "inet6"},
        ("Inventory", "interfaces"): {"name": "lo", "flags": ["up"], "addresses": []}}
BOUNDED = [(owner, field) for owner, fields in FIELD_LIMITS.items()
           for field, limit in fields.items() if not isinstance(limit, (Flag, Nested))]


def _over(owner: str, field: str, limit: Limit) -> list[Any]:
    """Values just past ``limit``."""
    if isinstance(limit, Text):
        return ["x" * (limit.max_chars + 1), "é" * (limit.max_chars + 7)]
    if isinstance(limit, Items):
        return [[ITEM[owner, field]] * (limit.max_items + 1)]
    assert isinstance(limit, Span)
    return [int(limit.hi) + 1, int(limit.lo) - 1, 2**70]


def _frame_with(owner: str, field: str, value: Any,
                draw: Callable[..., Any]) -> tuple[str, Callable[[Message], Any]]:
    """A valid frame (drawn) with ``owner.field`` set to ``value``; and how to read it back."""
    if owner in ("Address", "Interface"):
        address: dict[str, Any] = dict(ITEM["Interface", "addresses"])
        iface: dict[str, Any] = dict(ITEM["Inventory", "interfaces"], addresses=[address])
        body: dict[str, Any] = dict(INVENTORY, interfaces=[iface])
        target = iface if owner == "Interface" else address
        target[field] = value

        def read(m: Message) -> Any:
            assert isinstance(m, Inventory)
            return getattr(m.interfaces[0] if owner == "Interface"
                           else m.interfaces[0].addresses[0], field)
        return json.dumps(body), read
    cls = _message_classes()[owner]
    drawn = {**_body(draw(STRATEGIES[cls])), field: value}
    return json.dumps(drawn), lambda m: getattr(m, field)


@pytest.mark.parametrize(("owner", "field"), BOUNDED, ids=[f"{o}.{f}" for o, f in BOUNDED])
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_bound_is_applied_on_decode(owner: str, field: str, data: st.DataObject) -> None:
    """Past its bound a field is refused (4000) or cut to the bound, as the table says."""
    limit = FIELD_LIMITS[owner][field]
    for value in _over(owner, field, limit):
        frame, read = _frame_with(owner, field, value, data.draw)
        refused = isinstance(limit, Span) or (
            isinstance(limit, (Text, Items)) and limit.over is Over.REFUSE)
        if refused:
            _malformed(frame)
            continue
        kept = read(decode(frame, ALL_MESSAGES))
        if isinstance(limit, Text):
            assert len(kept) == limit.max_chars and kept.endswith(TRUNCATED_MARK)
            assert kept.startswith(value[:limit.max_chars - len(TRUNCATED_MARK)])
        else:
            assert isinstance(limit, Items)
            assert len(kept) == limit.max_items


def test_regression_unbounded_agent_strings_and_numbers_accepted() -> None:
    """Issue 12 #11: a 1 MiB computer name, a 1.5 MB reason, an exit code of 2**70."""
    inv = decode(json.dumps(dict(INVENTORY, computer_name="n" * 2**20)), ALL_MESSAGES)
    assert isinstance(inv, Inventory) and len(inv.computer_name) == 255
    res = decode(json.dumps(dict(RESULT, reason="r" * 1_500_000)), ALL_MESSAGES)
    assert isinstance(res, Result) and res.reason is not None and len(res.reason) == 500
    assert "exit_code" in _malformed(json.dumps(dict(RESULT, exit_code=2**70))).reason
    assert "primary_address" in _malformed(
        json.dumps(dict(INVENTORY, primary_address="1" * 65))).reason


def test_an_inventory_past_its_caps_keeps_its_first_interfaces_and_addresses() -> None:
    """20,000 addresses (the review's 1.3 MB inventory) come down to the caps."""
    many = [{"name": f"veth{i}", "flags": ["up"], "addresses": [
        {"address": f"10.{i // 256}.{i % 256}.{j}", "prefixlen": 24, "family": "inet"}
        for j in range(200)]} for i in range(100)]
    inv = decode(json.dumps(dict(INVENTORY, interfaces=many)), ALL_MESSAGES)
    assert isinstance(inv, Inventory)
    iface_cap = FIELD_LIMITS["Inventory"]["interfaces"]
    addr_cap = FIELD_LIMITS["Interface"]["addresses"]
    assert isinstance(iface_cap, Items) and isinstance(addr_cap, Items)
    assert [i.name for i in inv.interfaces] == [f"veth{i}" for i in range(iface_cap.max_items)]
    assert all(len(i.addresses) == addr_cap.max_items for i in inv.interfaces)


# --- characters a text column cannot hold (issue 12 #11, red team H8) ----------------

TEXTS = [(owner, field) for owner, field in BOUNDED
         if isinstance(FIELD_LIMITS[owner][field], Text)]
# The payloads that are bytes, not text for a column: output kept as blobs, the script
# and its directory handed to a file and the kernel. A new one is a decision made here.
RAW = {("Output", "data"), ("Command", "script"), ("Command", "workdir")}


def test_only_the_byte_payloads_keep_nul() -> None:
    raw = set()
    for owner, field in TEXTS:
        limit = FIELD_LIMITS[owner][field]
        assert isinstance(limit, Text)
        if limit.raw:
            raw.add((owner, field))
            assert limit.over is Over.REFUSE, (owner, field)  # a payload is never cut
    assert raw == RAW


@pytest.mark.parametrize(("owner", "field"), TEXTS, ids=[f"{o}.{f}" for o, f in TEXTS])
@settings(max_examples=5, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_text_field_holds_only_what_a_column_can(owner: str, field: str,
                                                        data: st.DataObject) -> None:
    """U+0000 (PostgreSQL's text refuses it, SQLite keeps it) and a lone surrogate (no
    UTF-8 at all) are refused where a long value is refused and replaced by U+FFFD where
    a long value is cut; only the raw payloads keep U+0000."""
    limit = FIELD_LIMITS[owner][field]
    assert isinstance(limit, Text)
    for bad in ("\x00", "\ud800", "\udfff"):
        frame, read = _frame_with(owner, field, f"a{bad}b", data.draw)
        if owner == "Output" and field != "encoding":  # "a\x00b" is no base64 either
            frame = json.dumps(dict(json.loads(frame), encoding="utf-8"))
        if limit.raw and bad == "\x00":
            assert read(decode(frame, ALL_MESSAGES)) == "a\x00b"
        elif limit.over is Over.REFUSE or limit.raw:
            assert "U+0000 or a lone surrogate" in _malformed(frame).reason or (
                field in ("node_id", "status", "stream", "encoding"))  # refused anyway
        else:
            assert read(decode(frame, ALL_MESSAGES)) == f"a{REPLACEMENT}b"
    if limit.over is Over.TRUNCATE:  # cut first, then replaced: still within the bound
        frame, read = _frame_with(owner, field, "\x00" * (limit.max_chars + 1), data.draw)
        kept = read(decode(frame, ALL_MESSAGES))
        assert len(kept) == limit.max_chars and kept.endswith(TRUNCATED_MARK)
        assert "\x00" not in kept


def test_regression_nul_in_agent_strings_stored_differently_by_each_database() -> None:
    """Red team H8: ``computer_name "a\\x00b"`` was stored with the NUL by SQLite and
    refused by PostgreSQL (the inventory dropped, a traceback each); a reason with one
    made the result "could not store", losing its exit code."""
    inv = decode(json.dumps(dict(INVENTORY, computer_name="a\x00b")), ALL_MESSAGES)
    assert isinstance(inv, Inventory) and inv.computer_name == f"a{REPLACEMENT}b"
    res = decode(json.dumps(dict(RESULT, reason="a\x00b")), ALL_MESSAGES)
    assert isinstance(res, Result) and res.reason == f"a{REPLACEMENT}b"
    _malformed(json.dumps(dict(INVENTORY, primary_address="10.0.0.1\x00")))
