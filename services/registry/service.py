"""Federation directory: territories and nodes. Every change is an event through the outbox."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from contracts.events.registry import NodeRegisteredV1, OrganisationAdmittedV1, TerritoryRegisteredV1
from kit.db import utcnow
from kit.errors import Conflict, NotFound
from kit.outbox import enqueue
from registry.models import Node, Organisation, Territory
from registry.schemas import FederationFile, OrganisationIn, TerritoryIn

__all__ = [
    "admit_organisation",
    "get_organisation",
    "list_organisations",
    "get_territory",
    "list_nodes",
    "list_territories",
    "seed_directory",
    "upsert_territory",
]


def list_territories(*, db_session: Session) -> list[Territory]:
    """Every territory, by SIREN."""
    return list(db_session.exec(select(Territory).order_by(col(Territory.siren))).all())


def get_territory(*, db_session: Session, siren: str) -> Territory:
    """One territory; NotFound when the directory does not know it."""
    territory = db_session.get(Territory, siren)
    if territory is None:
        raise NotFound(f"territory {siren} is not in the federation", code="territory.not_found")
    return territory


def list_nodes(*, db_session: Session) -> list[Node]:
    """Every node, by id."""
    return list(db_session.exec(select(Node).order_by(col(Node.id))).all())


def upsert_territory(*, db_session: Session, siren: str, body: TerritoryIn, source: str) -> tuple[Territory, bool]:
    """Create or update a territory; emits ``registry.territory.registered`` when something changed."""
    territory = db_session.get(Territory, siren)
    values = body.model_dump()
    if territory is not None and all(getattr(territory, key) == value for key, value in values.items()):
        return territory, False
    if territory is None:
        territory = Territory(siren=siren, **values)
    else:
        for key, value in values.items():
            setattr(territory, key, value)
        territory.updated_at = utcnow()
    db_session.add(territory)
    enqueue(db_session, TerritoryRegisteredV1(siren=siren, **values), source=source)
    return territory, True


def _upsert_node(*, db_session: Session, event: NodeRegisteredV1, source: str) -> bool:
    urls = {name: str(url) for name, url in event.urls.items()}
    node = db_session.get(Node, event.node_id)
    values: dict[str, Any] = {
        "name": event.name,
        "hosting_country": event.hosting_country,
        "territories": list(event.territories),
        "urls": urls,
    }
    if node is not None and all(getattr(node, key) == value for key, value in values.items()):
        return False
    if node is None:
        node = Node(id=event.node_id, **values)
    else:
        for key, value in values.items():
            setattr(node, key, value)
        node.updated_at = utcnow()
    db_session.add(node)
    enqueue(db_session, event, source=source)
    return True


def seed_directory(*, db_session: Session, federation: FederationFile, source: str) -> int:
    """Bring the directory in line with the federation file; returns how many entries changed."""
    changed = 0
    for item in federation.territories:
        body = TerritoryIn(
            name=item.name, kind=item.type, population=item.population, communes=[c.insee for c in item.communes]
        )
        changed += upsert_territory(db_session=db_session, siren=item.siren, body=body, source=source)[1]
    for node in federation.nodes:
        event = NodeRegisteredV1(
            node_id=node.id,
            name=node.name,
            hosting_country=node.hosting_country,
            territories=node.territories,
            urls=node.urls,
        )
        changed += _upsert_node(db_session=db_session, event=event, source=source)
    return changed


def admit_organisation(*, db_session: Session, body: OrganisationIn, source: str) -> Organisation:
    """Register a partner organisation; Conflict when its SIRET is already known."""
    if db_session.get(Organisation, body.siret) is not None:
        raise Conflict(f"organisation {body.siret} is already registered", code="organisation.exists")
    organisation = Organisation(siret=body.siret, name=body.name, contact_email=str(body.contact_email))
    db_session.add(organisation)
    enqueue(
        db_session,
        OrganisationAdmittedV1(siret=organisation.siret, name=organisation.name),
        source=source,
    )
    return organisation


def get_organisation(*, db_session: Session, siret: str) -> Organisation:
    """One partner organisation; NotFound otherwise."""
    organisation = db_session.get(Organisation, siret)
    if organisation is None:
        raise NotFound(f"organisation {siret} is not registered", code="organisation.not_found")
    return organisation


def list_organisations(*, db_session: Session) -> list[Organisation]:
    """Every partner organisation, by SIRET."""
    return list(db_session.exec(select(Organisation).order_by(col(Organisation.siret))).all())
