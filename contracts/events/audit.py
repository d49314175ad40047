"""Events of the exchange's audit log."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts import subjects
from contracts.events.base import Event, register
from contracts.identifiers import Siren

__all__ = ["AuditRecordedV1"]


@register
class AuditRecordedV1(Event):
    event_name: ClassVar[str] = "audit.query.recorded"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = "A query on a territory's data was accepted or refused (one link of its audit chain)."
    subject_pattern: ClassVar[str] = "audit.{siren}"
    subject_parameters: ClassVar[dict[str, str]] = {"siren": "SIREN of the territory whose data was queried"}
    producer: ClassVar[str] = "exchange"

    id: str
    territory: Siren
    seq: int = Field(ge=1)
    at: datetime
    principal: str
    organisation: str | None
    agreement_id: str | None
    purpose: str | None
    datasets: list[str]
    sql_masked: str
    sql_hash: str
    decision: Literal["accepted", "refused"]
    reason: str | None
    rows_out: int
    bytes_out: int
    suppressed_groups: int
    duration_ms: float
    prev_hash: str
    hash: str

    def subject(self) -> str:
        return subjects.audit(self.territory)

    def entity(self) -> str:
        return f"audit/{self.territory}/{self.seq}"
