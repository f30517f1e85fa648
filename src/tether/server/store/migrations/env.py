"""Alembic environment: migrations run on a connection the server hands over.

The server calls ``tether.server.store.migrate`` at start-up with its own
engine, so there is no alembic.ini to keep in sync with the server's settings.
"""

from __future__ import annotations

from alembic import context

from tether.server.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
