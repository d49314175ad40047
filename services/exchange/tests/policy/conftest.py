"""A demo territory for the policy tests: the four seed datasets, agreements on two of them, real DuckDB tables.

* consommation-eau-menages (personal, protected): agreement ``aggregation: required``, k = 5, columns meter_id,
  commune_insee, month, volume_m3 (not household_size), row filter commune_insee IN (21231, 21166, 21054).
  Commune 21231 has 20 meters, 21166 eight, 21054 three (below k), 99999 ten (outside the row filter).
* frequentation-bus (restricted): agreement ``aggregation: none``, without stop_id and alightings, lines L1 and L2.
* fuites-reseau-eau and comptages-velo (open): no agreement.

The DuckDB tables live under the physical names the plans use (``ds_<slug>.main."rows"``), in a connection set up as
the sandboxed worker is (no external access, no extension autoload, locked configuration).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import pytest

from catalog.seeds import SeedTerritory, demo_datasets
from contracts.terms import Terms
from exchange.policy import DatasetInfo, Permission, Plan, plan
from exchange.policy.scans import SUBJECT_HASH_COLUMN, subject_hash_sql
from kit.pseudonyms import territory_key

TERRITORY = SeedTerritory(siren="242100410", name="Dijon Métropole", communes=("21231", "21166"), node="node-dijon")
WATER, BUS, LEAKS, BIKES = "consommation-eau-menages", "frequentation-bus", "fuites-reseau-eau", "comptages-velo"
K = 5
COMMUNES = {"21231": 20, "21166": 8, "21054": 3, "99999": 10}
ALLOWED_COMMUNES = ("21231", "21166", "21054")
MONTHS = [date(2023, m, 1) for m in range(1, 7)]
LINES = ("L1", "L2", "L3")
ALLOWED_LINES = ("L1", "L2")


def physical(slug: str) -> str:
    """The DuckDB relation holding a dataset's rows."""
    return f'ds_{slug.replace("-", "_")}.main."rows"'


def water_terms(**aggregation: Any) -> Terms:
    """The water agreement, with ``aggregation`` fields overridden."""
    fields: dict[str, Any] = {
        "mode": "required",
        "min_group_size": K,
        "functions": ["count", "count_distinct", "sum", "avg", "min", "max"],
        "forbidden_group_keys": ["meter_id"],
    }
    fields.update(aggregation)
    return Terms(
        dataset=f"{TERRITORY.siren}/{WATER}",
        consumer="24250036100019",
        purpose={"iri": "https://w3id.org/dpv#ServiceOptimisation", "text": "Optimiser le service de l'eau potable"},
        legal_basis="A6-1-e",
        columns=["meter_id", "commune_insee", "month", "volume_m3"],
        row_filter=[{"column": "commune_insee", "op": "in", "values": list(ALLOWED_COMMUNES)}],
        aggregation=fields,
        valid_from=datetime(2024, 1, 1, tzinfo=UTC),
        valid_until=datetime(2030, 1, 1, tzinfo=UTC),
    )


def bus_terms() -> Terms:
    """The bus agreement: row level, some columns, two lines."""
    return Terms(
        dataset=f"{TERRITORY.siren}/{BUS}",
        consumer="24250036100019",
        purpose={"iri": "https://w3id.org/dpv#ServiceOptimisation", "text": "Optimiser le réseau de transport"},
        legal_basis="A6-1-e",
        columns=["stop_name", "line_id", "day", "hour", "boardings"],
        row_filter=[{"column": "line_id", "op": "in", "values": list(ALLOWED_LINES)}],
        aggregation={"mode": "none"},
        valid_from=datetime(2024, 1, 1, tzinfo=UTC),
        valid_until=datetime(2030, 1, 1, tzinfo=UTC),
    )


@dataclass
class World:
    """Datasets and default permissions of the demo territory; ``plan`` with optional overrides."""

    datasets: dict[str, DatasetInfo]
    permissions: dict[str, Permission] = field(default_factory=dict)

    def plan(self, sql: str, permissions: dict[str, Permission] | None = None, **kwargs: Any) -> Plan:
        """Plan ``sql`` with the default permissions, or with ``permissions`` replacing some of them."""
        merged = {**self.permissions, **(permissions or {})}
        return plan(sql, datasets=self.datasets, permissions=merged, **kwargs)


