"""The published datasets of the federation as a service last heard of them, from the catalog's advertisements.

The registry checks agreement terms against them; the exchange learns the schemas and access levels it enforces.
Last writer wins by event time (a dataset has one publishing node); a withdrawal keeps a tombstone so that a late,
older advertisement cannot bring the dataset back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Column, Field, Session, SQLModel, col, select

from contracts.datasets import DatasetMetadata
from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1, DatasetWithdrawnV1
from kit.consumer import DurableConsumer
from kit.db import Database, as_utc
from kit.messaging import Messaging

__all__ = [
    "AdvertisedDataset",
    "advertisements_consumer",
    "apply_advertisement",
    "published_in",
    "published_metadata",
]


class AdvertisedDataset(SQLModel, table=True):
    """The latest advertisement of a dataset: its metadata, or a tombstone once withdrawn."""

    __tablename__ = "advertised_dataset"

    id: str = Field(primary_key=True, max_length=80, description="<SIREN>/<slug>")
    territory: str = Field(max_length=9, index=True)
    revision: int
    withdrawn: bool = False
    metadata_document: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON, nullable=True))
    event_time: datetime


def apply_advertisement(session: Session, envelope: Envelope) -> None:
    """Record an upsert or a withdrawal (other events are ignored)."""
    event_time = as_utc(envelope.time)
    if envelope.type == DatasetUpsertedV1.cloud_type():
        dataset = DatasetUpsertedV1.model_validate(envelope.data).dataset
        key, territory, revision = dataset.id, dataset.territory, dataset.revision
        document: dict[str, Any] | None = dataset.metadata.model_dump(mode="json", by_alias=True)
        withdrawn = False
    elif envelope.type == DatasetWithdrawnV1.cloud_type():
        gone = DatasetWithdrawnV1.model_validate(envelope.data)
        key, territory, revision = f"{gone.territory}/{gone.slug}", gone.territory, gone.revision
        document, withdrawn = None, True
    else:
        return
    row = session.get(AdvertisedDataset, key)
    if row is not None and as_utc(row.event_time) > event_time:
        return
    row = row or AdvertisedDataset(id=key, territory=territory, revision=revision, event_time=event_time)
    row.revision, row.withdrawn, row.event_time = revision, withdrawn, event_time
    if document is not None:
        row.metadata_document = document
    session.add(row)


def published_metadata(session: Session, dataset_id: str) -> DatasetMetadata | None:
    """The metadata of a published dataset, or None when unknown or withdrawn."""
    row = session.get(AdvertisedDataset, dataset_id)
    if row is None or row.withdrawn or row.metadata_document is None:
        return None
    return DatasetMetadata.model_validate(row.metadata_document)


def published_in(session: Session, territory: str) -> dict[str, DatasetMetadata]:
    """Every published dataset of a territory, by slug."""
    rows = session.exec(
        select(AdvertisedDataset).where(
            col(AdvertisedDataset.territory) == territory, col(AdvertisedDataset.withdrawn).is_(False)
        )
    ).all()
    return {
        row.id.split("/", 1)[1]: DatasetMetadata.model_validate(row.metadata_document)
        for row in rows
        if row.metadata_document is not None
    }


def advertisements_consumer(
    *, database: Database, messaging: Messaging, durable: str, max_deliver: int = 5, ack_wait: float = 30.0
) -> DurableConsumer:
    """A durable consumer of every dataset advertisement into ``advertised_dataset``."""
    return DurableConsumer(
        database=database,
        messaging=messaging,
        stream="CATALOG",
        durable=durable,
        filter_subject="catalog.dataset.>",
        handler=apply_advertisement,
        max_deliver=max_deliver,
        ack_wait=ack_wait,
    )
