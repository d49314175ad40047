"""Events of the federation registry."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, HttpUrl

from contracts import subjects
from contracts.events.base import Event, register
from contracts.identifiers import NodeId, Siren, Siret
from contracts.subjects import AgreementAction

__all__ = [
    "AgreementTransitionedV1",
    "ApiKeyCreatedV1",
    "ApiKeyExpiredV1",
    "ApiKeyRevokedV1",
    "ApiKeyRotatedV1",
    "NodeRegisteredV1",
    "OrganisationAdmittedV1",
    "TerritoryRegisteredV1",
]

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


AgreementStateName = Literal[
    "REQUESTED",
    "OFFERED",
    "ACCEPTED",
    "DPO_REVIEW",
    "ACTIVE",
    "SUSPENDED",
    "REVOKED",
    "TERMINATED",
    "EXPIRED",
    "REJECTED",
]


@register
class AgreementTransitionedV1(Event):
    event_name: ClassVar[str] = "registry.agreement.transitioned"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "An agreement changed state (requested, offered, ..., revoked, expired): who, when, why."
    subject_pattern: ClassVar[str] = "registry.agreement.{action}.{agreement_id}"
    subject_parameters: ClassVar[dict[str, str]] = {
        "action": "what happened: requested, offered, countered, accepted, approved, activated, suspended, resumed, "
        "revoked, terminated, expired or rejected",
        "agreement_id": "id of the agreement (UUID)",
    }
    producer: ClassVar[str] = "registry"

    agreement_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    action: AgreementAction
    from_state: AgreementStateName | None
    to_state: AgreementStateName
    dataset: str
    provider: Siren
    consumer: str
    agreement_version: int = Field(ge=1)
    terms_version: int = Field(ge=1)
    terms_hash: str = Field(min_length=64, max_length=64)
    actor: str = Field(max_length=200)
    reason: str | None = Field(default=None, max_length=1000)
    at: datetime

    def subject(self) -> str:
        return subjects.registry_agreement(self.action, self.agreement_id)

    def entity(self) -> str:
        return f"agreement/{self.agreement_id}"


_APIKEY_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_APIKEY_SUBJECT_PARAMETERS = {"key_id": "id of the API key (UUID)"}


class _ApiKeyEvent(Event):
    """What every API key event says about the key: never its secret nor its hash."""

    action: ClassVar[str]
    producer: ClassVar[str] = "registry"
    subject_parameters: ClassVar[dict[str, str]] = _APIKEY_SUBJECT_PARAMETERS

    key_id: str = Field(pattern=_APIKEY_ID)
    owner: str = Field(pattern=r"^(?:[0-9]{9}|[0-9]{14})$", description="SIRET of an organisation or SIREN")
    lookup_prefix: str = Field(pattern=r"^[0-9A-Za-z]{8}$", description="the 8 characters after mlg_prt_")
    scopes: list[str] = Field(max_length=20)

    def subject(self) -> str:
        return subjects.registry_apikey(self.action, self.key_id)

    def entity(self) -> str:
        return f"apikey/{self.key_id}"


@register
class ApiKeyCreatedV1(_ApiKeyEvent):
    event_name: ClassVar[str] = "registry.apikey.created"
    version: ClassVar[int] = 1
    action: ClassVar[str] = "created"
    summary: ClassVar[str] = "A federated API key was issued (also the new key of a rotation)."
    subject_pattern: ClassVar[str] = "registry.apikey.created.{key_id}"

    name: str = Field(min_length=1, max_length=100)
    created_at: datetime
    expires_at: datetime
    rotated_from: str | None = Field(default=None, pattern=_APIKEY_ID, description="the key this one replaces")


@register
class ApiKeyRotatedV1(_ApiKeyEvent):
    event_name: ClassVar[str] = "registry.apikey.rotated"
    version: ClassVar[int] = 1
    action: ClassVar[str] = "rotated"
    summary: ClassVar[str] = (
        "A federated API key was replaced: it stays valid until overlap_until, then gateways refuse it."
    )
    subject_pattern: ClassVar[str] = "registry.apikey.rotated.{key_id}"

    rotated_at: datetime
    overlap_until: datetime
    expires_at: datetime
    replaced_by: str = Field(pattern=_APIKEY_ID, description="id of the new key")


@register
class ApiKeyRevokedV1(_ApiKeyEvent):
    event_name: ClassVar[str] = "registry.apikey.revoked"
    version: ClassVar[int] = 1
    action: ClassVar[str] = "revoked"
    summary: ClassVar[str] = "A federated API key was revoked: gateways drop it at once."
    subject_pattern: ClassVar[str] = "registry.apikey.revoked.{key_id}"

    revoked_at: datetime
    reason: str = Field(min_length=1, max_length=500)


@register
class ApiKeyExpiredV1(_ApiKeyEvent):
    event_name: ClassVar[str] = "registry.apikey.expired"
    version: ClassVar[int] = 1
    action: ClassVar[str] = "expired"
    summary: ClassVar[str] = "A federated API key reached its expiry: gateways drop it."
    subject_pattern: ClassVar[str] = "registry.apikey.expired.{key_id}"

    expires_at: datetime
