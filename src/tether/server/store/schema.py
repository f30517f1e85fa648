"""Tables, in SQLAlchemy Core so one definition serves SQLite and PostgreSQL.

Tags and addresses get their own tables rather than JSON columns: filtering
nodes by tag or by address is then plain, indexed SQL on both engines.
Timestamps are float seconds since the epoch (UTC), which both engines store
and compare exactly and which need no time-zone conversions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

operators = sa.Table(
    "operators", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("roles", sa.JSON, nullable=False),       # names from access/policy.py ROLES
    sa.Column("statements", sa.JSON, nullable=False),  # the operator's own policy statements
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("disabled_at", sa.Float),
)

operator_tokens = sa.Table(
    "operator_tokens", metadata,
    sa.Column("token_id", sa.String(36), primary_key=True),
    # The operator the token acts for.
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("label", sa.String(200)),
    sa.Column("expires_at", sa.Float),
)

activations = sa.Table(
    "activations", metadata,
    sa.Column("activation_id", sa.String(36), primary_key=True),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("name_prefix", sa.String(200)),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("registration_limit", sa.Integer, nullable=False),
    sa.Column("registrations", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.String(20), primary_key=True),
    sa.Column("credential_hash", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255)),
    sa.Column("activation_id", sa.String(36), nullable=False, index=True),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("deregistered_at", sa.Float),
    sa.Column("ping_status", sa.String(20), nullable=False),
    sa.Column("last_seen_at", sa.Float),
    sa.Column("peer_address", sa.String(64)),
    sa.Column("primary_address", sa.String(64)),
    sa.Column("agent_version", sa.String(40)),
    sa.Column("inventory", sa.JSON),
    # SHA-256 (hex) of the inventory message stored above: an unchanged one, resent on
    # every reconnect (a whole fleet's after a server restart), is not written again.
    sa.Column("inventory_sha256", sa.String(64)),
    # Rotation in flight: the new credential's hash, accepted alongside the current
    # one until the agent confirms it has it (protocol 3, docs/protocol.md).
    sa.Column("pending_credential_hash", sa.String(64)),
    sa.Column("credential_rotated_at", sa.Float),
)

node_tags = sa.Table(
    "node_tags", metadata,
    sa.Column("node_id", sa.String(20), sa.ForeignKey("nodes.node_id"), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Index("ix_node_tags_key_value", "key", "value"),
)

node_addresses = sa.Table(
    "node_addresses", metadata,
    sa.Column("node_id", sa.String(20), sa.ForeignKey("nodes.node_id"), primary_key=True),
    sa.Column("interface", sa.String(64), primary_key=True),
    sa.Column("address", sa.String(64), primary_key=True),
    sa.Index("ix_node_addresses_address", "address"),
)

commands = sa.Table(
    "commands", metadata,
    sa.Column("command_id", sa.String(36), primary_key=True),
    sa.Column("script", sa.Text, nullable=False),
    sa.Column("comment", sa.String(500)),
    sa.Column("targets", sa.JSON, nullable=False),
    sa.Column("timeout", sa.Float, nullable=False),
    sa.Column("delivery_timeout", sa.Float, nullable=False),
    sa.Column("workdir", sa.String(1024)),
    sa.Column("output_cap", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
)

invocations = sa.Table(
    "invocations", metadata,
    # seq orders delivery: commands queued for an offline node go out in submission order.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("invocation_id", sa.String(36), nullable=False, unique=True),
    sa.Column("command_id", sa.String(36), sa.ForeignKey("commands.command_id"),
              nullable=False),
    sa.Column("node_id", sa.String(20), sa.ForeignKey("nodes.node_id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("deliver_by", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("exit_code", sa.Integer),
    sa.Column("stdout_size", sa.BigInteger),
    sa.Column("stderr_size", sa.BigInteger),
    sa.Column("stdout_truncated", sa.Boolean, nullable=False),
    sa.Column("stderr_truncated", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(500)),
    # A stream of at most a few KiB lives here rather than in the blob store.
    sa.Column("stdout_inline", sa.LargeBinary),
    sa.Column("stderr_inline", sa.LargeBinary),
    sa.UniqueConstraint("command_id", "node_id", name="uq_invocations_command_node"),
    sa.Index("ix_invocations_node_status", "node_id", "status"),
    sa.Index("ix_invocations_status_deliver_by", "status", "deliver_by"),
)


# Append-only: rows are only ever inserted. Each row's hash covers its fields and
# the previous row's hash (access/audit_chain.py), so a changed, removed or
# inserted row breaks the chain from that point on.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(200), nullable=False),
    sa.Column("target", sa.String(200)),
    sa.Column("source", sa.String(64)),
    sa.Column("outcome", sa.String(40), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_actor", "actor"),
)


# One row per session (shell, port forward, file copy). A session is written
# when it starts and again when it ends; its recording, if any, is a blob.
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("session_id", sa.String(40), primary_key=True),
    sa.Column("node_id", sa.String(20), nullable=False),
    sa.Column("operator", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),      # shell, forward, copy
    sa.Column("status", sa.String(20), nullable=False),    # Connected, Terminated, Failed
    sa.Column("target", sa.JSON, nullable=False),          # user / host, port / path, direction
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("end_reason", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("recording", sa.String(200)),                # blob key, shells only
    sa.Column("bytes_to_node", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_from_node", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_sessions_started_at", "started_at"),
    sa.Index("ix_sessions_node_id", "node_id"),
)
