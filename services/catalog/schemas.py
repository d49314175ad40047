"""Request and response bodies of the catalog API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from catalog.models import DatasetAction, DatasetState
from contracts.datasets import DatasetMetadata
from contracts.identifiers import Slug

__all__ = [
    "DatasetCreate",
    "DatasetOut",
    "DatasetUpdate",
    "HistoryOut",
    "HostedTerritory",
    "KnownNodeOut",
    "KnownTerritoryOut",
    "RevisionOut",
    "SampleError",
    "SampleReport",
    "WithdrawBody",
]


class DatasetCreate(BaseModel):
    """A new dataset: its slug (unique in the territory) and its metadata."""

    model_config = ConfigDict(extra="forbid")

    slug: Slug
    metadata: DatasetMetadata


class DatasetUpdate(BaseModel):
    """The whole new metadata of a dataset (a new revision when it differs)."""

    model_config = ConfigDict(extra="forbid")

    metadata: DatasetMetadata


class WithdrawBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


class DatasetOut(BaseModel):
    """A dataset as its reader may see it: stewards see the latest revision, others the published one."""

    id: str
    territory: str
    slug: str
    state: DatasetState
    revision: int = Field(description="revision shown in `metadata`")
    latest_revision: int | None = Field(default=None, description="stewards only: the latest revision")
    published_revision: int | None
    uri: str
    created: datetime
    modified: datetime
    published_at: datetime | None
    metadata: DatasetMetadata


class RevisionOut(BaseModel):
    revision: int
    content_hash: str
    author: str
    created_at: datetime
    metadata: DatasetMetadata


class HistoryOut(BaseModel):
    seq: int
    action: DatasetAction
    revision: int
    actor: str
    at: datetime
    reason: str | None


class SampleError(BaseModel):
    """One problem found in a sample file; row numbers count the header as row 1, as spreadsheets do."""

    row: int | None
    field: str | None
    code: str
    message: str


class SampleReport(BaseModel):
    valid: bool
    rows_checked: int
    errors: list[SampleError]
    truncated: bool = Field(description="more errors exist than listed")
    schema_fields: list[str]
    details: dict[str, Any] = Field(default_factory=dict)


class HostedTerritory(BaseModel):
    siren: str
    name: str | None


class KnownTerritoryOut(BaseModel):
    siren: str
    name: str
    kind: str
    population: int
    communes: list[str]


class KnownNodeOut(BaseModel):
    id: str
    name: str
    hosting_country: str
    territories: list[str]
    urls: dict[str, str]
