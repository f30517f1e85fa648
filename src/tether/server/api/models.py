"""Request and response bodies; FastAPI turns them into the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tether.protocol.limits import unstorable
from tether.server.access.policy import ACTIONS
from tether.server.api.errors import excerpt
from tether.server.config import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_EXECUTION_TIMEOUT,
)

# As long as the node_tags columns allow (store/schema.py).
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TagValue = Annotated[str, StringConstraints(max_length=256)]
# What the OpenAPI document promises is what the routes accept, so a client (or a
# fuzzer) that follows the document is never refused for a value it allowed.
TagSelector = Annotated[str, StringConstraints(pattern=r"^[^=]+=.*$", max_length=400)]
Target = Annotated[str, StringConstraints(
    pattern=r"^(all|mi-[0-9a-f]{17}|tag:[^=]+=.*|name:.+|[^:]+)$", max_length=400), Field(
    description="a node id, a node name (name:NAME, or NAME when it has no colon: the one "
    "node so named, refused with the candidates' ids when several are), tag:KEY=VALUE or "
    "all; several targets select the nodes any of them selects (OR); tags joined by "
    "',tag:' (tag:site=a,tag:role=gw) the nodes with all of them (AND). A comma not "
    "followed by tag:KEY=VALUE is part of the value")]
Role = Literal["admin", "operator", "viewer"]
# store.PING_STATUSES: whether the node's agent is connected, or that it is deregistered.
PingStatus = Literal["Online", "ConnectionLost", "Deregistered"]
_PREFIXES = sorted({a.split(":")[0] for a in ACTIONS})
Action = Annotated[str, StringConstraints(pattern="^(" + "|".join(
    [r"\*"] + [f"{p}:\\*" for p in _PREFIXES] + sorted(ACTIONS)) + ")$")]
Resource = Annotated[str, StringConstraints(
    pattern=r"^(\*|mi-[0-9a-f]{17}|tag:[^=]+=.*)$", max_length=400)]

MAX_SCRIPT = 256 * 1024


def unstorable_at(value: object, path: str = "") -> str | None:
    """Where in decoded JSON a string holds what no text column stores, or None.

    JSON may escape a lone surrogate (``"\\ud800"``), which no UTF-8 encoder takes,
    or U+0000, which PostgreSQL's text refuses: either failed later, in the database
    or in the answer, as a 500. What counts is ``protocol.limits.unstorable``, the rule
    agents' messages follow too.
    """
    if isinstance(value, str):
        return (path or "body") if unstorable(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key).encode("utf-8", "backslashreplace").decode()  # printable, always
            where = f"{path}.{name}" if path else name
            found = unstorable_at(key, where) or unstorable_at(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable_at(item, f"{path}[{i}]")
            if found:
                return found
    return None


class RequestBody(BaseModel):
    """The base of every request body (and every model inside one).

    Numbers must be finite (JSON from Python's decoder may carry NaN, Infinity, or
    1e999, which is infinity) and text storable (valid Unicode, no U+0000). One base,
    not a check per field: a structural test (tests/integration/test_error_bodies.py)
    fails for a route whose body model does not derive from it.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        where = unstorable_at(data)
        if where is not None:
            raise ValueError(f"{excerpt(where, 100)} holds U+0000 or a lone surrogate, "
                             "which no text column stores")
        return data


class ErrorBody(BaseModel):
    error: str
    message: str


class ReplacedIdentity(RequestBody):
    node_id: str
    credential: str


class RegistrationRequest(RequestBody):
    activation_id: str = Field(max_length=64)
    activation_code: str = Field(max_length=128)
    computer_name: str | None = Field(default=None, max_length=255)
    replaces: ReplacedIdentity | None = None


class RegistrationResponse(BaseModel):
    node_id: str
    credential: str
    name: str | None


class ActivationRequest(RequestBody):
    registration_limit: int = Field(default=1, ge=1, le=1_000_000)
    expires_in: float = Field(default=86400.0, gt=0, le=10 * 365 * 86400,
                              description="seconds from now")
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=100)
    name_prefix: str | None = Field(default=None, max_length=100)


class Activation(BaseModel):
    activation_id: str
    registration_limit: int
    registrations: int
    expires_at: float
    created_at: float
    tags: dict[str, str]
    name_prefix: str | None
    revoked_at: float | None = None


