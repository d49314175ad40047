"""What happens to consent records: notices, give, refuse, renew, withdraw, expire, erase; each change is one
append-only event, one outbox event for the exchanges, and one signed receipt, in the same transaction."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from consent.models import ConsentEvent, ConsentRecord, Notice
from consent.receipts import ReceiptSigner
from contracts.events import ConsentChangedV1
from contracts.events.consent import ConsentEventKind
from contracts.identifiers import validate_siren, validate_siret
from contracts.vocabularies import DPV_PURPOSES, LegalBasis
from kit.db import as_utc, utcnow
from kit.errors import Conflict, NotFound, Unprocessable
from kit.outbox import enqueue

__all__ = [
    "CONSENT_BASES",
    "ConsentIn",
    "NoticeIn",
    "NoticeRef",
    "Outcome",
    "Processing",
    "announce",
    "expire_due",
    "find",
    "give",
    "history",
    "publish_notice",
    "receipt_for",
    "renew",
    "withdraw",
]

# Consent as the lawful basis: GDPR art. 6(1)(a), or explicit consent for special categories, art. 9(2)(a).
CONSENT_BASES = frozenset({LegalBasis.CONSENT.value, "A9-2-a"})
ACTIVE = "active"


class NoticeIn(BaseModel):
    """A new version of a notice, in one language."""

    model_config = ConfigDict(extra="forbid")

    notice_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    version: int = Field(ge=1)
    language: str = Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$", examples=["fr"])
    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=100_000, description="the text shown; only its SHA-256 is kept")
    url: str | None = Field(default=None, max_length=500)
    purposes: list[str] = Field(min_length=1, max_length=20, description="DPV purpose IRIs the notice asks for")
    requires_renewal: bool = False

    @field_validator("purposes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in DPV_PURPOSES]
        if unknown:
            raise ValueError(f"unknown DPV purpose {unknown[0]!r}")
        return sorted(set(value))


class NoticeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    version: int = Field(ge=1)
    language: str = Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")


class Processing(BaseModel):
    """The processing consented to (ISO/IEC TS 27560 / DPV)."""

    model_config = ConfigDict(extra="forbid")

    data_categories: list[str] = Field(min_length=1, max_length=20, examples=[["consommation d'eau mensuelle"]])
    controllers: list[str] = Field(min_length=1, max_length=10, description="SIREN or SIRET of each controller")
    recipients: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="SIREN or SIRET of each recipient named (partners, neighbouring territories): only they may "
        "compute on the subject's data under this consent",
    )
    retention: str = Field(
        pattern=r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?$",
        min_length=3,
        max_length=20,
        examples=["P2Y"],
        description="ISO 8601 duration in years, months, weeks or days",
    )
    storage_location: str = Field(min_length=2, max_length=100, examples=["FR"])
    jurisdiction: str = Field(min_length=2, max_length=100, examples=["FR"])
    withdrawal_method: str = Field(min_length=1, max_length=500)

    @field_validator("controllers")
    @classmethod
    def _controllers(cls, value: list[str]) -> list[str]:
        return [validate_siren(v) if len(v) == 9 else validate_siret(v) for v in value]

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [validate_siren(v) if len(v) == 9 else validate_siret(v) for v in value]


class ConsentIn(BaseModel):
    """A citizen's decision for one purpose. The identifier is pseudonymised at once and never stored."""

    model_config = ConfigDict(extra="forbid")

    subject_identifier: str = Field(
        min_length=1, max_length=200, description="the value of the datasets' subject_key (meter, card number)"
    )
    decision: Literal["given", "refused"] = "given"
    purpose: str
    legal_basis: str = LegalBasis.CONSENT.value
    notice: NoticeRef
    processing: Processing
    valid_until: datetime | None = Field(default=None, description="when the consent expires by itself")

    @field_validator("purpose")
    @classmethod
    def _purpose(cls, value: str) -> str:
        if value not in DPV_PURPOSES:
            raise ValueError("unknown DPV purpose")
        return value

    @field_validator("legal_basis")
    @classmethod
    def _basis(cls, value: str) -> str:
        if value not in CONSENT_BASES:
            raise ValueError(f"a consent record rests on {' or '.join(sorted(CONSENT_BASES))}")
        return value


@dataclass
class Outcome:
    record: ConsentRecord
    receipt: str
    changed: bool


