"""Grants: the enforceable form of an ACTIVE agreement, materialised in the JetStream KV bucket ``grants``.

Key: the agreement id. Value: :class:`Grant` as JSON. The registry deletes the key when the agreement stops being
active (suspended, revoked, terminated, expired) and rewrites :data:`HEARTBEAT_KEY` after every reconciliation, so an
exchange can tell a quiet bucket from a registry that stopped confirming it (fail closed past a staleness bound).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from contracts.identifiers import Siren
from contracts.terms import Terms

__all__ = ["GRANTS_BUCKET", "HEARTBEAT_KEY", "Grant", "Heartbeat"]

GRANTS_BUCKET = "grants"
HEARTBEAT_KEY = "registry-heartbeat"


class Grant(BaseModel):
    """An enforceable right: these terms, for this consumer, on this dataset, now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    agreement_id: str
    agreement_version: int = Field(ge=1)
    provider: Siren
    dataset: str
    consumer: str
    terms_version: int = Field(ge=1)
    terms_hash: str = Field(min_length=64, max_length=64)
    terms: Terms
    activated_at: datetime
    issued_at: datetime


class Heartbeat(BaseModel):
    """Written by the registry after each reconciliation of the bucket with its database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confirmed_at: datetime
    active_grants: int = Field(ge=0)
