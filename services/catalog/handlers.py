"""NATS handlers of the catalog: the federation directory and the federated dataset index."""

from __future__ import annotations

from functools import partial

from sqlmodel import Session, col, select

from catalog.models import FederatedDataset, KnownNode, KnownTerritory
from catalog.search import SearchIndex
from contracts.datasets import PublishedDataset
from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1, DatasetWithdrawnV1, NodeRegisteredV1, TerritoryRegisteredV1
from kit.consumer import DurableConsumer, MessageHandler
from kit.db import as_utc, on_commit
from kit.service import ServiceContext

__all__ = [
    "apply_directory_event",
    "directory_consumer",
    "index_consumer",
    "index_handler",
    "load_index",
]


def apply_directory_event(session: Session, envelope: Envelope) -> None:
    """Upsert the territory or node an event describes; older events never overwrite newer ones."""
    event_time = as_utc(envelope.time)
    if envelope.type == TerritoryRegisteredV1.cloud_type():
        territory = TerritoryRegisteredV1.model_validate(envelope.data)
        row = session.get(KnownTerritory, territory.siren)
        if row is not None and as_utc(row.event_time) > event_time:
            return
        row = row or KnownTerritory(
            siren=territory.siren, name=territory.name, kind=territory.kind, event_time=event_time
        )
        row.name, row.kind, row.population = territory.name, territory.kind, territory.population
        row.communes, row.event_time = list(territory.communes), event_time
        session.add(row)
    elif envelope.type == NodeRegisteredV1.cloud_type():
        node = NodeRegisteredV1.model_validate(envelope.data)
        known = session.get(KnownNode, node.node_id)
        if known is not None and as_utc(known.event_time) > event_time:
            return
        known = known or KnownNode(
            id=node.node_id, name=node.name, hosting_country=node.hosting_country, event_time=event_time
        )
        known.name, known.hosting_country = node.name, node.hosting_country
        known.territories = list(node.territories)
        known.urls = {name: str(url) for name, url in node.urls.items()}
        known.event_time = event_time
        session.add(known)
    # Other registry events do not concern the directory: acknowledged and ignored.


def index_handler(index: SearchIndex) -> MessageHandler:
    """Apply advertisements to the federated table, then (after commit) to the in-memory search index.

    Last writer wins by event time: a dataset has one publishing node, so its events are ordered by its clock;
    a withdrawal leaves a tombstone so that a late, older advertisement cannot resurrect the dataset.
    """

    def handle(session: Session, envelope: Envelope) -> None:
        event_time = as_utc(envelope.time)
        if envelope.type == DatasetUpsertedV1.cloud_type():
            dataset = DatasetUpsertedV1.model_validate(envelope.data).dataset
            row = session.get(FederatedDataset, dataset.id)
            if row is not None and as_utc(row.event_time) > event_time:
                return
            row = row or FederatedDataset(
                id=dataset.id,
                territory=dataset.territory,
                node=dataset.node,
                revision=dataset.revision,
                event_time=event_time,
            )
            row.node, row.revision, row.withdrawn = dataset.node, dataset.revision, False
            row.document, row.event_time = dataset.model_dump(mode="json", by_alias=True), event_time
            session.add(row)
            on_commit(session, partial(index.upsert, dataset))
        elif envelope.type == DatasetWithdrawnV1.cloud_type():
            withdrawn = DatasetWithdrawnV1.model_validate(envelope.data)
            key = f"{withdrawn.territory}/{withdrawn.slug}"
            row = session.get(FederatedDataset, key)
            if row is not None and as_utc(row.event_time) > event_time:
                return
            row = row or FederatedDataset(
                id=key,
                territory=withdrawn.territory,
                node=withdrawn.node,
                revision=withdrawn.revision,
                event_time=event_time,
            )
            row.withdrawn, row.document, row.event_time = True, None, event_time
            session.add(row)
            on_commit(session, partial(index.remove, key))

    return handle


def load_index(ctx: ServiceContext, index: SearchIndex) -> int:
    """Fill the in-memory index from the federated table (at start); returns how many datasets it holds."""
    assert ctx.database is not None
    with ctx.database.session() as session:
        rows = session.exec(select(FederatedDataset).where(col(FederatedDataset.withdrawn).is_(False))).all()
        for row in rows:
            if row.document is not None:
                index.upsert(PublishedDataset.model_validate(row.document))
    return len(index)


def directory_consumer(ctx: ServiceContext) -> DurableConsumer:
    """The durable consumer keeping this node's copy of the federation directory."""
    assert ctx.database is not None
    return DurableConsumer(
        database=ctx.database,
        messaging=ctx.messaging,
        stream="REGISTRY",
        durable=f"catalog-{ctx.settings.node_id}-directory",
        filter_subject="registry.>",
        handler=apply_directory_event,
        max_deliver=ctx.settings.consumer_max_deliver,
        ack_wait=ctx.settings.consumer_ack_wait,
    )


def index_consumer(ctx: ServiceContext, index: SearchIndex) -> DurableConsumer:
    """The durable consumer feeding this node's federated index with every node's advertisements."""
    assert ctx.database is not None
    return DurableConsumer(
        database=ctx.database,
        messaging=ctx.messaging,
        stream="CATALOG",
        durable=f"catalog-{ctx.settings.node_id}-index",
        filter_subject="catalog.dataset.>",
        handler=index_handler(index),
        max_deliver=ctx.settings.consumer_max_deliver,
        ack_wait=ctx.settings.consumer_ack_wait,
    )
