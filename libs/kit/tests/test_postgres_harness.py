"""The throwaway PostgreSQL of the test suite: real initdb + postgres, isolated databases, clean shutdown."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kit.testing.postgres import PostgresServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _pid_gone(pid: int, timeout: float = 5.0) -> bool:
    # Our own child is reaped by Popen.wait(); /proc/<pid> disappears once it is reaped.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as srv:
        yield srv


def test_lifecycle_isolated_databases() -> None:
    srv = PostgresServer().start()
    pid, base = srv.pid, srv.base_dir
    assert pid is not None and srv.is_running()
    assert srv.admin_url == f"postgresql+psycopg://postgres@127.0.0.1:{srv.port}/postgres"
    try:
        url_a = srv.create_database("harness_a")
        url_b = srv.create_database("harness_b")
        assert url_a.endswith(f":{srv.port}/harness_a")

        engine_a = create_engine(url_a)
        engine_b = create_engine(url_b)
        with engine_a.begin() as conn:
            conn.execute(text("CREATE TABLE commune (insee text PRIMARY KEY, nom text NOT NULL)"))
            conn.execute(text("INSERT INTO commune VALUES ('75056', 'Paris'), ('69123', 'Lyon')"))
        with engine_a.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM commune")).scalar_one() == 2
        with engine_b.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            ).scalar_one()
            assert tables == 0

        # The engines still hold pooled connections: drop_database must disconnect them, not hang or fail.
        srv.drop_database("harness_a")
        srv.drop_database("harness_b")
        assert "harness_a" not in srv.list_databases()
        assert "harness_b" not in srv.list_databases()
        engine_a.dispose()
        engine_b.dispose()
    finally:
        srv.stop()
    assert not srv.is_running()
    assert _pid_gone(pid)
    assert not base.exists()


def test_server_settings_and_owner(server: PostgresServer) -> None:
    url = server.create_database("harness_settings")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT current_setting('fsync'), current_setting('TimeZone'), current_setting('max_connections'),"
                    " pg_encoding_to_char(encoding), upper('élodie')"
                    " FROM pg_database WHERE datname = current_database()"
                )
            ).one()
        assert tuple(row) == ("off", "UTC", "200", "UTF8", "ÉLODIE")
    finally:
        engine.dispose()
        server.drop_database("harness_settings")
    # PostgreSQL refuses to run as root: as root the harness must have dropped to the postgres user.
    owner = Path(f"/proc/{server.pid}").stat().st_uid
    if os.geteuid() == 0:
        assert owner != 0
    else:
        assert owner == os.geteuid()


def test_drop_missing_database_is_a_noop(server: PostgresServer) -> None:
    server.drop_database("harness_never_created")


@pytest.mark.parametrize("name", ["", "Upper", "1abc", "a-b", 'x"; DROP DATABASE postgres; --', "a" * 64])
def test_invalid_database_names_are_rejected(server: PostgresServer, name: str) -> None:
    with pytest.raises(ValueError, match="invalid database name"):
        server.create_database(name)
    with pytest.raises(ValueError, match="invalid database name"):
        server.drop_database(name)


def test_stop_is_idempotent() -> None:
    srv = PostgresServer().start()
    srv.stop()
    srv.stop()
    assert not srv.is_running()


def test_ensure_postgres_script_is_idempotent() -> None:
    script = REPO / "scripts" / "ensure-postgres.sh"
    runs = [
        subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    # Once installed, both runs say the same single line (the version) and nothing else.
    assert runs[0].stdout == runs[1].stdout
    assert runs[1].stdout.count("\n") == 1
    assert "PostgreSQL" in runs[1].stdout
    assert runs[1].stderr == ""
