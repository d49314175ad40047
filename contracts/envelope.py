"""The CloudEvents-style envelope every JetStream event travels in.

Fields follow CloudEvents 1.0 (`specversion`, `id`, `source`, `type`, `subject`, `time`, `datacontenttype`,
`dataschema`, `data`) plus the distributed-tracing extension (`traceparent`, `tracestate`). The same `id` is sent
as the `Nats-Msg-Id` header, so JetStream drops duplicates within the stream's duplicate window.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Envelope", "new_event_id"]


def new_event_id() -> str:
    """A new event id (UUID v4, as text)."""
    return str(uuid.uuid4())


class Envelope(BaseModel):
    """A CloudEvents 1.0 structured event with trace context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_event_id, min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=256, description="URI reference of the emitting service instance")
    type: str = Field(min_length=1, max_length=128, description="fr.maillage.<domain>.<entity>.<action>.v<N>")
    subject: str | None = Field(default=None, max_length=256, description="the entity the event is about")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    traceparent: str | None = Field(default=None, max_length=55)
    tracestate: str | None = Field(default=None, max_length=512)
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, payload: bytes) -> Envelope:
        return cls.model_validate_json(payload)
