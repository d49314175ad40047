"""Events of the catalog: dataset advertisements, consumed by every catalog node's federated index."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from contracts import subjects
from contracts.datasets import PublishedDataset
from contracts.events.base import Event, register
from contracts.identifiers import NodeId, Siren, Slug

__all__ = ["DatasetUpsertedV1", "DatasetWithdrawnV1"]


@register
class DatasetUpsertedV1(Event):
    event_name: ClassVar[str] = "catalog.dataset.upserted"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A dataset was published, or a new revision of its metadata was published."
    subject_pattern: ClassVar[str] = "catalog.dataset.upserted.{siren}.{slug}"
    subject_parameters: ClassVar[dict[str, str]] = {
        "siren": "SIREN of the publishing territory",
        "slug": "slug of the dataset",
    }
    producer: ClassVar[str] = "catalog"
    consumers: ClassVar[tuple[str, ...]] = ("catalog",)

    dataset: PublishedDataset

    def subject(self) -> str:
        return subjects.catalog_dataset_upserted(self.dataset.territory, self.dataset.slug)

    def entity(self) -> str:
        return f"dataset/{self.dataset.id}"


@register
class DatasetWithdrawnV1(Event):
    event_name: ClassVar[str] = "catalog.dataset.withdrawn"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A dataset was withdrawn from the federation: indexes drop it."
    subject_pattern: ClassVar[str] = "catalog.dataset.withdrawn.{siren}.{slug}"
    subject_parameters: ClassVar[dict[str, str]] = {
        "siren": "SIREN of the publishing territory",
        "slug": "slug of the dataset",
    }
    producer: ClassVar[str] = "catalog"
    consumers: ClassVar[tuple[str, ...]] = ("catalog",)

    territory: Siren
    slug: Slug
    node: NodeId
    revision: int = Field(ge=1, description="the revision that was withdrawn")
    withdrawn_at: datetime
    reason: str | None = Field(default=None, max_length=500)

    def subject(self) -> str:
        return subjects.catalog_dataset_withdrawn(self.territory, self.slug)

    def entity(self) -> str:
        return f"dataset/{self.territory}/{self.slug}"
