"""Fixtures: a real server on SQLite and on PostgreSQL, and real agent processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import Agent, Server, postgres_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module and backend; tests make their own agents."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        srv = Server(data_dir).start()
        yield srv
        srv.stop()
    else:
        with postgres_database() as url:
            srv = Server(data_dir, database_url=url).start()
            yield srv
            srv.stop()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One SQLite server per module, for modules whose subject is not the database."""
    srv = Server(tmp_path_factory.mktemp("server-sqlite-only") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def make_agent(server: Server, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(**kwargs: object) -> Agent:
        agent = Agent(server, tmp_path / f"agent{len(agents)}", **kwargs)  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def online_agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent().register().start().connected()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tether.db'}"
        return
    with postgres_database() as url:
        yield url
