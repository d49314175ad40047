"""Sharing agreements: negotiation and lifecycle (DESIGN §5), with immutable terms versions and a full history.

```
REQUESTED ─offer─> OFFERED ─accept─> ACCEPTED ─activate─> ACTIVE          (no personal data)
    ▲  ▲             │                                      │
    │  └──counter────┘      OFFERED ─accept─> DPO_REVIEW ─approve─> ACTIVE (personal data: the DPO decides)
    │
reject: REQUESTED (provider), OFFERED (consumer), DPO_REVIEW (DPO) ─> REJECTED
ACTIVE ─suspend─> SUSPENDED ─resume─> ACTIVE
ACTIVE|SUSPENDED ─revoke (provider, reason)─> REVOKED │ ─terminate (consumer)─> TERMINATED │ ─expire─> EXPIRED
```

Every transition is one conditional update on ``(id, version)``: of two concurrent transitions exactly one wins,
the other answers 409. Each records who, when, why and the hash of the terms, and emits
``registry.agreement.<action>.<id>`` through the outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, UniqueConstraint, update
from sqlmodel import Column, Field, Session, SQLModel, col, func, select

from contracts.datasets import DatasetMetadata, DataStatus
from contracts.events import AgreementTransitionedV1
from contracts.terms import Terms, TermsError, check_against_dataset, terms_hash
from kit.advertisements import published_metadata
from kit.auth import Principal, Role
from kit.db import utcnow
from kit.errors import Conflict, Forbidden, NotFound, PreconditionFailed, Unprocessable
from kit.outbox import enqueue

__all__ = [
    "ACTIONS",
    "Action",
    "Agreement",
    "AgreementState",
    "AgreementTerms",
    "AgreementTransition",
    "Party",
    "get_agreement",
    "list_agreements",
    "request_agreement",
    "terms_of",
    "transition",
    "transitions_of",
    "versions_of",
]


class AgreementState(StrEnum):
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    DPO_REVIEW = "DPO_REVIEW"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    TERMINATED = "TERMINATED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"


class Action(StrEnum):
    OFFER = "offer"
    COUNTER = "counter"
    ACCEPT = "accept"
    APPROVE = "approve"
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"
    TERMINATE = "terminate"
    EXPIRE = "expire"
    REJECT = "reject"


class Party(StrEnum):
    CONSUMER = "consumer"
    PROVIDER_STEWARD = "provider_steward"
    PROVIDER_DPO = "provider_dpo"
    SYSTEM = "system"


@dataclass(frozen=True)
class Rule:
    sources: frozenset[AgreementState]
    parties: frozenset[Party]
    past: str  # the event's action word
    needs_terms: bool = False
    accepts_terms: bool = False
    needs_reason: bool = False


S = AgreementState
ACTIONS: dict[Action, Rule] = {
    Action.OFFER: Rule(frozenset({S.REQUESTED}), frozenset({Party.PROVIDER_STEWARD}), "offered", accepts_terms=True),
    Action.COUNTER: Rule(frozenset({S.OFFERED}), frozenset({Party.CONSUMER}), "countered", needs_terms=True),
    Action.ACCEPT: Rule(frozenset({S.OFFERED}), frozenset({Party.CONSUMER}), "accepted"),
    Action.APPROVE: Rule(frozenset({S.DPO_REVIEW}), frozenset({Party.PROVIDER_DPO}), "approved"),
    Action.ACTIVATE: Rule(frozenset({S.ACCEPTED}), frozenset({Party.PROVIDER_STEWARD}), "activated"),
    Action.SUSPEND: Rule(
        frozenset({S.ACTIVE}), frozenset({Party.PROVIDER_STEWARD, Party.PROVIDER_DPO}), "suspended", needs_reason=True
    ),
    Action.RESUME: Rule(frozenset({S.SUSPENDED}), frozenset({Party.PROVIDER_STEWARD, Party.PROVIDER_DPO}), "resumed"),
    Action.REVOKE: Rule(
        frozenset({S.ACTIVE, S.SUSPENDED}),
        frozenset({Party.PROVIDER_STEWARD, Party.PROVIDER_DPO}),
        "revoked",
        needs_reason=True,
    ),
    Action.TERMINATE: Rule(frozenset({S.ACTIVE, S.SUSPENDED}), frozenset({Party.CONSUMER}), "terminated"),
    Action.EXPIRE: Rule(frozenset({S.ACTIVE, S.SUSPENDED}), frozenset({Party.SYSTEM}), "expired"),
    Action.REJECT: Rule(
        frozenset({S.REQUESTED, S.OFFERED, S.DPO_REVIEW}),
        frozenset({Party.PROVIDER_STEWARD, Party.CONSUMER, Party.PROVIDER_DPO}),
        "rejected",
        needs_reason=True,
    ),
}
# Who may reject depends on the state: the provider a request, the consumer an offer, the DPO a review.
_REJECTER = {S.REQUESTED: Party.PROVIDER_STEWARD, S.OFFERED: Party.CONSUMER, S.DPO_REVIEW: Party.PROVIDER_DPO}
TERMINAL = frozenset({S.REVOKED, S.TERMINATED, S.EXPIRED, S.REJECTED})


class Agreement(SQLModel, table=True):
    """A sharing agreement between a provider territory (dataset) and a consumer organisation."""

    __tablename__ = "agreement"

    id: str = Field(primary_key=True, max_length=36)
    dataset: str = Field(max_length=80, index=True)
    provider: str = Field(max_length=9, index=True)
    consumer: str = Field(max_length=14, index=True)
    state: AgreementState = Field(max_length=16, index=True)
    version: int = Field(default=1, description="bumped by every transition (optimistic concurrency)")
    terms_version: int = 1
    terms_hash: str = Field(max_length=64)
    personal: bool = Field(description="the dataset held personal data when the agreement was requested")
    purpose_iri: str = Field(max_length=200)
    purpose_text: str = Field(max_length=1000)
    legal_basis: str = Field(max_length=8)
    valid_from: datetime
    valid_until: datetime = Field(index=True)
    requested_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None
    ended_at: datetime | None = None


class AgreementTerms(SQLModel, table=True):
    """One immutable version of an agreement's terms."""

    __tablename__ = "agreement_terms"

    agreement_id: str = Field(primary_key=True, max_length=36)
    number: int = Field(primary_key=True)
    terms: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    hash: str = Field(max_length=64)
    proposed_by: str = Field(max_length=200)
    party: Party = Field(max_length=24)
    created_at: datetime = Field(default_factory=utcnow)


