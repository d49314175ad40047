"""NATS handlers of the catalog: the federation directory, from the registry's events."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from catalog.models import KnownNode, KnownTerritory
from contracts.envelope import Envelope
from contracts.events import NodeRegisteredV1, TerritoryRegisteredV1
from kit.consumer import DurableConsumer
from kit.service import ServiceContext

__all__ = ["apply_directory_event", "directory_consumer"]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def apply_directory_event(session: Session, envelope: Envelope) -> None:
    """Upsert the territory or node an event describes; older events never overwrite newer ones."""
    event_time = _aware(envelope.time)
    if envelope.type == TerritoryRegisteredV1.cloud_type():
        territory = TerritoryRegisteredV1.model_validate(envelope.data)
        row = session.get(KnownTerritory, territory.siren)
        if row is not None and row.event_time > event_time:
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
        if known is not None and known.event_time > event_time:
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
