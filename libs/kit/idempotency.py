"""Idempotency keys for POST requests: the same key replayed answers the same result, and does nothing twice.

The record is written in the request's own transaction, so it exists exactly when the effect does. A key is scoped
to its caller and route; reusing it with another body is refused (422 ``idempotency.key_reused``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Column, Field, Session, SQLModel

from kit.errors import BadRequest, Unprocessable

__all__ = ["IdempotencyRecord", "StoredResponse", "lookup", "remember", "request_fingerprint"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")


class IdempotencyRecord(SQLModel, table=True):
    """The response given to the first request carrying this key."""

    __tablename__ = "idempotency_record"

    scope: str = Field(primary_key=True, max_length=300, description="caller and route")
    key: str = Field(primary_key=True, max_length=128)
    fingerprint: str = Field(max_length=64, description="SHA-256 of the request body")
    status_code: int
    body: Any = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


def request_fingerprint(payload: Any) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _check_key(key: str) -> None:
    if not _KEY_RE.match(key):
        raise BadRequest("Idempotency-Key must be 8-128 characters of [A-Za-z0-9_.:-]", code="idempotency.bad_key")


def lookup(session: Session, *, scope: str, key: str, fingerprint: str) -> StoredResponse | None:
    """The stored response for a replayed key; None for a new key; 422 when the key came with another body."""
    _check_key(key)
    record = session.get(IdempotencyRecord, (scope, key))
    if record is None:
        return None
    if record.fingerprint != fingerprint:
        raise Unprocessable("this Idempotency-Key was used with a different request", code="idempotency.key_reused")
    return StoredResponse(status_code=record.status_code, body=record.body)


def remember(session: Session, *, scope: str, key: str, fingerprint: str, status_code: int, body: Any) -> None:
    """Store the response of a first request, in its transaction."""
    session.add(IdempotencyRecord(scope=scope, key=key, fingerprint=fingerprint, status_code=status_code, body=body))
