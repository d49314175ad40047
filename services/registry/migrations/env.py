"""Alembic environment of the registry: the registry's tables only, batch mode for SQLite."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlmodel import SQLModel

import kit.advertisements  # noqa: F401 - registers the kit's tables
import kit.consumer  # noqa: F401
import kit.idempotency  # noqa: F401
import kit.outbox  # noqa: F401
import registry.agreements  # noqa: F401 - registers the registry's tables
import registry.apikeys  # noqa: F401
import registry.models  # noqa: F401
from registry.migrate import REGISTRY_TABLES

config = context.config


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    if type_ == "table":
        return name in REGISTRY_TABLES
    table = getattr(obj, "table", None)
    return table is None or table.name in REGISTRY_TABLES


def run_migrations() -> None:
    engine = config.attributes["engine"]
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()


run_migrations()
