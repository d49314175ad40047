"""Tables of the catalog service."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON
from sqlmodel import Column, Field, SQLModel

__all__ = ["KnownNode", "KnownTerritory"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KnownTerritory(SQLModel, table=True):
    """A territory of the federation as advertised by the registry (the publishers of federated datasets)."""

    __tablename__ = "known_territory"

    siren: str = Field(primary_key=True, max_length=9)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)
    population: int = 0
    communes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    event_time: datetime = Field(description="time of the event that last changed this row")
    received_at: datetime = Field(default_factory=_utcnow)


class KnownNode(SQLModel, table=True):
    """A node of the federation as advertised by the registry."""

    __tablename__ = "known_node"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    hosting_country: str = Field(max_length=2)
    territories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    urls: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    event_time: datetime
    received_at: datetime = Field(default_factory=_utcnow)
