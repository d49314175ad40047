"""Events of the consent service: each change of a consent record, for the exchanges computing on consented subjects."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts import subjects
from contracts.events.base import Event, register
from contracts.identifiers import Siren

__all__ = ["ConsentChangedV1", "ConsentEventKind"]

ConsentEventKind = Literal["given", "renewed", "withdrawn", "expired", "refused", "erased"]


@register
class ConsentChangedV1(Event):
    event_name: ClassVar[str] = "consent.record.changed"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = (
        "A consent record changed (given, renewed, withdrawn, expired, refused, erased): the state an exchange applies "
        "to consent-based grants of that purpose. The subject is a pseudonym, never an identifier."
    )
    subject_pattern: ClassVar[str] = "consent.record.changed.{siren}.{purpose}"
    subject_parameters: ClassVar[dict[str, str]] = {
        "siren": "SIREN of the territory holding the record",
        "purpose": "the DPV purpose concept, lower case (scientificresearch)",
    }
    producer: ClassVar[str] = "consent"

    territory: Siren
    record_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=1, description="the record's event number; an exchange keeps the highest it has seen")
    subject_pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of the identifier (hex)")
    purpose: str = Field(description="DPV purpose IRI")
    event: ConsentEventKind
    active: bool = Field(description="whether the subject may be computed on for this purpose after this event")
    valid_until: datetime | None = Field(default=None, description="when an active consent expires by itself")
    recipients: list[str] = Field(
        default_factory=list,
        description="SIREN or SIRET of each recipient the consent names: only they may compute on the subject",
    )
    at: datetime

    def subject(self) -> str:
        return subjects.consent_changed(self.territory, self.purpose)

    def entity(self) -> str:
        return f"consent/{self.territory}/{self.record_id}/{self.seq}"