def publish_notice(
    session: Session, territory: str, body: NoticeIn, *, actor: str, signer: ReceiptSigner, source: str
) -> tuple[Notice, int, bool]:
    """Store a notice version (created: False for a repeat); with ``requires_renewal``, earlier consents expire."""
    notice = Notice(
        territory=territory,
        notice_id=body.notice_id,
        version=body.version,
        language=body.language,
        title=body.title,
        url=body.url,
        content_hash=hashlib.sha256(body.text.encode("utf-8")).hexdigest(),
        purposes=body.purposes,
        requires_renewal=body.requires_renewal,
    )
    existing = session.exec(
        select(Notice).where(
            Notice.territory == territory,
            Notice.notice_id == body.notice_id,
            Notice.version == body.version,
            Notice.language == body.language,
        )
    ).first()
    if existing is not None:
        if existing.content_hash == notice.content_hash and existing.purposes == notice.purposes:
            return existing, 0, False  # the same notice again: a no-op
        raise Conflict(
            f"notice {body.notice_id} v{body.version} ({body.language}) exists with another text or purposes; "
            "publish a new version",
            code="consent.notice_exists",
        )
    latest = session.exec(
        select(Notice.version)
        .where(Notice.territory == territory, Notice.notice_id == body.notice_id)
        .order_by(col(Notice.version).desc())
    ).first()
    if latest is not None and body.version < latest:
        raise Conflict(f"notice {body.notice_id} is at version {latest} already", code="consent.notice_outdated")
    session.add(notice)
    expired = 0
    if body.requires_renewal:
        stale = session.exec(
            select(ConsentRecord).where(
                ConsentRecord.territory == territory,
                ConsentRecord.notice_id == body.notice_id,
                ConsentRecord.notice_version < body.version,
                ConsentRecord.state == ACTIVE,
                col(ConsentRecord.purpose).in_(body.purposes),
            )
        ).all()
        for record in stale:
            _event(session, record, "expired", actor=actor, signer=signer, source=source, reason="notice-renewal")
            expired += 1
    return notice, expired, True


def find(session: Session, territory: str, subject: str, purpose: str) -> ConsentRecord | None:
    """The record of ``subject``'s consent for ``purpose`` (one per subject and purpose), if any."""
    return session.exec(
        select(ConsentRecord).where(
            ConsentRecord.territory == territory, ConsentRecord.subject == subject, ConsentRecord.purpose == purpose
        )
    ).first()


def _notice(session: Session, territory: str, ref: NoticeRef) -> Notice | None:
    return session.exec(
        select(Notice).where(
            Notice.territory == territory,
            Notice.notice_id == ref.id,
            Notice.version == ref.version,
            Notice.language == ref.language,
        )
    ).first()


def give(
    session: Session, territory: str, subject: str, body: ConsentIn, *, actor: str, signer: ReceiptSigner, source: str
) -> Outcome:
    """Record a decision (given or refused); giving again what is active under the same notice is a no-op."""
    notice = _notice(session, territory, body.notice)
    if notice is None:
        raise Unprocessable(
            f"notice {body.notice.id} v{body.notice.version} ({body.notice.language}) is not published here",
            code="consent.unknown_notice",
        )
    if body.purpose not in notice.purposes:
        raise Unprocessable("the notice does not ask for this purpose", code="consent.purpose_not_in_notice")
    now = utcnow()
    if body.valid_until is not None and as_utc(body.valid_until) <= now:
        raise Unprocessable("valid_until is in the past", code="consent.already_expired")
    record = find(session, territory, subject, body.purpose)
    processing = body.processing.model_dump(mode="json")
    kind: ConsentEventKind = "given" if body.decision == "given" else "refused"
    if record is not None:
        same = (
            record.notice_version == notice.version
            and record.notice_language == notice.language
            and record.processing == processing
            and record.legal_basis == body.legal_basis
            and _same_time(record.valid_until, body.valid_until)
        )
        target = ACTIVE if kind == "given" else "refused"
        if same and record.state == target:
            return Outcome(record, receipt_for(session, record, signer), changed=False)
        if kind == "given" and record.state == ACTIVE:
            kind = "renewed"
    else:
        record = ConsentRecord(
            territory=territory,
            subject=subject,
            purpose=body.purpose,
            legal_basis=body.legal_basis,
            notice_id=notice.notice_id,
            notice_version=notice.version,
            notice_language=notice.language,
            notice_hash=notice.content_hash,
            processing=processing,
            state="new",
        )
    record.legal_basis = body.legal_basis
    record.notice_id, record.notice_version = notice.notice_id, notice.version
    record.notice_language, record.notice_hash = notice.language, notice.content_hash
    record.processing = processing
    record.valid_until = body.valid_until if kind != "refused" else None
    receipt = _event(session, record, kind, actor=actor, signer=signer, source=source)
    return Outcome(record, receipt, changed=True)


def withdraw(session: Session, record: ConsentRecord, *, actor: str, signer: ReceiptSigner, source: str) -> Outcome:
    """Withdraw an active consent; withdrawing again is a no-op; a consent never given cannot be withdrawn."""
    if record.state == "withdrawn":
        return Outcome(record, receipt_for(session, record, signer), changed=False)
    if record.state != ACTIVE:
        raise Conflict(f"this consent is {record.state}, not given: nothing to withdraw", code="consent.not_active")
    receipt = _event(session, record, "withdrawn", actor=actor, signer=signer, source=source)
    return Outcome(record, receipt, changed=True)