@pytest.fixture(scope="session")
def world() -> World:
    metadata = dict(demo_datasets(TERRITORY))
    datasets = {
        slug: DatasetInfo(slug=slug, physical=physical(slug), schema=meta.table_schema, access=meta.access)
        for slug, meta in metadata.items()
    }
    permissions = {
        WATER: Permission(WATER, water_terms()),
        BUS: Permission(BUS, bus_terms()),
        LEAKS: Permission(LEAKS),
        BIKES: Permission(BIKES),
    }
    return World(datasets, permissions)


@pytest.fixture(scope="session")
def hashed_world(world: World) -> World:
    """The same world, with subjects counted by the hash column that ingestion stores."""
    datasets = {slug: replace(info, has_subject_hash=True) for slug, info in world.datasets.items()}
    return World(datasets, dict(world.permissions))


@pytest.fixture(scope="session")
def counted_world(world: World) -> World:
    """The hashed world, with the ingestion's row statistics of the water table: each meter holds one row a month."""
    meters = sum(COMMUNES.values())
    datasets = {
        slug: replace(info, has_subject_hash=True)
        if slug != WATER
        else replace(
            info,
            has_subject_hash=True,
            subject_rows_max=len(MONTHS),
            subjects=meters,
            rows=meters * len(MONTHS),
        )
        for slug, info in world.datasets.items()
    }
    return World(datasets, dict(world.permissions))


def water_rows(seed: int = 7) -> list[tuple[Any, ...]]:
    """(meter_id, commune_insee, month, volume_m3, household_size) rows."""
    rng = random.Random(seed)
    rows = []
    for commune, meters in COMMUNES.items():
        for index in range(meters):
            meter = f"M{commune}-{index:02d}"
            size = rng.randint(1, 5)
            for month in MONTHS:
                rows.append((meter, commune, month, round(rng.uniform(2, 20), 1), size))
    return rows


def bus_rows(seed: int = 11) -> list[tuple[Any, ...]]:
    """(stop_id, stop_name, line_id, day, hour, boardings, alightings) rows."""
    rng = random.Random(seed)
    rows = []
    for line in LINES:
        for stop in range(4):
            for hour in (7, 8, 17):
                rows.append(
                    (f"S{stop}", f"Arrêt {stop}", line, date(2023, 3, 1), hour, rng.randint(0, 50), rng.randint(0, 50))
                )
    return rows


def leak_rows() -> list[tuple[Any, ...]]:
    """(leak_id, commune_insee, detected_on, repaired_on, longitude, latitude, volume_lost_m3, pipe_material) rows."""
    return [
        (f"F{i}", commune, date(2023, 1 + i % 6, 1), None, 5.0 + i / 100, 47.3, float(i), ("fonte", "PVC")[i % 2])
        for i, commune in enumerate(["21231", "21166", "21054", "21231", "21166"])
    ]


