"""What the registry knows of published datasets, from the catalog's advertisements (to check terms against)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1, DatasetWithdrawnV1
from kit.consumer import DurableConsumer
from kit.service import ServiceContext
from registry.agreements import RegistryDataset

__all__ = ["apply_advertisement", "datasets_consumer"]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def apply_advertisement(session: Session, envelope: Envelope) -> None:
    """Keep the latest advertisement of each dataset (last writer wins by event time)."""
    event_time = _aware(envelope.time)
    if envelope.type == DatasetUpsertedV1.cloud_type():
        dataset = DatasetUpsertedV1.model_validate(envelope.data).dataset
        key, territory, revision = dataset.id, dataset.territory, dataset.revision
        document = dataset.metadata.model_dump(mode="json", by_alias=True)
        withdrawn = False
    elif envelope.type == DatasetWithdrawnV1.cloud_type():
        gone = DatasetWithdrawnV1.model_validate(envelope.data)
        key, territory, revision = f"{gone.territory}/{gone.slug}", gone.territory, gone.revision
        document, withdrawn = None, True
    else:
        return
    row = session.get(RegistryDataset, key)
    if row is not None and _aware(row.event_time) > event_time:
        return
    row = row or RegistryDataset(id=key, territory=territory, revision=revision, event_time=event_time)
    row.revision, row.withdrawn, row.event_time = revision, withdrawn, event_time
    if document is not None:
        row.metadata_document = document
    session.add(row)


def datasets_consumer(ctx: ServiceContext) -> DurableConsumer:
    """The registry's durable consumer of dataset advertisements."""
    assert ctx.database is not None
    return DurableConsumer(
        database=ctx.database,
        messaging=ctx.messaging,
        stream="CATALOG",
        durable="registry-datasets",
        filter_subject="catalog.dataset.>",
        handler=apply_advertisement,
        max_deliver=ctx.settings.consumer_max_deliver,
        ack_wait=ctx.settings.consumer_ack_wait,
    )
