"""Alembic migrations of the registry's database (SQLite by default, PostgreSQL in production).

The registry runs :func:`upgrade` at start instead of ``create_all``; ``python -m registry.migrate revision -m "..."``
autogenerates a new revision from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from sqlmodel import SQLModel

from kit.db import Database

__all__ = ["REGISTRY_TABLES", "alembic_config", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

REGISTRY_TABLES = frozenset(
    {
        "territory",
        "node",
        "organisation",
        "advertised_dataset",
        "agreement",
        "agreement_terms",
        "agreement_transition",
        "api_key",
        # the kit's tables, which every service owns a copy of
        "outbox",
        "processed_message",
        "consumer_checkpoint",
        "idempotency_record",
    }
)


def alembic_config(database: Database) -> Config:
    """An Alembic configuration bound to ``database``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = database.engine
    return config


def upgrade(database: Database) -> None:
    """Bring the database to the latest revision (creates every table on an empty database)."""
    config = alembic_config(database)
    names = set(inspect(database.engine).get_table_names())
    if names and "alembic_version" not in names:
        # A registry database made before migrations existed (an embedded demo): create what it lacks, then adopt it.
        import registry.agreements  # noqa: F401 - the models must be registered before create_all
        import registry.apikeys  # noqa: F401

        tables = [table for table in SQLModel.metadata.sorted_tables if table.name in REGISTRY_TABLES]
        SQLModel.metadata.create_all(database.engine, tables=tables)
        command.stamp(config, "head")
    command.upgrade(config, "head")


def main(argv: list[str]) -> int:
    """``python -m registry.migrate revision -m MESSAGE [--url URL]`` or ``upgrade [--url URL]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m registry.migrate")
    parser.add_argument("action", choices=["revision", "upgrade", "current"])
    parser.add_argument("-m", "--message", default="change")
    parser.add_argument("--url", default="sqlite:///.maillage/registry-migrations.db")
    args = parser.parse_args(argv)
    database = Database(args.url)
    config = alembic_config(database)
    if args.action == "revision":
        command.upgrade(config, "head")
        command.revision(config, message=args.message, autogenerate=True)
    elif args.action == "upgrade":
        command.upgrade(config, "head")
    else:
        command.current(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