def renew(
    session: Session,
    record: ConsentRecord,
    valid_until: datetime | None,
    notice: NoticeRef | None,
    *,
    actor: str,
    signer: ReceiptSigner,
    source: str,
) -> Outcome:
    """Renew an active or expired consent (the latest notice version, a new validity)."""
    if record.state not in (ACTIVE, "expired"):
        raise Conflict(f"this consent is {record.state}: give it again instead", code="consent.not_renewable")
    if notice is not None:
        found = _notice(session, record.territory, notice)
        if found is None or record.purpose not in found.purposes:
            raise Unprocessable(
                "that notice version is not published here for this purpose", code="consent.unknown_notice"
            )
        record.notice_id, record.notice_version = found.notice_id, found.version
        record.notice_language, record.notice_hash = found.language, found.content_hash
    if valid_until is not None and as_utc(valid_until) <= utcnow():
        raise Unprocessable("valid_until is in the past", code="consent.already_expired")
    record.valid_until = valid_until
    receipt = _event(session, record, "renewed", actor=actor, signer=signer, source=source)
    return Outcome(record, receipt, changed=True)


def expire_due(session: Session, *, now: datetime, signers: dict[str, ReceiptSigner], source: str) -> int:
    """Expire every active consent whose validity ended (the exchanges also check validity at query time)."""
    due = session.exec(
        select(ConsentRecord).where(
            ConsentRecord.state == ACTIVE,
            col(ConsentRecord.valid_until).is_not(None),
            col(ConsentRecord.valid_until) <= now,
        )
    ).all()
    for record in due:
        signer = signers.get(record.territory)
        if signer is None:
            continue
        _event(
            session, record, "expired", actor="consent-expiry", signer=signer, source=source, reason="validity-ended"
        )
    return len(due)


def history(session: Session, record_id: str) -> list[ConsentEvent]:
    return list(
        session.exec(select(ConsentEvent).where(ConsentEvent.record_id == record_id).order_by(col(ConsentEvent.seq)))
    )


def _state_after(kind: ConsentEventKind) -> str:
    return {
        "given": ACTIVE,
        "renewed": ACTIVE,
        "withdrawn": "withdrawn",
        "expired": "expired",
        "refused": "refused",
        "erased": "erased",
    }[kind]


def _same_time(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return as_utc(a) == as_utc(b)


def _event(
    session: Session,
    record: ConsentRecord,
    kind: ConsentEventKind,
    *,
    actor: str,
    signer: ReceiptSigner,
    source: str,
    reason: str | None = None,
) -> str:
    now = utcnow()
    record.seq += 1
    record.state = _state_after(kind)
    record.updated_at = now
    receipt_id = str(uuid.uuid4())
    event = ConsentEvent(
        record_id=record.id,
        seq=record.seq,
        kind=kind,
        at=now,
        valid_until=record.valid_until,
        notice_version=record.notice_version,
        reason=reason,
        actor=actor[:200],
        receipt_id=receipt_id,
    )
    session.add(record)
    session.add(event)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent change of the same record took this seq first
        raise Conflict("the record changed at the same time; retry", code="consent.concurrent_change") from exc
    announce(session, record, kind, source=source, at=now)
    return signer.sign(_receipt_payload(record, event))


def announce(
    session: Session,
    record: ConsentRecord,
    kind: ConsentEventKind | None = None,
    *,
    source: str,
    at: datetime | None = None,
) -> None:
    """Publish the record's state for the exchanges; without ``kind`` (a node restoring records from an archive),
    the state as it stands, with no new event."""
    if kind is None:
        kind = "renewed" if record.state == ACTIVE else ("erased" if record.state == "erased" else "withdrawn")
    enqueue(
        session,
        ConsentChangedV1(
            territory=record.territory,
            record_id=record.id,
            seq=record.seq,
            subject_pseudonym=record.subject,
            purpose=record.purpose,
            event=kind,
            active=record.state == ACTIVE,
            valid_until=record.valid_until,
            recipients=list(record.processing.get("recipients", [])),
            at=at or utcnow(),
        ),
        source=source,
    )


def receipt_for(session: Session, record: ConsentRecord, signer: ReceiptSigner) -> str:
    """The receipt of the record's last event (the same bytes as when it was issued: Ed25519 is deterministic)."""
    event = session.exec(
        select(ConsentEvent).where(ConsentEvent.record_id == record.id, ConsentEvent.seq == record.seq)
    ).first()
    if event is None:
        raise NotFound("this record has no event", code="consent.not_found")
    return signer.sign(_receipt_payload(record, event))


def _receipt_payload(record: ConsentRecord, event: ConsentEvent) -> dict[str, Any]:
    return {
        "receipt_id": event.receipt_id,
        "record_id": record.id,
        "territory": record.territory,
        "subject": record.subject,
        "event": event.kind,
        "seq": event.seq,
        "at": as_utc(event.at).isoformat(),
        "state": _state_after(event.kind),  # type: ignore[arg-type]
        "valid_until": as_utc(event.valid_until).isoformat() if event.valid_until else None,
        "purpose": record.purpose,
        "legal_basis": record.legal_basis,
        "notice": {
            "id": record.notice_id,
            "version": event.notice_version,
            "language": record.notice_language,
            "sha256": record.notice_hash,
        },
        "processing": record.processing,
    }
