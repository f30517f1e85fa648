"""State, behind one interface that runs on SQLite (default) and PostgreSQL."""

from tether.server.store.store import (
    NodeFilter,
    RegistrationError,
    Store,
    open_store,
)

__all__ = ["NodeFilter", "RegistrationError", "Store", "open_store"]
