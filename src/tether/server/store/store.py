"""The store: every read and write of server state goes through this class.

It speaks SQLAlchemy Core over an async engine, so the same statements run on
SQLite (aiosqlite, WAL) and PostgreSQL (psycopg). Status changes are
conditional UPDATEs whose WHERE clause comes from the protocol's transition
table: the database, not a Python check, decides who wins a race.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tether.protocol.ids import new_node_id, new_uuid
from tether.protocol.statuses import InvocationStatus, allowed_sources, can_transition
from tether.server.secrets import hash_secret, matches, new_secret
from tether.server.store import migrate
from tether.server.store.audit import AuditEntry, AuditLog
from tether.server.store.command_filter import CommandFilter, conditions
from tether.server.store.operators import Operators
from tether.server.store.reader import GroupReader
from tether.server.store.rows import as_dicts
from tether.server.store.schema import (
    activations,
    commands,
    invocations,
    node_addresses,
    node_tags,
    nodes,
)
from tether.server.store.scope import Reach, within
from tether.server.store.sessions import Sessions

_S = InvocationStatus
# A result's status is a bound value, so its WHERE must admit every status it may carry.
_RESULT_TARGETS = (_S.SUCCESS, _S.FAILED, _S.TIMED_OUT, _S.CANCELLED)
_RESULT_COLUMNS = ("status", "ended_at", "exit_code", "stdout_size", "stderr_size",
                   "stdout_truncated", "stderr_truncated", "reason", "stdout_inline",
                   "stderr_inline")
async def _insert_many(conn: AsyncConnection, table: sa.Table, rows: list[Row]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in ``conn``'s transaction.

    On PostgreSQL through ``COPY``: an executemany of a fan-out's 10,000 invocations
    took 0.6 s there (SQLite's, 0.2 s), most of ``POST /commands``; COPY takes a
    small part of that. The column names are the schema's, never input.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        for start in range(0, len(rows), 1000):
            await conn.execute(table.insert(), rows[start:start + 1000])
        return
    columns = list(rows[0])
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection  # psycopg's AsyncConnection, in this transaction
    names = ", ".join(f'"{c}"' for c in columns)
    statement = f'COPY "{table.name}" ({names}) FROM STDIN'
    async with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            await copy.write_row(tuple(row[c] for c in columns))


# What a node's link is authenticated with (``Store.authenticate_node``), built once.
_CREDENTIALS = sa.select(nodes.c.node_id, nodes.c.credential_hash,
                         nodes.c.pending_credential_hash, nodes.c.deregistered_at).where(
    nodes.c.node_id.in_(sa.bindparam("node_ids", expanding=True)))
# What a node that connects is sent (``Store.deliverable``), built once: each of
# 10,000 links asks it when it connects.
_DELIVERABLE = (
    sa.select(invocations.c.invocation_id, invocations.c.node_id, invocations.c.status,
              commands)
    .join(commands, commands.c.command_id == invocations.c.command_id)
    .where(invocations.c.node_id.in_(sa.bindparam("node_ids", expanding=True)),
           sa.or_(sa.and_(invocations.c.status == InvocationStatus.PENDING.value,
                          invocations.c.deliver_by > sa.bindparam("now")),
                  invocations.c.status == InvocationStatus.IN_PROGRESS.value))
    .order_by(invocations.c.node_id, invocations.c.seq))
# What lists of invocations show: the row without the output bytes it may carry.
_LISTED = [c for c in invocations.c if not c.name.endswith("_inline")]


def _one_of(column: sa.ColumnElement[Any], values: list[str]) -> sa.ColumnElement[bool]:
    """``column IN (...)`` written out: an expanding IN cannot be used with executemany.

    The values are our own status names, never input, and checked to be plain words.
    """
    assert all(v.isalnum() for v in values)
    return column.in_([sa.literal_column(f"'{v}'") for v in values])


def _moving(targets: Sequence[InvocationStatus],
            sources: Sequence[InvocationStatus] = ()) -> sa.ColumnElement[bool]:
    """The WHERE of every UPDATE that changes an invocation's status.

    It admits only statuses from which each of ``targets`` may be reached in the
    one table (protocol/statuses.py), narrowed to ``sources`` where given, so no
    write in the store can make a transition the table does not allow, and two
    racing writers cannot both win. A source the table refuses is a bug: raised.
    """
    legal = set.intersection(*(set(allowed_sources(t)) for t in targets))
    chosen = set(sources) or legal
    wrong = [f"{s.value} -> {t.value}" for s in chosen for t in targets
             if not can_transition(s, t)]
    if wrong:
        raise ValueError(f"not in the transition table: {', '.join(sorted(wrong))}")
    return _one_of(invocations.c.status, sorted(s.value for s in chosen))


def _transition(target: InvocationStatus, *sources: InvocationStatus) -> sa.Update:
    """An UPDATE moving invocations into ``target``, which it names once, from the
    sources the table allows (narrowed to ``sources``); callers add rows and values."""
    return invocations.update().where(_moving([target], sources)).values(status=target.value)


if TYPE_CHECKING:
    from tether.server.store.writer import WriteBatch

ONLINE = "Online"
CONNECTION_LOST = "ConnectionLost"
DEREGISTERED = "Deregistered"
PING_STATUSES = (ONLINE, CONNECTION_LOST, DEREGISTERED)
# The ping status a node is shown and filtered with. The stored column says only whether an
# agent is connected (a deregistered node's stays ConnectionLost, as it was for nodes
# deregistered before this), so every read of a node goes through this one expression: a
# deregistered node reads Deregistered everywhere (API, CLI, console, counts). Inlined,
# not a bound parameter: PostgreSQL must see the same expression in GROUP BY as in the
# select list (state_counts).
shown_status = sa.case((nodes.c.deregistered_at.is_not(None),
                        sa.literal_column(f"'{DEREGISTERED}'")), else_=nodes.c.ping_status)
# A node row as read: every column, the ping status as shown.
_NODE_READ = [*(c for c in nodes.c if c.name != "ping_status"), shown_status.label("ping_status")]
# A deregistered node's credential_hash is hash(_TOMBSTONE + its last hash): see _deregister.
_TOMBSTONE = "deregistered:"
Row = dict[str, Any]


class RegistrationError(Exception):
    """A refused registration; ``code`` is the stable name clients switch on."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class NodeFilter:
    ping_status: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    # The whole name, as a target names a node (``name`` matches a part of it).
    exact_name: str | None = None
    activation_id: str | None = None
    ip: str | None = None
    include_deregistered: bool = False
    # Free-text terms, all of which must match (see Store._term).
    terms: tuple[str, ...] = ()
    # A policy's reach, one per action that must hold on each node (store/scope.py).
    reach: tuple[Reach, ...] = ()


