"""Pytest plugin of the Maillage test harness: real nats-server and PostgreSQL, started and stopped by the tests.

Loaded for the whole repository by ``-p kit.testing.plugin`` (pyproject). Fixtures:

- ``nats_server``: one nats-server with JetStream per test session (a temp store, a free port);
- ``own_nats_server``: a nats-server of the test's own, to kill and restart mid-test (``.kill()``, ``.start()``);
- ``postgres_server``: one PostgreSQL cluster per test session (Debian's binaries; ``scripts/ensure-postgres.sh``
  installs them when absent);
- ``database_url`` / ``database``: a fresh empty database, parametrised over SQLite (the embedded default) and
  PostgreSQL, so repository tests run on both;
- ``keycloak_server``: one Keycloak (realm ``maillage``, docs/KEYCLOAK.md) per test session, started on first use;
- ``span_exporter``: the in-memory exporter receiving every span of the process, cleared before each test;
- ``metric_reader``: the in-memory reader of every metric of the process.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kit.db import Database
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.telemetry import setup_telemetry
from kit.testing.keycloak import KeycloakServer
from kit.testing.postgres import PostgresServer

__all__ = ["DATABASE_KINDS"]

DATABASE_KINDS = ("sqlite", "postgresql")

_SPANS = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI"):
        # In CI, property tests replay the same examples: a landing does not depend on a random seed (locally they
        # keep exploring new examples).
        from hypothesis import settings

        settings.register_profile("ci", derandomize=True, database=None)
        settings.load_profile("ci")
    # The process-wide tracer provider is installed once; tests read spans from the in-memory exporter.
    setup_telemetry("tests", node_id="tests", span_processors=[SimpleSpanProcessor(_SPANS)], metric_readers=[_METRICS])


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    _SPANS.clear()
    return _SPANS


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """The in-memory reader of every metric of the process (cumulative since the session started)."""
    return _METRICS


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    base = tmp_path_factory.mktemp("nats")
    server = NatsServer(store_dir=base / "jetstream", log_file=base / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "nats" / "jetstream", log_file=tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keycloak_server() -> Iterator[KeycloakServer]:
    """A real Keycloak with the realm ``maillage`` imported, shared by the session (about 12 s to start)."""
    with KeycloakServer() as server:
        yield server


def _database_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database: SQLite in the test's temp dir, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = _database_name(request)
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A :class:`kit.db.Database` on ``database_url`` with every imported table created."""
    db = Database(database_url)
    db.create_all()
    yield db
    db.dispose()


@pytest.fixture
async def messaging(nats_server: NatsServer) -> AsyncIterator[Messaging]:
    """A connected :class:`kit.messaging.Messaging` on the session's nats-server, streams declared."""
    client = Messaging(nats_server.url, name="tests")
    await client.start()
    await client.wait_ready(timeout=10)
    yield client
    await client.close()
