"""Events of the exchange's audit log."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts import subjects
from contracts.events.base import Event, register
from contracts.identifiers import Siren

__all__ = ["AuditRecordedV1", "DataDestroyedV1"]


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


@register
class DataDestroyedV1(Event):
    event_name: ClassVar[str] = "audit.data.destroyed"
    version: ClassVar[int] = 1
    summary: ClassVar[str] = (
        "Rows of a dataset were destroyed: past their retention period, or about a data subject who asked for erasure "
        "(the new version holds none of them; earlier versions were deleted)."
    )
    subject_pattern: ClassVar[str] = "audit.destroyed.{siren}.{slug}"
    subject_parameters: ClassVar[dict[str, str]] = {
        "siren": "SIREN of the territory whose data was destroyed",
        "slug": "the dataset",
    }
    producer: ClassVar[str] = "exchange"

    territory: Siren
    dataset: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")
    reason: Literal["retention", "erasure"]
    rows_removed: int = Field(ge=0)
    dataset_version: int = Field(ge=1, description="the dataset's version without the rows")
    destroyed_versions: list[int] = Field(description="earlier versions deleted from disk")
    cutoff: datetime | None = Field(default=None, description="retention: rows before this moment were removed")
    request_id: str | None = Field(default=None, description="erasure: the data-subject request")
    audit_id: str = Field(description="the audit record of the destruction")
    at: datetime

    def subject(self) -> str:
        return subjects.audit_destroyed(self.territory, self.dataset)

    def entity(self) -> str:
        return f"dataset/{self.territory}/{self.dataset}/v{self.dataset_version}"
