"""An unchanged inventory is not written again, on the same link or a new one (issue 12 #12).

An agent sends its inventory on every connection, so after a server restart a whole
fleet resends it at once; a hostile agent may resend it in a loop. Only a changed one
is stored. What is stored is observed in the database itself: the test marks the
node's row behind the server's back, and an inventory the server skips leaves the mark.
The client is a hostile agent speaking the real protocol (protocol 1, so a ping is
answered by a pong: the point after which the server has handled what came before).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from test_hostile import hello_from, inventory_frame, ws_url
from websockets.sync.client import ClientConnection, connect

from harness import Agent, Server
from tether.protocol.messages import SERVER_MESSAGES, Ping, Pong, decode, encode

MARK = "marked-by-the-test"
# The server: conftest.py's, one per module on SQLite and on PostgreSQL.



def sql(server: Server, statement: str, *args: str) -> list[tuple[object, ...]]:
    """Run ``statement`` on the server's own database (``?`` placeholders)."""
    if server.database_url is None:
        with contextlib.closing(sqlite3.connect(server.data_dir / "tether.db")) as db, db:
            return db.execute(statement, args).fetchall()
    import psycopg

    with psycopg.connect(server.database_url, autocommit=True) as conn:
        cur = conn.execute(statement.replace("?", "%s"), args)
        return cur.fetchall() if cur.description else []


def mark(server: Server, node_id: str) -> None:
    sql(server, "UPDATE nodes SET agent_version = ? WHERE node_id = ?", MARK, node_id)


def agent_version(server: Server, node_id: str) -> object:
    ((version,),) = sql(server, "SELECT agent_version FROM nodes WHERE node_id = ?", node_id)
    return version


def handled(ws: ClientConnection) -> None:
    """Return once the server has handled every frame sent before: frames of one link
    are handled in order, and an inventory's write is awaited before the next."""
    ws.send(encode(Ping()))
    while not isinstance(decode(ws.recv(timeout=30), SERVER_MESSAGES), Pong):
        pass


@contextlib.contextmanager
def link(server: Server, agent: Agent) -> Iterator[ClientConnection]:
    with connect(ws_url(server), compression=None) as ws:
        ws.send(hello_from(agent, protocol=1))
        assert json.loads(ws.recv(timeout=30))["t"] == "welcome"
        yield ws


def test_an_unchanged_inventory_is_not_written_again_on_any_link(
        server: Server, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path / "a").register()  # its identity, not its process
    node = agent.node_id
    same = inventory_frame("inv-test", agent_version="1.0")
    with link(server, agent) as ws:
        ws.send(same)
        handled(ws)
        assert agent_version(server, node) == "1.0"
        mark(server, node)
        for _ in range(3):  # resent on the same link: not written
            ws.send(same)
        handled(ws)
        assert agent_version(server, node) == MARK
    with link(server, agent) as ws:  # a new link (a reconnect, a restart): not written
        ws.send(same)
        handled(ws)
        assert agent_version(server, node) == MARK
        changed = inventory_frame("inv-test", agent_version="1.0", os_version="2")
        ws.send(changed)  # a changed one is stored, and then skipped in its turn
        handled(ws)
        assert agent_version(server, node) == "1.0"
        assert server.node(node)["inventory"]["os_version"] == "2"
        mark(server, node)
        ws.send(changed)
        handled(ws)
        assert agent_version(server, node) == MARK
        ws.send(same)  # back to the first: a change again
        handled(ws)
        assert agent_version(server, node) == "1.0"
        assert server.node(node)["inventory"]["os_version"] == "1"