def _url_for_async(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def owner_only_sqlite(database: str | None) -> None:
    """Make an SQLite database file, and its WAL and shared-memory files, owner-only.

    SQLite creates the database 0666 minus the umask (0644 as a rule: anyone on the
    machine could read node names, addresses and the audit trail), and gives -wal and
    -shm the database's own mode; so the file is made 0600 before SQLite first opens
    it, and an existing one (from an older version) is tightened along with its
    companions.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            mode = f.lstat().st_mode
            if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
                os.chmod(f, 0o600)


async def open_store(url: str) -> Store:
    """Connect, migrate to the newest schema and return a ready store."""
    engine = create_async_engine(_url_for_async(url))
    if engine.dialect.name == "sqlite":
        owner_only_sqlite(engine.url.database)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the API read while the gateway writes; NORMAL is durable
            # across process crashes (only an OS crash can lose the last commit).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    async with engine.begin() as conn:
        await conn.run_sync(migrate.upgrade)
    return Store(engine)


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # What each connecting link asks, grouped across links (reader.py).
        self._credentials: GroupReader[str, Row] = GroupReader(self._credentials_of)
        self._deliverable: GroupReader[str, list[Row]] = GroupReader(self._deliverable_to)
        self.operators = Operators(engine)
        self.audit = AuditLog(engine)
        self.sessions = Sessions(engine)

    async def close(self) -> None:
        await self.audit.close()  # the repeat counts still open, written before the end
        await self.engine.dispose()

    # -- operators ---------------------------------------------------------

    async def create_admin_token_if_none(self) -> str | None:
        """Make the admin operator and its first token; the token in clear once, or None."""
        return await self.operators.bootstrap_admin()

    # -- activations -------------------------------------------------------

    async def create_activation(self, *, limit: int, expires_at: float, tags: dict[str, str],
                                name_prefix: str | None) -> tuple[Row, str]:
        code = new_secret("tac", 15)
        row: Row = dict(activation_id=new_uuid(), code_hash=hash_secret(code),
                        name_prefix=name_prefix, tags=tags, registration_limit=limit,
                        registrations=0, expires_at=expires_at, created_at=time.time())
        async with self.engine.begin() as conn:
            await conn.execute(activations.insert().values(**row))
        del row["code_hash"]
        return row, code

    async def list_activations(self) -> list[Row]:
        cols = [c for c in activations.c if c.name != "code_hash"]
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(*cols).order_by(activations.c.created_at.desc()))
            return [dict(r._mapping) for r in result]

    async def revoke_activation(self, activation_id: str) -> Row | None:
        """No registration with it from now on; nodes it registered stay."""
        async with self.engine.begin() as conn:
            await conn.execute(activations.update().where(
                activations.c.activation_id == activation_id,
                activations.c.revoked_at.is_(None)).values(revoked_at=time.time()))
            row = (await conn.execute(sa.select(activations).where(
                activations.c.activation_id == activation_id))).mappings().first()
            if row is None:
                return None
            out = dict(row)
            del out["code_hash"]
            return out

    async def register_node(self, *, activation_id: str, code: str, computer_name: str | None,
                            replaces: tuple[str, str] | None) -> tuple[Row, str]:
        """Register a device under an activation; return the node and its credential."""
        now = time.time()
        async with self.engine.begin() as conn:
            act = (await conn.execute(sa.select(activations).where(
                activations.c.activation_id == activation_id))).mappings().first()
            if act is None or not matches(code, act["code_hash"]):
                raise RegistrationError("invalid_activation",
                                        "the activation id or code is wrong")
            if act["revoked_at"] is not None:
                raise RegistrationError("activation_revoked", "the activation was revoked")
            if act["expires_at"] <= now:
                raise RegistrationError("activation_expired", "the activation has expired")
            taken = await conn.execute(activations.update().where(
                activations.c.activation_id == activation_id,
                activations.c.registrations < activations.c.registration_limit,
            ).values(registrations=activations.c.registrations + 1))
            if taken.rowcount != 1:
                raise RegistrationError(
                    "registration_limit_reached",
                    f"the activation allows {act['registration_limit']} registrations "
                    "and all are used")
            replaced = None
            if replaces is not None and await self._revoke_replaced(conn, *replaces, now=now):
                replaced = replaces[0]
            credential = new_secret("tnc")
            name = computer_name
            if act["name_prefix"]:
                name = f"{act['name_prefix']}-{computer_name}" if computer_name \
                    else act["name_prefix"]
            row: Row = dict(node_id=new_node_id(), credential_hash=hash_secret(credential),
                            name=name[:255] if name else name,
                            activation_id=activation_id, registered_at=now,
                            ping_status=CONNECTION_LOST)
            await conn.execute(nodes.insert().values(**row))
            tags: dict[str, str] = dict(act["tags"] or {})
            if tags:
                await conn.execute(node_tags.insert(), [
                    dict(node_id=row["node_id"], key=k, value=v) for k, v in tags.items()])
            del row["credential_hash"]
            row["replaced"] = replaced
            return row, credential

    async def _revoke_replaced(self, conn: AsyncConnection, node_id: str, credential: str,
                               *, now: float) -> bool:
        """--force on the device: the old identity is deregistered if it proves itself."""
        old = (await conn.execute(sa.select(nodes.c.credential_hash).where(
            nodes.c.node_id == node_id))).first()
        if old is not None and matches(credential, old[0]):
            return await self._deregister(conn, node_id, now)
        return False

    # -- nodes -------------------------------------------------------------

    async def authenticate_node(self, node_id: str, credential: str) -> Row | None:
        """The node's id, credential hashes and ``deregistered_at``, if ``credential``
        is the node's; else None. Only those columns: every link of a 10,000-node
        reconnect storm read (and parsed) the node's whole stored inventory here."""
        row = await self._credentials.get(node_id)
        if row is None:
            return None
        if row["deregistered_at"] is not None:
            # The credential proves itself against the tombstone, so the agent hears
            # 4004 (deregistered), not 4003, and only with its own credential.
            proven = matches(_TOMBSTONE + hash_secret(credential), row["credential_hash"])
            return dict(row) if proven else None
        if matches(credential, row["credential_hash"]):
            return dict(row)
        pending = row["pending_credential_hash"]
        if pending and matches(credential, pending):
            # The agent stored the new credential but its ``rotated`` never arrived.
            await self.complete_rotation(node_id)
            return dict(row)
        return None

    async def begin_rotation(self, node_id: str) -> str:
        """A new credential for the node, accepted beside the current one until confirmed."""
        credential = new_secret("tnc")
        async with self.engine.begin() as conn:
            await conn.execute(nodes.update().where(
                nodes.c.node_id == node_id, nodes.c.deregistered_at.is_(None))
                .values(pending_credential_hash=hash_secret(credential)))
        return credential

    async def complete_rotation(self, node_id: str) -> bool:
        """The agent has the new credential: from now on only it works."""
        async with self.engine.begin() as conn:
            done = await conn.execute(nodes.update().where(
                nodes.c.node_id == node_id, nodes.c.pending_credential_hash.is_not(None),
                nodes.c.deregistered_at.is_(None))
                .values(credential_hash=nodes.c.pending_credential_hash,
                        pending_credential_hash=None, credential_rotated_at=time.time()))
            return bool(done.rowcount == 1)

    async def due_for_rotation(self, node_ids: Sequence[str], before: float) -> list[str]:
        """Of these nodes, those whose credential is older than ``before``."""
        due: list[str] = []
        async with self.engine.connect() as conn:
            for start in range(0, len(node_ids), 1000):
                result = await conn.execute(sa.select(nodes.c.node_id).where(
                    nodes.c.node_id.in_(node_ids[start:start + 1000]),
                    nodes.c.pending_credential_hash.is_(None),
                    sa.func.coalesce(nodes.c.credential_rotated_at,
                                     nodes.c.registered_at) < before))
                due.extend(result.scalars())
        return due

    async def touch(self, seen: dict[str, float]) -> None:
        """Persist last-seen times of live connections in one batch."""
        if not seen:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                nodes.update().where(nodes.c.node_id == sa.bindparam("nid"))
                .values(last_seen_at=sa.bindparam("seen")),
                [dict(nid=k, seen=v) for k, v in seen.items()])

    async def mark_all_connection_lost(self) -> None:
        """At start-up no agent is connected to this process yet."""
        async with self.engine.begin() as conn:
            await conn.execute(nodes.update().where(nodes.c.ping_status != CONNECTION_LOST)
                               .values(ping_status=CONNECTION_LOST))

    async def apply(self, batch: WriteBatch) -> None:
        """Write a group of agent-caused rows in one transaction (see writer.py)."""
        async with self.engine.begin() as conn:
            if batch.presence:
                await conn.execute(
                    nodes.update().where(nodes.c.node_id == sa.bindparam("b_node"))
                    .values(ping_status=sa.bindparam("b_status"),
                            last_seen_at=sa.bindparam("b_seen"),
                            peer_address=sa.func.coalesce(sa.bindparam("b_peer"),
                                                          nodes.c.peer_address)),
                    batch.presence)
            if batch.inventories:
                await self._write_inventories(conn, batch.inventories)
            if batch.accepted:
                await conn.execute(
                    _transition(_S.IN_PROGRESS)
                    .where(invocations.c.invocation_id == sa.bindparam("b_inv"))
                    .values(started_at=sa.bindparam("b_at")),
                    batch.accepted)
            if batch.results:
                await conn.execute(
                    invocations.update().where(
                        invocations.c.invocation_id == sa.bindparam("b_inv"),
                        _moving(_RESULT_TARGETS))
                    .values({c: sa.bindparam(f"b_{c}") for c in _RESULT_COLUMNS}),
                    batch.results)

    async def _write_inventories(self, conn: AsyncConnection, rows: list[Row]) -> None:
        """Each node's newest inventory of the batch, unless it is the one already stored
        (``b_digest`` against ``inventory_sha256``): an agent resends its inventory on
        every connection, and after a server restart the whole fleet reconnects at once.
        Compared here, not per connection, so a reconnecting agent costs no write."""
        newest = {r["b_node"]: r for r in rows}
        stored = dict((await conn.execute(sa.select(nodes.c.node_id, nodes.c.inventory_sha256)
                                          .where(nodes.c.node_id.in_(list(newest))))).all())
        rows = [r for n, r in newest.items() if stored.get(n, r["b_digest"]) != r["b_digest"]]
        if not rows:
            return
        await conn.execute(
            nodes.update().where(nodes.c.node_id == sa.bindparam("b_node"))
            .values(inventory=sa.bindparam("b_inventory", type_=sa.JSON),
                    inventory_sha256=sa.bindparam("b_digest"),
                    primary_address=sa.bindparam("b_primary"),
                    agent_version=sa.bindparam("b_agent_version"),
                    name=sa.func.coalesce(nodes.c.name, sa.bindparam("b_name"))),
            rows)
        ids = [r["b_node"] for r in rows]
        await conn.execute(node_addresses.delete().where(node_addresses.c.node_id.in_(ids)))
        addresses = {(r["b_node"], i["name"], a["address"])
                     for r in rows for i in r["b_inventory"].get("interfaces", [])
                     for a in i.get("addresses", [])}
        if addresses:
            await conn.execute(node_addresses.insert(), [
                dict(node_id=n, interface=i, address=a) for n, i, a in addresses])

    @staticmethod
    def _filtered(q: sa.Select[Any], f: NodeFilter) -> sa.Select[Any]:
        if not f.include_deregistered and f.ping_status != DEREGISTERED:
            q = q.where(nodes.c.deregistered_at.is_(None))
        if f.ping_status:
            q = q.where(shown_status == f.ping_status)
        if f.name:
            q = q.where(nodes.c.name.contains(f.name, autoescape=True))
        if f.exact_name is not None:
            q = q.where(nodes.c.name == f.exact_name)
        if f.activation_id:
            q = q.where(nodes.c.activation_id == f.activation_id)
        if f.ip:
            q = q.where(sa.or_(
                nodes.c.primary_address == f.ip, nodes.c.peer_address == f.ip,
                nodes.c.node_id.in_(sa.select(node_addresses.c.node_id)
                                    .where(node_addresses.c.address == f.ip))))
        for key, value in f.tags:
            q = q.where(nodes.c.node_id.in_(sa.select(node_tags.c.node_id).where(
                node_tags.c.key == key, node_tags.c.value == value)))
        for term in f.terms:
            q = q.where(Store._term(term))
        return q.where(within(nodes.c.node_id, f.reach))

    @staticmethod
    def _term(term: str) -> sa.ColumnElement[bool]:
        """One search word: KEY=VALUE is a tag; otherwise a name or node id part, an
        activation id, or any address of the node (its own, its peer's, an interface's)."""
        if "=" in term:
            key, _, value = term.partition("=")
            return nodes.c.node_id.in_(sa.select(node_tags.c.node_id).where(
                node_tags.c.key == key, node_tags.c.value == value))
        return sa.or_(
            nodes.c.name.contains(term, autoescape=True),
            nodes.c.node_id.contains(term, autoescape=True),
            nodes.c.activation_id == term,
            nodes.c.primary_address == term, nodes.c.peer_address == term,
            nodes.c.node_id.in_(sa.select(node_addresses.c.node_id)
                                .where(node_addresses.c.address == term)))

    async def count_nodes(self, f: NodeFilter = NodeFilter()) -> int:
        q = self._filtered(sa.select(sa.func.count()).select_from(nodes), f)
        async with self.engine.connect() as conn:
            return int(await conn.scalar(q) or 0)

    async def state_counts(self, f: NodeFilter, by: str | None = None,
                           ) -> list[tuple[str | None, str, int]]:
        """(value of tag ``by`` or None, state, nodes) for the nodes ``f`` matches, where
        a state is the ping status, or ``Deregistered`` for a deregistered node (counted
        only when ``f.include_deregistered``): the fleet page's summary, one query."""
        state = shown_status
        value: sa.ColumnElement[Any] = sa.null()
        source: Any = nodes
        if by is not None:
            source = nodes.outerjoin(node_tags, sa.and_(
                node_tags.c.node_id == nodes.c.node_id, node_tags.c.key == by))
            value = node_tags.c.value
        q = self._filtered(sa.select(value, state, sa.func.count()).select_from(source), f)
        q = q.group_by(value, state) if by is not None else q.group_by(state)
        async with self.engine.connect() as conn:
            return [(v, st, int(n)) for v, st, n in (await conn.execute(q)).all()]

    async def node_page(self, f: NodeFilter, limit: int, offset: int) -> list[Row]:
        """One page of nodes, by name then id."""
        q = self._filtered(sa.select(*_NODE_READ), f)
        q = q.order_by(nodes.c.name, nodes.c.node_id).limit(limit).offset(offset)
        async with self.engine.connect() as conn:
            rows = as_dicts(await conn.execute(q))
            await self._attach_tags(conn, rows)
        for r in rows:
            del r["credential_hash"], r["pending_credential_hash"]
        return rows

    async def node_ids(self, f: NodeFilter = NodeFilter()) -> list[str]:
        """Only the ids: resolving a fan-out's targets must not decode 10,000 inventories."""
        q = self._filtered(sa.select(nodes.c.node_id), f)
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def list_nodes(self, f: NodeFilter = NodeFilter()) -> list[Row]:
        q = self._filtered(sa.select(*_NODE_READ), f)
        async with self.engine.connect() as conn:
            rows = as_dicts(await conn.execute(q.order_by(nodes.c.node_id)))
            await self._attach_tags(conn, rows)
        for r in rows:
            del r["credential_hash"], r["pending_credential_hash"]
        return rows

    async def _attach_tags(self, conn: AsyncConnection, rows: list[Row]) -> None:
        by_id = {r["node_id"]: r for r in rows}
        for r in rows:
            r["tags"] = {}
        if not by_id:
            return
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            result = await conn.execute(sa.select(node_tags).where(
                node_tags.c.node_id.in_(ids[start:start + 500])))
            for t in result.mappings():
                by_id[t["node_id"]]["tags"][t["key"]] = t["value"]

    async def get_node(self, node_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(*_NODE_READ).where(
                nodes.c.node_id == node_id))).mappings().first()
            if row is None:
                return None
            out = dict(row)
            del out["credential_hash"], out["pending_credential_hash"]
            await self._attach_tags(conn, [out])
            return out

    async def tags_of(self, node_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each node's tags, for policy checks over many nodes."""
        out: dict[str, dict[str, str]] = {n: {} for n in node_ids}
        async with self.engine.connect() as conn:
            for start in range(0, len(node_ids), 1000):
                result = await conn.execute(sa.select(node_tags).where(
                    node_tags.c.node_id.in_(node_ids[start:start + 1000])))
                for t in result.mappings():
                    out[t["node_id"]][t["key"]] = t["value"]
        return out

    async def command_nodes(self, command_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in command_ids}
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(invocations.c.command_id, invocations.c.node_id)
                .where(invocations.c.command_id.in_(command_ids)))
            for cid, node_id in result:
                out[cid].append(node_id)
        return out

    async def set_tags(self, node_id: str, tags: dict[str, str], remove: Iterable[str],
                       check: Callable[[dict[str, str], dict[str, str]], None] | None = None,
                       ) -> None:
        """Set and remove tags; ``check(before, after)`` may refuse by raising.

        Tags grant access, so a check must see the tags the change really applies to:
        the first statement writes the node's row, which locks it (PostgreSQL) or the
        database (SQLite) until the commit. Two retags sent at once are then checked
        one after the other, never both against the tags as they were before either.
        """
        remove = list(remove)
        async with self.engine.begin() as conn:
            await conn.execute(nodes.update().where(nodes.c.node_id == node_id)
                               .values(node_id=nodes.c.node_id))
            if check is not None:
                before = dict((await conn.execute(
                    sa.select(node_tags.c.key, node_tags.c.value)
                    .where(node_tags.c.node_id == node_id))).tuples().all())
                check(before, {k: v for k, v in before.items() if k not in remove} | tags)
            keys = list(tags) + remove
            if keys:
                await conn.execute(node_tags.delete().where(
                    node_tags.c.node_id == node_id, node_tags.c.key.in_(keys)))
            if tags:
                await conn.execute(node_tags.insert(), [
                    dict(node_id=node_id, key=k, value=v) for k, v in tags.items()])

    async def deregister(self, node_id: str) -> bool:
        async with self.engine.begin() as conn:
            return await self._deregister(conn, node_id, time.time())

    async def _deregister(self, conn: AsyncConnection, node_id: str, now: float) -> bool:
        """Revoke the credential and end open invocations.

        The hash becomes a tombstone, the hash of a prefix and the old hash: no
        credential matches it (nothing that checks ``credential_hash`` can let the
        node in), yet the old credential can still prove it is the one that was
        deregistered (``authenticate_node``). Nodes deregistered before tombstones
        hold ``revoked`` and are refused as unknown (4003).
        """
        current = await conn.scalar(sa.select(nodes.c.credential_hash).where(
            nodes.c.node_id == node_id, nodes.c.deregistered_at.is_(None)))
        if current is None:
            return False
        done = await conn.execute(nodes.update().where(
            nodes.c.node_id == node_id, nodes.c.deregistered_at.is_(None),
            nodes.c.credential_hash == current,  # a rotation in between: the UPDATE loses
        ).values(deregistered_at=now, credential_hash=hash_secret(_TOMBSTONE + current),
                 pending_credential_hash=None, ping_status=CONNECTION_LOST))
        if done.rowcount != 1:
            return False
        await conn.execute(_transition(_S.UNDELIVERABLE).where(
            invocations.c.node_id == node_id).values(ended_at=now, reason="node deregistered"))
        return True

    # -- commands ----------------------------------------------------------

    async def create_command(self, command: Row, node_ids: Sequence[str],
                             record: AuditEntry | None = None) -> list[Row]:
        """Persist a command and one Pending invocation per node, before any dispatch;
        with ``record``, that audit record in the same transaction (who sent it is
        stored when, and only if, the command is)."""
        deliver_by = command["created_at"] + command["delivery_timeout"]
        rows = [dict(invocation_id=new_uuid(), command_id=command["command_id"], node_id=n,
                     status=InvocationStatus.PENDING.value, deliver_by=deliver_by,
                     stdout_truncated=False, stderr_truncated=False) for n in node_ids]

        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(commands.insert().values(**command))
            await _insert_many(conn, invocations, rows)

        if record is not None:
            await self.audit.append_entry(record, also=insert)
        else:
            async with self.engine.begin() as conn:
                await insert(conn)
        return rows

    async def get_command(self, command_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(commands).where(
                commands.c.command_id == command_id))).mappings().first()
            return dict(row) if row else None

    async def list_commands(self, limit: int = 50, f: CommandFilter | None = None,
                            reach: Sequence[Reach] = ()) -> list[Row]:
        """The newest commands (the id breaking ties) that match ``f``
        (``store/command_filter.py``; with ``node_id``, those that ran or will run there).

        With a policy's reach (``store/scope.py``), only commands every node of which
        is within every one of ``reach``. Both are decided before the limit.
        """
        q = (sa.select(commands).where(*conditions(f or CommandFilter()))
             .order_by(commands.c.created_at.desc(), commands.c.command_id.desc())
             .limit(limit))
        if reach:
            q = q.where(~sa.exists().where(
                invocations.c.command_id == commands.c.command_id,
                sa.not_(within(invocations.c.node_id, reach))))
        async with self.engine.connect() as conn:
            result = await conn.execute(q)
            return as_dicts(result)

    async def status_counts(self, command_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {c: {} for c in command_ids}
        if not command_ids:
            return out
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(invocations.c.command_id, invocations.c.status, sa.func.count())
                .where(invocations.c.command_id.in_(command_ids))
                .group_by(invocations.c.command_id, invocations.c.status))
            for cid, status, n in result:
                out[cid][status] = n
        return out

    async def invocations_on(self, node_id: str, command_ids: Sequence[str]) -> dict[str, Row]:
        """The invocation on ``node_id`` of each of ``command_ids`` that has one: a
        node's history, a row a command (``tether nodes history``)."""
        if not command_ids:
            return {}
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(*_LISTED).where(
                invocations.c.node_id == node_id,
                invocations.c.command_id.in_(list(command_ids))))
            return {r["command_id"]: dict(r) for r in result.mappings()}

    async def list_invocations(self, command_id: str) -> list[Row]:
        """A command's invocations, each with its node's name (``node_name``: people
        read names, the ids are what they paste)."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(*_LISTED, nodes.c.name.label("node_name"))
                .select_from(invocations.outerjoin(
                    nodes, nodes.c.node_id == invocations.c.node_id))
                .where(invocations.c.command_id == command_id)
                .order_by(invocations.c.node_id))
            return as_dicts(result)

    async def get_invocation(self, invocation_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(*_LISTED).where(
                invocations.c.invocation_id == invocation_id))).mappings().first()
            return dict(row) if row else None

    async def find_invocation(self, command_id: str, node_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(invocations).where(
                invocations.c.command_id == command_id,
                invocations.c.node_id == node_id))).mappings().first()
            return dict(row) if row else None

    async def deliverable(self, node_id: str) -> list[Row]:
        """Invocations waiting for this node, oldest first, with their command (asked
        with other nodes' that connect at the same time: reader.py)."""
        return await self._deliverable.get(node_id) or []

    async def _credentials_of(self, node_ids: list[str]) -> dict[str, Row]:
        async with self.engine.connect() as conn:
            rows = as_dicts(await conn.execute(_CREDENTIALS, {"node_ids": node_ids}))
        return {r["node_id"]: r for r in rows}

    async def _deliverable_to(self, node_ids: list[str]) -> dict[str, list[Row]]:
        async with self.engine.connect() as conn:
            rows = as_dicts(await conn.execute(
                _DELIVERABLE, {"node_ids": node_ids, "now": time.time()}))
        out: dict[str, list[Row]] = {}
        for r in rows:
            out.setdefault(r["node_id"], []).append(r)
        return out

    async def expire_deliveries(self, now: float) -> list[str]:
        """Pending invocations whose delivery deadline passed become DeliveryTimedOut.

        A read first, so an idle sweep takes no write lock; the ids returned are
        the rows the UPDATE moved, not the ones read (a result may land between).
        """
        async with self.engine.begin() as conn:
            ids = list(await conn.scalars(sa.select(invocations.c.invocation_id).where(
                invocations.c.status == InvocationStatus.PENDING.value,
                invocations.c.deliver_by <= now)))
            if not ids:
                return []
            return list(await conn.scalars(
                _transition(_S.DELIVERY_TIMED_OUT, _S.PENDING)
                .where(invocations.c.invocation_id.in_(ids))
                .values(ended_at=now,
                        reason="the node did not connect before the delivery timeout")
                .returning(invocations.c.invocation_id)))

    async def expire_executions(self, now: float) -> list[str]:
        """InProgress past timeout + delivery timeout: the node will not report any more.

        The agent reports every invocation it started, across reconnects and
        restarts, so this only fires for a node that stays away (or lost its disk)
        for longer than the operator was willing to wait for it in the first place.
        """
        overdue = (sa.select(invocations.c.invocation_id)
                   .join(commands, commands.c.command_id == invocations.c.command_id)
                   .where(invocations.c.status == InvocationStatus.IN_PROGRESS.value,
                          invocations.c.started_at + commands.c.timeout
                          + commands.c.delivery_timeout <= now))
        async with self.engine.begin() as conn:
            ids = list(await conn.scalars(overdue))
            if not ids:
                return []
            return list(await conn.scalars(
                _transition(_S.TIMED_OUT, _S.IN_PROGRESS)
                .where(invocations.c.invocation_id.in_(ids))
                .values(ended_at=now, reason="no result from the node within the timeout "
                                             "plus the delivery timeout")
                .returning(invocations.c.invocation_id)))

    async def request_cancel(self, command_id: str) -> list[Row]:
        """Cancel what has not started; return the running invocations to stop."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(commands.update().where(commands.c.command_id == command_id)
                               .values(cancel_requested=True))
            await conn.execute(
                _transition(_S.CANCELLED, _S.PENDING)
                .where(invocations.c.command_id == command_id)
                .values(ended_at=now, reason="cancelled before delivery"))
            result = await conn.execute(sa.select(invocations.c.invocation_id,
                                                  invocations.c.node_id).where(
                invocations.c.command_id == command_id,
                invocations.c.status == InvocationStatus.IN_PROGRESS.value))
            return as_dicts(result)
