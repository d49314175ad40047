"""Consent records aligned with ISO/IEC TS 27560 as mapped by W3C DPV, their notices and append-only events.

A :class:`ConsentRecord` is one subject's consent for one purpose under one notice (the ISO 27560 record: who —
a pseudonym —, which notice, which processing: purpose, lawful basis, data categories, controllers, recipients,
retention, storage location, jurisdiction, withdrawal method). Its life is the sequence of :class:`ConsentEvent`
rows (given, renewed, withdrawn, expired, refused, erased), never updated or deleted; the record keeps the current
state for lookups. A :class:`Notice` is one version of the text shown to citizens, in one language, by its hash.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from kit.db import utcnow

__all__ = ["ConsentEvent", "ConsentRecord", "Notice", "SubjectRequest"]


def _uuid() -> str:
    return str(uuid.uuid4())


class Notice(SQLModel, table=True):
    """One version of a consent notice in one language; identified by (notice_id, version, language)."""

    __tablename__ = "consent_notice"
    __table_args__ = (UniqueConstraint("territory", "notice_id", "version", "language"),)

    id: str = Field(default_factory=_uuid, primary_key=True, max_length=36)
    territory: str = Field(max_length=9, index=True)
    notice_id: str = Field(max_length=64)
    version: int
    language: str = Field(max_length=8)
    title: str = Field(max_length=200)
    url: str | None = Field(default=None, max_length=500)
    content_hash: str = Field(max_length=64, description="SHA-256 of the text shown")
    purposes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    requires_renewal: bool = Field(
        default=False, description="consents given under earlier versions stop counting until renewed"
    )
    created_at: datetime = Field(default_factory=utcnow)


class ConsentRecord(SQLModel, table=True):
    """One subject's consent (or refusal) for one purpose: the current state of its event sequence."""

    __tablename__ = "consent_record"

    id: str = Field(default_factory=_uuid, primary_key=True, max_length=36)
    territory: str = Field(max_length=9, index=True)
    subject: str = Field(max_length=64, index=True, description="pseudonym: HMAC-SHA256 of the identifier")
    purpose: str = Field(max_length=200)
    legal_basis: str = Field(max_length=16)
    notice_id: str = Field(max_length=64)
    notice_version: int
    notice_language: str = Field(max_length=8)
    notice_hash: str = Field(max_length=64)
    processing: dict[str, Any] = Field(
        sa_column=Column(JSON, nullable=False),
        description="data categories, controllers, recipients, retention, storage location, jurisdiction, "
        "withdrawal method",
    )
    state: str = Field(max_length=16, description="active, withdrawn, expired, refused, erased")
    valid_until: datetime | None = None
    seq: int = Field(default=0, description="number of the last event")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ConsentEvent(SQLModel, table=True):
    """An event of a record's life, append-only, with the hash of the receipt that was returned for it."""

    __tablename__ = "consent_event"
    __table_args__ = (UniqueConstraint("record_id", "seq"),)

    id: str = Field(default_factory=_uuid, primary_key=True, max_length=36)
    record_id: str = Field(max_length=36, index=True)
    seq: int
    kind: str = Field(max_length=16)
    at: datetime = Field(default_factory=utcnow)
    valid_until: datetime | None = None
    notice_version: int
    reason: str | None = Field(default=None, max_length=200)
    actor: str = Field(max_length=200, description="who recorded the change (the principal's subject)")
    receipt_id: str = Field(max_length=36)


class SubjectRequest(SQLModel, table=True):
    """A data-subject request (access or erasure): tracked until done, one month to answer."""

    __tablename__ = "consent_subject_request"

    id: str = Field(default_factory=_uuid, primary_key=True, max_length=36)
    territory: str = Field(max_length=9, index=True)
    subject: str = Field(max_length=64, description="pseudonym")
    kind: str = Field(max_length=16)
    status: str = Field(max_length=16)
    received_at: datetime = Field(default_factory=utcnow)
    due_at: datetime
    completed_at: datetime | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
