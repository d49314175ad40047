"""Request and response bodies of the registry, and the federation file it seeds its directory from."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, HttpUrl

from contracts.events.registry import TerritoryKind
from contracts.identifiers import NodeId, Siren, Siret

__all__ = ["FederationFile", "NodeOut", "OrganisationIn", "OrganisationOut", "TerritoryIn", "TerritoryOut"]


class TerritoryIn(BaseModel):
    """A territory's description."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: TerritoryKind
    population: int = Field(ge=0)
    communes: list[str] = Field(default_factory=list, max_length=1000)


class TerritoryOut(TerritoryIn):
    siren: Siren


class NodeOut(BaseModel):
    id: NodeId
    name: str
    hosting_country: str
    territories: list[Siren]
    urls: dict[str, str]


class _FederationCommune(BaseModel):
    model_config = ConfigDict(extra="ignore")

    insee: str = Field(pattern=r"^[0-9][0-9AB][0-9]{3}$")
    name: str | None = None


class _FederationTerritory(BaseModel):
    model_config = ConfigDict(extra="ignore")

    siren: Siren
    name: str
    type: TerritoryKind
    population: int = 0
    communes: list[_FederationCommune] = []


class _FederationNode(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: NodeId
    name: str
    hosting_country: str = Field(default="FR", pattern=r"^[A-Z]{2}$")
    territories: list[Siren]
    urls: dict[Literal["catalog", "exchange", "consent"], HttpUrl]


class FederationFile(BaseModel):
    """The federation description written by ``maillage up`` (territories and nodes)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = 1
    territories: list[_FederationTerritory]
    nodes: list[_FederationNode]


class OrganisationIn(BaseModel):
    """A partner organisation joining the federation."""

    model_config = ConfigDict(extra="forbid")

    siret: Siret
    name: str = Field(min_length=1, max_length=200)
    contact_email: EmailStr


class OrganisationOut(BaseModel):
    siret: str
    name: str
    contact_email: str
    created_at: datetime
