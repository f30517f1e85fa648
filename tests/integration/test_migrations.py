"""Alembic migrations produce exactly the tables the code declares, on both engines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from harness import postgres_database
from tether.server.store.migrate import alembic_config, upgrade
from tether.server.store.schema import metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield eng
        eng.dispose()
    else:
        with postgres_database() as url:
            eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
            yield eng
            eng.dispose()


def test_upgrade_matches_the_declared_schema_and_downgrade_removes_it(
        engine: sa.Engine) -> None:
    with engine.begin() as conn:
        upgrade(conn)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    with engine.begin() as conn:
        upgrade(conn)  # running again at head is a no-op
        command.downgrade(alembic_config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}


def test_tokens_from_before_operators_keep_working_as_admins(engine: sa.Engine) -> None:
    """0003 gives every token's name an operator with the admin role, as it had been."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(sa.text(
            "INSERT INTO operator_tokens (token_id, name, token_hash, created_at) "
            "VALUES ('t1', 'admin', :h, 1.0)"), {"h": "a" * 64})
        upgrade(conn)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, roles FROM operators")).all()
    assert [(name, json.loads(roles) if isinstance(roles, str) else roles)
            for name, roles in rows] == [("admin", ["admin"])]
