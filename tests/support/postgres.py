"""PostgreSQL fixtures: one server per test worker, a fresh database per test.

`pg_url` is a new empty database on it; `db_target` runs a test on both engines (a SQLite
file under tmp_path, and a PostgreSQL database).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_testkit.postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_target(db_engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's service database lives: a SQLite file, or a new PostgreSQL database."""
    if db_engine == "sqlite":
        return str(tmp_path / "service.db")
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()