def create_tables(
    con: duckdb.DuckDBPyConnection,
    water: list[tuple[Any, ...]] | None = None,
    bus: list[tuple[Any, ...]] | None = None,
) -> None:
    """Create and fill the physical tables (and the consent table) in ``con``."""
    for slug in (WATER, BUS, LEAKS, BIKES):
        con.execute(f"ATTACH ':memory:' AS ds_{slug.replace('-', '_')}")
    con.execute(
        f"CREATE TABLE {physical(WATER)} (meter_id VARCHAR, commune_insee VARCHAR, month DATE, volume_m3 DOUBLE, "
        "household_size INTEGER)"
    )
    con.executemany(f"INSERT INTO {physical(WATER)} VALUES (?, ?, ?, ?, ?)", water or water_rows())
    # The hidden subject hash that ingestion stores (read only by worlds whose water dataset has_subject_hash).
    con.execute(f'ALTER TABLE {physical(WATER)} ADD COLUMN "{SUBJECT_HASH_COLUMN}" UBIGINT')
    hashed = subject_hash_sql("meter_id", territory_key("test pseudonym secret, not a real one", "242100410"))
    con.execute(f'UPDATE {physical(WATER)} SET "{SUBJECT_HASH_COLUMN}" = {hashed}')
    con.execute(
        f"CREATE TABLE {physical(BUS)} (stop_id VARCHAR, stop_name VARCHAR, line_id VARCHAR, day DATE, hour INTEGER, "
        "boardings INTEGER, alightings INTEGER)"
    )
    con.executemany(f"INSERT INTO {physical(BUS)} VALUES (?, ?, ?, ?, ?, ?, ?)", bus or bus_rows())
    con.execute(
        f"CREATE TABLE {physical(LEAKS)} (leak_id VARCHAR, commune_insee VARCHAR, detected_on DATE, repaired_on DATE, "
        "longitude DOUBLE, latitude DOUBLE, volume_lost_m3 DOUBLE, pipe_material VARCHAR)"
    )
    con.executemany(f"INSERT INTO {physical(LEAKS)} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", leak_rows())
    con.execute(
        f"CREATE TABLE {physical(BIKES)} (channel_id VARCHAR, counter_id VARCHAR, start_datetime TIMESTAMP, "
        "end_datetime TIMESTAMP, count DOUBLE)"
    )
    con.execute(f"INSERT INTO {physical(BIKES)} VALUES ('C1', 'K1', TIMESTAMP '2022-05-01 00:00:00', NULL, 42)")
    con.execute("CREATE TABLE consent_water (subject VARCHAR)")
    con.execute(
        "INSERT INTO consent_water SELECT DISTINCT meter_id FROM " + physical(WATER) + " WHERE household_size > 2"
    )


def sandbox() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB set up as the worker is, before the tables are loaded."""
    return duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "python_enable_replacements": False,
            "threads": 1,
        }
    )


def lock(con: duckdb.DuckDBPyConnection) -> None:
    """No file, network or configuration access from now on."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


@pytest.fixture(scope="session")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = sandbox()
    create_tables(connection)
    lock(connection)
    yield connection
    connection.close()


Released = tuple[list[str], list[tuple[Any, ...]]]


def release(con: duckdb.DuckDBPyConnection, result: Plan) -> Released:
    """Run a plan as the executor does: drop rows below k by the k column, then the column itself."""
    cursor = con.cursor()
    rows = cursor.execute(result.sql).fetchall()
    names = [d[0] for d in cursor.description]
    if result.k_column is not None:
        assert names[-1] == result.k_column
        assert result.k is not None
        rows = [row[:-1] for row in rows if row[-1] is None or row[-1] >= result.k]
        names = names[:-1]
    if result.suppressed_column is not None:
        # The count of groups below k rides on every released row, just before the k column.
        assert names[-1] == result.suppressed_column
        rows = [row[:-1] for row in rows]
        names = names[:-1]
    return names, rows


@pytest.fixture(scope="session")
def make_db() -> Callable[..., duckdb.DuckDBPyConnection]:
    """A fresh locked database: ``make_db(water_rows, bus_rows)``."""

    def _make(
        water: list[tuple[Any, ...]] | None = None, bus: list[tuple[Any, ...]] | None = None
    ) -> duckdb.DuckDBPyConnection:
        connection = sandbox()
        create_tables(connection, water, bus)
        lock(connection)
        return connection

    return _make


@pytest.fixture(scope="session")
def released() -> Callable[[duckdb.DuckDBPyConnection, Plan], Released]:
    """The executor's suppression, as a function of (connection, plan)."""
    return release


@pytest.fixture(scope="session")
def raw_water() -> list[tuple[Any, ...]]:
    """The water rows, as stored."""
    return water_rows()


@pytest.fixture(scope="session")
def raw_bus() -> list[tuple[Any, ...]]:
    """The bus rows, as stored."""
    return bus_rows()


@pytest.fixture(scope="session")
def run(world: World, con: duckdb.DuckDBPyConnection) -> Callable[..., Released]:
    """Plan and release: ``run(sql, permissions=None, **plan_kwargs)`` returns (column names, rows)."""

    def _run(sql: str, permissions: dict[str, Permission] | None = None, **kwargs: Any) -> Released:
        return release(con, world.plan(sql, permissions, **kwargs))

    return _run
