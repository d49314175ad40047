"""Tables of the catalog service."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from kit.db import utcnow

__all__ = [
    "Dataset",
    "DatasetAction",
    "DatasetHistory",
    "DatasetRevision",
    "DatasetState",
    "FederatedDataset",
    "KnownNode",
    "KnownTerritory",
]


class KnownTerritory(SQLModel, table=True):
    """A territory of the federation as advertised by the registry (the publishers of federated datasets)."""

    __tablename__ = "known_territory"

    siren: str = Field(primary_key=True, max_length=9)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)
    population: int = 0
    communes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    event_time: datetime = Field(description="time of the event that last changed this row")
    received_at: datetime = Field(default_factory=utcnow)


class KnownNode(SQLModel, table=True):
    """A node of the federation as advertised by the registry."""

    __tablename__ = "known_node"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    hosting_country: str = Field(max_length=2)
    territories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    urls: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    event_time: datetime
    received_at: datetime = Field(default_factory=utcnow)


class DatasetState(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    WITHDRAWN = "withdrawn"


class DatasetAction(StrEnum):
    CREATED = "created"
    EDITED = "edited"
    PUBLISHED = "published"
    WITHDRAWN = "withdrawn"


class Dataset(SQLModel, table=True):
    """A dataset of a territory hosted on this node: its latest revision and the one advertised, if any."""

    __tablename__ = "dataset"

    territory: str = Field(primary_key=True, max_length=9)
    slug: str = Field(primary_key=True, max_length=64)
    state: DatasetState = Field(default=DatasetState.DRAFT, max_length=16)
    revision: int = Field(default=1, description="latest revision")
    published_revision: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    modified_at: datetime = Field(default_factory=utcnow)
    published_at: datetime | None = None

    @property
    def id(self) -> str:
        return f"{self.territory}/{self.slug}"


class DatasetRevision(SQLModel, table=True):
    """One immutable revision of a dataset's metadata."""

    __tablename__ = "dataset_revision"

    territory: str = Field(primary_key=True, max_length=9)
    slug: str = Field(primary_key=True, max_length=64)
    revision: int = Field(primary_key=True)
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False), description="DatasetMetadata as JSON")
    content_hash: str = Field(max_length=64, description="SHA-256 of the canonical JSON of the metadata")
    author: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetHistory(SQLModel, table=True):
    """Who did what to a dataset, when and why."""

    __tablename__ = "dataset_history"
    __table_args__ = (UniqueConstraint("territory", "slug", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    territory: str = Field(max_length=9, index=True)
    slug: str = Field(max_length=64)
    seq: int
    action: DatasetAction = Field(max_length=16)
    revision: int
    actor: str = Field(max_length=200)
    at: datetime = Field(default_factory=utcnow)
    reason: str | None = Field(default=None, max_length=500)


class FederatedDataset(SQLModel, table=True):
    """A dataset advertised in the federation (by any node, this one included), or its tombstone once withdrawn."""

    __tablename__ = "federated_dataset"

    id: str = Field(primary_key=True, max_length=80, description="<SIREN>/<slug>")
    territory: str = Field(max_length=9, index=True)
    node: str = Field(max_length=64)
    revision: int
    withdrawn: bool = False
    document: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True), description="PublishedDataset as JSON"
    )
    event_time: datetime = Field(description="time of the advertisement that last changed this row")
    received_at: datetime = Field(default_factory=utcnow)
