"""Core-NATS request-reply messages (not JetStream events): the federated query to a territory's exchange.

``exchange.<siren>.query``: the request body is :class:`QueryRequestV1` (JSON); the caller's credentials travel in
the ``Authorization`` header (``Bearer <key>``), the wanted format in ``Accept``. The reply carries
``Maillage-Status`` (an HTTP status code) and, on success, the result (Arrow IPC stream by default) with
``Maillage-Suppressed-Groups`` and ``Maillage-Audit-Id``; on refusal, a JSON ``{"error", "detail"}`` body.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["REQUEST_REPLIES", "QueryRequestV1", "RequestReply"]


class QueryRequestV1(BaseModel):
    """A query on one territory's data."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000, description="one SELECT over the territory's dataset slugs")
    agreement_id: str | None = Field(
        default=None, description="may be omitted when the caller holds exactly one grant on the datasets used"
    )


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
)