class AgreementTransition(SQLModel, table=True):
    """Who moved an agreement from which state to which, when, why, on which terms."""

    __tablename__ = "agreement_transition"
    __table_args__ = (UniqueConstraint("agreement_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    agreement_id: str = Field(max_length=36, index=True)
    seq: int
    action: str = Field(max_length=16)
    from_state: AgreementState | None = Field(default=None, max_length=16)
    to_state: AgreementState = Field(max_length=16)
    actor: str = Field(max_length=200)
    party: Party = Field(max_length=24)
    reason: str | None = Field(default=None, max_length=1000)
    terms_version: int
    terms_hash: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow)


def parties_of(principal: Principal, agreement: Agreement) -> set[Party]:
    """The roles the principal may play in this agreement."""
    parties = set()
    if principal.acts_for(agreement.consumer):
        parties.add(Party.CONSUMER)
    if principal.has_role(agreement.provider, Role.STEWARD):
        parties.add(Party.PROVIDER_STEWARD)
    if principal.has_role(agreement.provider, Role.DPO):
        parties.add(Party.PROVIDER_DPO)
    return parties


def _dataset_metadata(db_session: Session, dataset: str) -> DatasetMetadata:
    metadata = published_metadata(db_session, dataset)
    if metadata is None:
        raise Unprocessable(f"dataset {dataset} is not published in the federation", code="terms.unknown_dataset")
    return metadata


def _check_terms(db_session: Session, terms: Terms) -> DatasetMetadata:
    metadata = _dataset_metadata(db_session, terms.dataset)
    try:
        check_against_dataset(terms, metadata, now=utcnow())
    except TermsError as exc:
        raise Unprocessable(exc.detail, code=exc.code) from exc
    return metadata


def _add_terms(db_session: Session, agreement_id: str, number: int, terms: Terms, actor: str, party: Party) -> str:
    digest = terms_hash(terms)
    db_session.add(
        AgreementTerms(
            agreement_id=agreement_id,
            number=number,
            terms=terms.model_dump(mode="json"),
            hash=digest,
            proposed_by=actor,
            party=party,
        )
    )
    return digest


def _record(
    db_session: Session,
    agreement: Agreement,
    *,
    action: str,
    from_state: AgreementState | None,
    actor: str,
    party: Party,
    reason: str | None,
    source: str,
) -> None:
    last = db_session.exec(
        select(func.max(AgreementTransition.seq)).where(col(AgreementTransition.agreement_id) == agreement.id)
    ).one()
    at = utcnow()
    db_session.add(
        AgreementTransition(
            agreement_id=agreement.id,
            seq=(last or 0) + 1,
            action=action,
            from_state=from_state,
            to_state=agreement.state,
            actor=actor,
            party=party,
            reason=reason,
            terms_version=agreement.terms_version,
            terms_hash=agreement.terms_hash,
            at=at,
        )
    )
    enqueue(
        db_session,
        AgreementTransitionedV1(
            agreement_id=agreement.id,
            action=action,
            from_state=from_state.value if from_state else None,
            to_state=agreement.state.value,
            dataset=agreement.dataset,
            provider=agreement.provider,
            consumer=agreement.consumer,
            agreement_version=agreement.version,
            terms_version=agreement.terms_version,
            terms_hash=agreement.terms_hash,
            actor=actor,
            reason=reason,
            at=at,
        ),
        source=source,
    )


def request_agreement(*, db_session: Session, terms: Terms, principal: Principal, source: str) -> Agreement:
    """A consumer asks for access on these terms (version 1)."""
    if not principal.acts_for(terms.consumer):
        raise Forbidden(f"you do not act for organisation {terms.consumer}", code="agreement.not_consumer")
    metadata = _check_terms(db_session, terms)
    agreement_id = str(uuid.uuid4())
    digest = _add_terms(db_session, agreement_id, 1, terms, principal.subject, Party.CONSUMER)
    agreement = Agreement(
        id=agreement_id,
        dataset=terms.dataset,
        provider=terms.provider,
        consumer=terms.consumer,
        state=AgreementState.REQUESTED,
        terms_hash=digest,
        personal=metadata.status is DataStatus.PERSONAL,
        purpose_iri=terms.purpose.iri,
        purpose_text=terms.purpose.text,
        legal_basis=terms.legal_basis.value,
        valid_from=terms.valid_from,
        valid_until=terms.valid_until,
        requested_by=principal.subject,
    )
    db_session.add(agreement)
    _record(
        db_session,
        agreement,
        action="requested",
        from_state=None,
        actor=principal.subject,
        party=Party.CONSUMER,
        reason=None,
        source=source,
    )
    return agreement


def get_agreement(*, db_session: Session, agreement_id: str) -> Agreement:
    """One agreement; NotFound otherwise."""
    agreement = db_session.get(Agreement, agreement_id)
    if agreement is None:
        raise NotFound(f"agreement {agreement_id} does not exist", code="agreement.not_found")
    return agreement


def terms_of(*, db_session: Session, agreement: Agreement, number: int | None = None) -> Terms:
    """The current terms (or version ``number``)."""
    row = db_session.get(AgreementTerms, (agreement.id, number or agreement.terms_version))
    if row is None:
        raise NotFound(f"agreement {agreement.id} has no terms version {number}", code="agreement.terms_not_found")
    return Terms.model_validate(row.terms)


def versions_of(*, db_session: Session, agreement_id: str) -> list[AgreementTerms]:
    """Every terms version, oldest first."""
    statement = (
        select(AgreementTerms)
        .where(col(AgreementTerms.agreement_id) == agreement_id)
        .order_by(col(AgreementTerms.number))
    )
    return list(db_session.exec(statement).all())


def transitions_of(*, db_session: Session, agreement_id: str) -> list[AgreementTransition]:
    """The full history, oldest first."""
    statement = (
        select(AgreementTransition)
        .where(col(AgreementTransition.agreement_id) == agreement_id)
        .order_by(col(AgreementTransition.seq))
    )
    return list(db_session.exec(statement).all())


def list_agreements(*, db_session: Session, principal: Principal | None = None) -> list[Agreement]:
    """Agreements the principal is party to (operators see all); None lists all (internal use)."""
    statement = select(Agreement).order_by(col(Agreement.created_at))
    rows = list(db_session.exec(statement).all())
    if principal is None or principal.is_operator:
        return rows
    return [row for row in rows if parties_of(principal, row)]


def allowed_actions(state: AgreementState) -> list[str]:
    return sorted(action.value for action, rule in ACTIONS.items() if state in rule.sources)


def transition(
    *,
    db_session: Session,
    agreement: Agreement,
    action: Action,
    principal: Principal | None,
    reason: str | None,
    terms: Terms | None,
    expected_version: int | None,
    source: str,
) -> Agreement:
    """Apply ``action``: checks the state, the caller's party, the terms; one conditional update, one history line.

    ``principal`` None is the system (expiry).
    """
    rule = ACTIONS[action]
    if expected_version is not None and expected_version != agreement.version:
        raise PreconditionFailed(
            f"agreement {agreement.id} is at version {agreement.version}, not {expected_version}",
            code="agreement.version_mismatch",
            extra={"version": agreement.version, "state": agreement.state.value},
        )
    if agreement.state not in rule.sources:
        raise Conflict(
            f"cannot {action.value} an agreement in state {agreement.state.value}",
            code="agreement.illegal_transition",
            extra={"state": agreement.state.value, "allowed": allowed_actions(agreement.state)},
        )
    if principal is None:
        party, actor = Party.SYSTEM, "system"
    else:
        needed = {_REJECTER[agreement.state]} if action is Action.REJECT else set(rule.parties)
        held = parties_of(principal, agreement) & needed
        if not held:
            who = ", ".join(sorted(p.value for p in needed))
            raise Forbidden(f"only the {who} may {action.value} this agreement", code="agreement.not_allowed")
        party, actor = sorted(held)[0], principal.subject
    if Party.SYSTEM not in rule.parties and principal is None:
        raise Forbidden("this action needs a person", code="agreement.not_allowed")
    if rule.needs_reason and not (reason and reason.strip()):
        raise Unprocessable(f"{action.value} needs a reason", code="agreement.reason_required")
    if terms is not None and not (rule.needs_terms or rule.accepts_terms):
        raise Unprocessable(f"{action.value} takes no terms", code="agreement.terms_not_expected")
    if rule.needs_terms and terms is None:
        raise Unprocessable(f"{action.value} needs new terms", code="agreement.terms_required")

    from_state = agreement.state
    values: dict[str, Any] = {"version": agreement.version + 1, "updated_at": utcnow()}
    if terms is not None:
        if (terms.dataset, terms.consumer) != (agreement.dataset, agreement.consumer):
            raise Unprocessable("new terms cannot change the dataset or the consumer", code="terms.parties_changed")
        _check_terms(db_session, terms)
        number = agreement.terms_version + 1
        digest = _add_terms(db_session, agreement.id, number, terms, actor, party)
        values.update(
            terms_version=number,
            terms_hash=digest,
            purpose_iri=terms.purpose.iri,
            purpose_text=terms.purpose.text,
            legal_basis=terms.legal_basis.value,
            valid_from=terms.valid_from,
            valid_until=terms.valid_until,
        )
    target = _target(action, agreement)
    values["state"] = target
    if target is S.ACTIVE and agreement.activated_at is None:
        values["activated_at"] = utcnow()
    if target in TERMINAL:
        values["ended_at"] = utcnow()
    if target is S.ACTIVE and action in (Action.ACTIVATE, Action.APPROVE, Action.RESUME):
        current = terms if terms is not None else terms_of(db_session=db_session, agreement=agreement)
        if current.valid_until <= utcnow():
            raise Conflict(
                "the agreement's validity has ended", code="agreement.expired", extra={"state": agreement.state.value}
            )

    result = db_session.execute(
        update(Agreement)
        .where(col(Agreement.id) == agreement.id, col(Agreement.version) == agreement.version)
        .values(**values)
    )
    if getattr(result, "rowcount", 0) != 1:
        # Another transition committed first: exactly one of two concurrent transitions wins.
        raise Conflict(
            f"agreement {agreement.id} changed concurrently; reload it",
            code="agreement.concurrent_change",
        )
    db_session.refresh(agreement)
    _record(
        db_session,
        agreement,
        action=rule.past,
        from_state=from_state,
        actor=actor,
        party=party,
        reason=reason,
        source=source,
    )
    return agreement


def _target(action: Action, agreement: Agreement) -> AgreementState:
    if action is Action.ACCEPT:
        return S.DPO_REVIEW if agreement.personal else S.ACCEPTED
    return {
        Action.OFFER: S.OFFERED,
        Action.COUNTER: S.REQUESTED,
        Action.APPROVE: S.ACTIVE,
        Action.ACTIVATE: S.ACTIVE,
        Action.SUSPEND: S.SUSPENDED,
        Action.RESUME: S.ACTIVE,
        Action.REVOKE: S.REVOKED,
        Action.TERMINATE: S.TERMINATED,
        Action.EXPIRE: S.EXPIRED,
        Action.REJECT: S.REJECTED,
    }[action]


def due_for_expiry(*, db_session: Session, now: datetime) -> list[Agreement]:
    """Active or suspended agreements whose validity has ended."""
    statement = select(Agreement).where(
        col(Agreement.state).in_([S.ACTIVE, S.SUSPENDED]), col(Agreement.valid_until) <= now
    )
    return list(db_session.exec(statement).all())
