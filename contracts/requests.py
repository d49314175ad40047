"""Core-NATS request-reply messages (not JetStream events): queries and data-subject requests to an exchange.

``exchange.<siren>.query``: the request body is :class:`QueryRequestV1` (JSON); the caller's credentials travel in
the ``Authorization`` header (``Bearer <key>``), the wanted format in ``Accept``. The reply carries
``Maillage-Status`` (an HTTP status code) and, on success, the result (Arrow IPC stream by default) with
``Maillage-Suppressed-Groups`` and ``Maillage-Audit-Id``; on refusal, a JSON ``{"error", "detail"}`` body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

__all__ = ["REQUEST_REPLIES", "QueryRequestV1", "RequestReply", "SensorReadingsV1", "SubjectRequestV1"]


class QueryRequestV1(BaseModel):
    """A query on one territory's data."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000, description="one SELECT over the territory's dataset slugs")
    agreement_id: str | None = Field(
        default=None, description="may be omitted when the caller holds exactly one grant on the datasets used"
    )


class SubjectRequestV1(BaseModel):
    """A data-subject request executed by the exchange hosting the territory (sent by the consent service).

    ``access``: the subject's rows of one dataset, a page at a time (``dataset`` and ``offset``; without ``dataset``,
    the list of datasets holding rows about the subject with their counts). ``erasure``: every row about the subject
    deleted from every dataset (new versions; earlier versions destroyed). The reply is JSON with ``Maillage-Status``
    as for queries; the caller's credentials (a DPO or steward of the territory) travel in ``Authorization``.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    kind: Literal["access", "erasure"]
    subject_pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of the identifier (hex)")
    dataset: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=5000)


@dataclass(frozen=True)
class RequestReply:
    name: str
    subject_pattern: str
    parameters: dict[str, str]
    request: type[BaseModel]
    summary: str
    server: str
    clients: tuple[str, ...]


REQUEST_REPLIES = (
    RequestReply(
        name="exchange.query",
        subject_pattern="exchange.{siren}.query",
        parameters={"siren": "SIREN of the territory whose data is queried"},
        request=QueryRequestV1,
        summary="A policy-enforced query, answered by the exchange node hosting the territory.",
        server="exchange",
        clients=("gateway",),
    ),
    RequestReply(
        name="exchange.subject",
        subject_pattern="exchange.{siren}.subject",
        parameters={"siren": "SIREN of the territory holding the subject's data"},
        request=SubjectRequestV1,
        summary="A data-subject request (access to or erasure of a subject's rows), answered by the exchange.",
        server="exchange",
        clients=("consent",),
    ),
)


class SensorReadingsV1(RootModel[dict[str, Any] | list[dict[str, Any]]]):
    """Readings published on ``exchange.ingest.<siren>.<slug>`` (stream INGEST) by sensors or their gateways.

    One reading or a list of readings, each an object whose keys are the dataset's Table Schema fields (e.g. the
    mobility-count measure: channel_id, counter_id, start_datetime, end_datetime, count). ``Nats-Msg-Id`` should be
    set: redeliveries and republications are ignored, and so are rows whose natural key is already stored.
    """
