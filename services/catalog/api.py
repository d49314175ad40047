"""HTTP API of the catalog."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlmodel import col, select

from catalog.models import KnownNode, KnownTerritory
from kit.service import ContextDep, SessionDep

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["federation"])


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


@router.get("/territories", response_model=list[HostedTerritory])
def hosted_territories(session: SessionDep, ctx: ContextDep) -> list[HostedTerritory]:
    """Territories hosted on this node."""
    out = []
    for siren in ctx.settings.territories:
        known = session.get(KnownTerritory, siren)
        out.append(HostedTerritory(siren=siren, name=known.name if known else None))
    return out


@router.get("/federation/territories", response_model=list[KnownTerritoryOut])
def federation_territories(session: SessionDep) -> list[KnownTerritoryOut]:
    """Every territory of the federation, as this node learnt them from the registry's events."""
    rows = session.exec(select(KnownTerritory).order_by(col(KnownTerritory.siren))).all()
    return [KnownTerritoryOut.model_validate(row, from_attributes=True) for row in rows]


@router.get("/federation/nodes", response_model=list[KnownNodeOut])
def federation_nodes(session: SessionDep) -> list[KnownNodeOut]:
    """Every node of the federation, as this node learnt them from the registry's events."""
    rows = session.exec(select(KnownNode).order_by(col(KnownNode.id))).all()
    return [KnownNodeOut.model_validate(row, from_attributes=True) for row in rows]
