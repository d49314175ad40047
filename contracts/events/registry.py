"""Events of the federation registry."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, HttpUrl

from contracts import subjects
from contracts.events.base import Event, register
from contracts.identifiers import NodeId, Siren, Siret

__all__ = ["NodeRegisteredV1", "OrganisationAdmittedV1", "TerritoryRegisteredV1"]

TerritoryKind = Literal["METRO", "CU", "CA", "CC", "COMMUNE", "SYNDICAT"]


@register
class TerritoryRegisteredV1(Event):
    event_name: ClassVar[str] = "registry.territory.registered"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A territory joined the federation directory, or its description changed."
    subject_pattern: ClassVar[str] = "registry.territory.registered.{siren}"
    subject_parameters: ClassVar[dict[str, str]] = {"siren": "SIREN of the territory (nine digits)"}
    producer: ClassVar[str] = "registry"
    consumers: ClassVar[tuple[str, ...]] = ("catalog",)

    siren: Siren
    name: str = Field(min_length=1, max_length=200)
    kind: TerritoryKind
    population: int = Field(ge=0)
    communes: list[str] = Field(description="INSEE codes of member communes", max_length=1000)

    def subject(self) -> str:
        return subjects.registry_territory_registered(self.siren)

    def entity(self) -> str:
        return f"territory/{self.siren}"


@register
class NodeRegisteredV1(Event):
    event_name: ClassVar[str] = "registry.node.registered"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A node (one deployment of catalog, exchange and consent) joined or changed."
    subject_pattern: ClassVar[str] = "registry.node.registered.{node_id}"
    subject_parameters: ClassVar[dict[str, str]] = {"node_id": "slug of the node"}
    producer: ClassVar[str] = "registry"
    consumers: ClassVar[tuple[str, ...]] = ("catalog",)

    node_id: NodeId
    name: str = Field(min_length=1, max_length=200)
    hosting_country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 country of the hosting")
    territories: list[Siren] = Field(min_length=1)
    urls: dict[Literal["catalog", "exchange", "consent"], HttpUrl]

    def subject(self) -> str:
        return subjects.registry_node_registered(self.node_id)

    def entity(self) -> str:
        return f"node/{self.node_id}"


@register
class OrganisationAdmittedV1(Event):
    event_name: ClassVar[str] = "registry.organisation.admitted"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A partner organisation was admitted to the federation."
    subject_pattern: ClassVar[str] = "registry.organisation.admitted.{siret}"
    subject_parameters: ClassVar[dict[str, str]] = {"siret": "SIRET of the organisation (fourteen digits)"}
    producer: ClassVar[str] = "registry"

    siret: Siret
    name: str = Field(min_length=1, max_length=200)

    def subject(self) -> str:
        return subjects.registry_organisation_admitted(self.siret)

    def entity(self) -> str:
        return f"organisation/{self.siret}"