class CreatedActivation(Activation):
    activation_code: str = Field(description="shown once; the server keeps only its hash")
    private_ca_fingerprint: str | None = Field(
        default=None, description="SHA-256 fingerprint (AB:CD:...) of tether's private CA "
        "when the server runs with --tls auto: devices pin that CA (tether-agent register "
        "--ca ca.pem) and compare this fingerprint; null when the server has no CA of its "
        "own (plain HTTP, its own certificate files, a proxy in front)")


class NodeFields(BaseModel):
    """What every view of a node carries."""

    node_id: str
    name: str | None
    activation_id: str
    ping_status: PingStatus = Field(description=(
        "Online (its agent is connected), ConnectionLost (not now), or Deregistered"))
    last_seen_at: float | None
    peer_address: str | None
    primary_address: str | None
    agent_version: str | None
    tags: dict[str, str]


class Node(NodeFields):
    registered_at: float
    deregistered_at: float | None
    inventory: dict[str, object] | None


class TagsUpdate(RequestBody):
    set: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=100)
    remove: list[TagKey] = Field(default_factory=list, max_length=100)


class CommandRequest(RequestBody):
    targets: list[Target] = Field(min_length=1, max_length=10_000)
    script: str = Field(min_length=1, max_length=MAX_SCRIPT)
    timeout: float = Field(default=DEFAULT_EXECUTION_TIMEOUT, gt=0, le=7 * 86400)
    delivery_timeout: float = Field(default=DEFAULT_DELIVERY_TIMEOUT, gt=0, le=30 * 86400)
    workdir: str | None = Field(default=None, max_length=1024)
    comment: str | None = Field(default=None, max_length=500)
    output_cap: int | None = Field(default=None, ge=0, le=1024**3,
                                   description="bytes kept per stream; default 16 MiB")
    online_only: bool = Field(default=False, description="target only the nodes Online "
                              "now: the others get no invocation (the answer's left_out "
                              "counts them); if none is Online, 404 bad_targets")


class Invocation(BaseModel):
    invocation_id: str
    node_id: str
    node_name: str | None = Field(None, description="the node's name, if it has one")
    status: str
    exit_code: int | None
    started_at: float | None
    ended_at: float | None
    stdout_size: int | None
    stderr_size: int | None
    stdout_truncated: bool
    stderr_truncated: bool
    reason: str | None


class CommandSummary(BaseModel):
    command_id: str
    status: str
    comment: str | None
    script_line: str = Field(default="", description=(
        "what ran, in one line: the script's first line that is not blank or #!, at most "
        "120 characters, ' …' after it when more lines follow (protocol/script_line.py)"))
    targets: list[str]
    created_at: float
    created_by: str
    counts: dict[str, int]
    timeout: float
    invocation: Invocation | None = Field(None, description=(
        "GET /commands?node_id=: the command's invocation on that node (a node's history)"))


class CommandDetail(CommandSummary):
    script: str
    delivery_timeout: float
    workdir: str | None
    output_cap: int
    version: int = Field(description="bumped on every status change; pass as ?after= to wait")
    invocations: list[Invocation]


class CreatedCommand(CommandDetail):
    offline: int = Field(description="target nodes not Online when the command was stored: "
                         "each gets it when it connects, until the delivery timeout "
                         "(created_at + delivery_timeout)")
    left_out: int = Field(description="with online_only, the target nodes not Online, for "
                          "which no invocation was created (0 without it)")


class PolicyStatement(RequestBody):
    effect: Literal["allow", "deny"]
    actions: list[Action] = Field(min_length=1, max_length=100,
                                  description="e.g. commands:send, commands:*, *")
    resources: list[Resource] = Field(min_length=1, max_length=1000,
                                      description="*, a node id, or tag:key=value")


class WhoAmI(BaseModel):
    operator: str
    roles: list[str]
    statements: list[PolicyStatement] = Field(
        description="every statement in force: the roles' and the operator's own")
    server_version: str


OPERATOR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"


class OperatorRequest(RequestBody):
    name: str = Field(pattern=OPERATOR_NAME)
    roles: list[Role] = Field(default_factory=list, max_length=3)
    statements: list[PolicyStatement] = Field(default_factory=list, max_length=200)


class OperatorUpdate(RequestBody):
    roles: list[Role] | None = Field(default=None, max_length=3)
    statements: list[PolicyStatement] | None = Field(default=None, max_length=200)


class Operator(BaseModel):
    name: str
    roles: list[str]
    statements: list[PolicyStatement]
    created_at: float
    created_by: str
    disabled_at: float | None


