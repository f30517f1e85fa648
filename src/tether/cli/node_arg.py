"""A node as an operator types it for ``shell``, ``forward`` and ``cp``: its id or its name.

The name is resolved by the server, where targets are (``GET /targets/preview`` with
``name:NAME``, api/visibility.node_named): among the nodes this operator may read only,
a name several of them share refused with their ids, one only unreadable nodes have
answered as no node. The CLI never matches names itself.
"""

from __future__ import annotations

from tether.cli.client import Client
from tether.protocol.ids import is_node_id


def node_id_of(client: Client, text: str) -> str:
    """``text`` if it is a node id, else the id of the one readable node named ``text``
    (an ``ApiFailure`` naming the candidates, or saying there is none, otherwise)."""
    if is_node_id(text):
        return text
    preview = client.get("/targets/preview", target=f"name:{text}")
    node_id: str = preview["node_ids"][0]
    return node_id
