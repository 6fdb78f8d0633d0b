"""A real PostgreSQL for `massgate ingest` (agent/bench/localdb.py): one server per test
worker, a new database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from massgate.agent.bench.localdb import DatabaseUnavailable, LocalPostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    try:
        server.start()
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def database(postgres: LocalPostgres) -> str:
    """The URL of a new, empty database."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