class TokenRequest(RequestBody):
    operator: str = Field(pattern=OPERATOR_NAME)
    label: str | None = Field(default=None, max_length=200)
    expires_in: float | None = Field(default=None, gt=0, le=10 * 365 * 86400,
                                     description="seconds; none: until revoked")


class Token(BaseModel):
    token_id: str
    operator: str
    label: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class CreatedToken(Token):
    token: str = Field(description="shown once; the server keeps only its hash")


class AuditRecord(BaseModel):
    seq: int
    at: float
    actor: str
    action: str
    target: str | None
    source: str | None
    outcome: str = Field(description="ok, denied or failed")
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditCheckpoint(BaseModel):
    """Signed by the server: record ``seq`` had hash ``hash`` (at ``at``)."""

    seq: int
    hash: str
    at: float
    mac: str


class AuditVerdict(BaseModel):
    ok: bool
    records: int
    problem: str | None
    seq: int | None = Field(description="the first record that does not fit the chain, or "
                            "the first one missing")
    state: str = Field("intact", description="intact, tampered or truncated")
    anchored: int = Field(0, description="the last record an anchor or checkpoint vouched "
                          "for (this server's DATA/audit-anchor, the checkpoint given)")
    checkpoint: AuditCheckpoint | None = Field(
        None, description="when intact: the head, signed (what `tether audit export` keeps)")


NodeId = Annotated[str, StringConstraints(pattern=r"^mi-[0-9a-f]{17}$")]
UserName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}\$?$")]
DevicePath = Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$", max_length=4096)]


class SessionRequest(RequestBody):
    """What to open on the node. Which fields count depends on ``kind``."""

    node_id: NodeId
    kind: Literal["shell", "forward", "copy"]
    user: UserName | None = Field(None, description="shell: the account (needs "
                                  "sessions:choose-user); default: the agent's")
    rows: int = Field(24, ge=1, le=1000)
    cols: int = Field(80, ge=1, le=1000)
    term: str = Field("xterm-256color", pattern=r"^[A-Za-z0-9._+-]{1,64}$")
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9.:_-]{1,253}$",
                             description="forward: as the device resolves it")
    port: int | None = Field(None, ge=1, le=65535)
    direction: Literal["to_node", "from_node"] | None = None
    path: DevicePath | None = Field(None, description="copy: the absolute path on the device")
    size: int | None = Field(None, ge=0, description="copy to_node: the file's size")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="copy to_node: the file's digest")
    mode: int | None = Field(None, ge=0, le=0o7777)
    force: bool = False


class Session(BaseModel):
    session_id: str
    node_id: str
    node_name: str | None = Field(None, description="the node's name, if it has one")
    operator: str
    kind: str
    status: str
    target: dict[str, Any]
    started_at: float
    ended_at: float | None
    end_reason: str | None
    exit_code: int | None
    recording: str | None
    bytes_to_node: int
    bytes_from_node: int


class TerminateRequest(RequestBody):
    """Why the session ends, when its own operator knows better than "ended"."""

    reason: str | None = Field(None, max_length=500)
    failed: bool = Field(False, description="the session failed (e.g. a copy that could "
                         "not complete): its status becomes Failed")


class NodeSummary(NodeFields):
    """A fleet-table row: what people scan for, without the whole inventory."""

    os: str | None
    primary_interface: str | None = Field(description="the interface holding the primary "
                                          "address")
    point_to_point: bool = Field(description="that interface is point-to-point (ppp, wwan, "
                                 "tun): the devices other consoles hide")


class NodePage(BaseModel):
    total: int
    offset: int
    nodes: list[NodeSummary]


class StateCounts(BaseModel):
    Online: int = 0
    ConnectionLost: int = 0
    Deregistered: int = 0


class TagValueCounts(StateCounts):
    value: str | None = Field(description="the tag's value; null: nodes without the tag")


class NodeCounts(BaseModel):
    """The fleet page's summary: nodes matching ``q`` by state, and by a tag's values."""
    total: StateCounts
    by: str | None = Field(description="the tag key counted by value, if any")
    values: list[TagValueCounts] = Field(
        description="the most common values first, at most ``limit``")
    more_values: int = Field(description="values left out past ``limit``")


class TargetPreview(BaseModel):
    count: int = Field(description="registered nodes the targets resolve to")
    online: int = Field(description="of them, connected now")
    refused_count: int = Field(description="of them, nodes this operator may not send to")
    refused: list[str] = Field(description="the first 20 of those")
    node_ids: list[str] = Field(description="the first 20 nodes the targets resolve to, by id "
                                "(for name:NAME, the one node of that name)")
