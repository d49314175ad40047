"""The registry's Alembic migrations build its whole schema on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from kit.db import Database
from registry.migrate import REGISTRY_TABLES, upgrade


def _include(obj, name, type_, reflected, compare_to) -> bool:
    if type_ == "table":
        return name in REGISTRY_TABLES
    table = getattr(obj, "table", None)
    return table is None or table.name in REGISTRY_TABLES


def test_migrations_create_every_table_and_match_the_models(database_url: str):
    database = Database(database_url)
    try:
        upgrade(database)
        upgrade(database)  # idempotent
        tables = set(inspect(database.engine).get_table_names())
        assert REGISTRY_TABLES <= tables
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_object": _include, "compare_type": True})
            differences = compare_metadata(context, SQLModel.metadata)
        assert differences == [], (
            f"models changed without a migration (python -m registry.migrate revision): {differences}"
        )
    finally:
        database.dispose()


def test_a_database_made_before_migrations_is_adopted(tmp_path):
    import registry.models  # noqa: F401
    from registry.models import Territory

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        Territory.metadata.create_all(database.engine, tables=[Territory.__table__])  # type: ignore[attr-defined]
        upgrade(database)
        tables = set(inspect(database.engine).get_table_names())
        assert REGISTRY_TABLES <= tables and "alembic_version" in tables
        upgrade(database)
    finally:
        database.dispose()
