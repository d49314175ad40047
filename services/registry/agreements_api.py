"""HTTP API of agreements: request, negotiate, review, activate, suspend, resume, revoke, terminate, reject."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from contracts.terms import Terms
from kit import idempotency
from kit.auth import Principal
from kit.db import on_commit
from kit.errors import BadRequest, NotFound
from kit.service import ContextDep, SessionDep
from registry import agreements
from registry.agreements import Action, Agreement, AgreementState, Party
from registry.apikeys_api import CallerDep
from registry.grants import GrantMaterializer

__all__ = ["router"]

router = APIRouter(prefix="/v1/agreements", tags=["agreements"])

AgreementId = Annotated[str, Path(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
IfMatch = Annotated[str | None, Header(description='ETag of the version the change is based on, e.g. "v3"')]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="replaying a key answers the first result")
]


class AgreementRequest(BaseModel):
    """A consumer's request: the terms it asks for."""

    model_config = ConfigDict(extra="forbid")

    terms: Terms


class TransitionRequest(BaseModel):
    """Why (required for suspend, revoke, reject), and new terms for an offer or a counter-offer."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)
    terms: Terms | None = None


class AgreementOut(BaseModel):
    id: str
    state: AgreementState
    version: int
    dataset: str
    provider: str
    consumer: str
    personal: bool
    terms_version: int
    terms_hash: str
    terms: Terms
    allowed_actions: list[str] = Field(description="actions possible from this state (for someone)")
    your_parties: list[Party] = Field(description="the parties the caller plays in this agreement")
    requested_by: str
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None
    ended_at: datetime | None


class TermsVersionOut(BaseModel):
    number: int
    hash: str
    proposed_by: str
    party: Party
    created_at: datetime
    terms: Terms


class TransitionOut(BaseModel):
    seq: int
    action: str
    from_state: AgreementState | None
    to_state: AgreementState
    actor: str
    party: Party
    reason: str | None
    terms_version: int
    terms_hash: str
    at: datetime


def _out(session: Session, agreement: Agreement, principal: Principal) -> AgreementOut:
    return AgreementOut(
        id=agreement.id,
        state=agreement.state,
        version=agreement.version,
        dataset=agreement.dataset,
        provider=agreement.provider,
        consumer=agreement.consumer,
        personal=agreement.personal,
        terms_version=agreement.terms_version,
        terms_hash=agreement.terms_hash,
        terms=agreements.terms_of(db_session=session, agreement=agreement),
        allowed_actions=agreements.allowed_actions(agreement.state),
        your_parties=sorted(agreements.parties_of(principal, agreement)),
        requested_by=agreement.requested_by,
        created_at=agreement.created_at,
        updated_at=agreement.updated_at,
        activated_at=agreement.activated_at,
        ended_at=agreement.ended_at,
    )


def _visible(session: Session, agreement_id: str, principal: Principal) -> Agreement:
    agreement = agreements.get_agreement(db_session=session, agreement_id=agreement_id)
    if not principal.is_operator and not agreements.parties_of(principal, agreement):
        # Not a party: as if it did not exist (the public register shows what everyone may know).
        raise NotFound(f"agreement {agreement_id} does not exist", code="agreement.not_found")
    return agreement


def _expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"').removeprefix("v")
    if not value.isdigit():
        raise BadRequest('If-Match must be an ETag such as "v3"', code="request.bad_if_match")
    return int(value)


def _respond(status_code: int, body: dict[str, Any], version: int | None) -> JSONResponse:
    headers = {"ETag": f'"v{version}"'} if version is not None else {}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _replayed(session: Session, key: str | None, scope: str, payload: Any) -> tuple[JSONResponse | None, str]:
    fingerprint = idempotency.request_fingerprint(payload)
    if key is None:
        return None, fingerprint
    stored = idempotency.lookup(session, scope=scope, key=key, fingerprint=fingerprint)
    if stored is None:
        return None, fingerprint
    version = stored.body.get("version") if isinstance(stored.body, dict) else None
    return _respond(stored.status_code, stored.body, version), fingerprint


@router.post("", response_model=AgreementOut, status_code=201, responses={200: {"model": AgreementOut}})
def request_agreement(
    body: AgreementRequest,
    session: SessionDep,
    ctx: ContextDep,
    principal: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Ask a territory for access to one of its datasets, on these terms (consumer organisation members)."""
    scope = f"{principal.subject}:POST /v1/agreements"
    payload = body.model_dump(mode="json")
    replay, fingerprint = _replayed(session, idempotency_key, scope, payload)
    if replay is not None:
        return replay
    agreement = agreements.request_agreement(
        db_session=session, terms=body.terms, principal=principal, source=ctx.source
    )
    session.flush()
    out = _out(session, agreement, principal).model_dump(mode="json")
    if idempotency_key is not None:
        idempotency.remember(
            session, scope=scope, key=idempotency_key, fingerprint=fingerprint, status_code=201, body=out
        )
    response = _respond(201, out, agreement.version)
    response.headers["Location"] = f"/v1/agreements/{agreement.id}"
    return response


@router.get("", response_model=list[AgreementOut])
def list_agreements(session: SessionDep, principal: CallerDep) -> list[AgreementOut]:
    """Agreements the caller is party to (operators: all)."""
    return [_out(session, a, principal) for a in agreements.list_agreements(db_session=session, principal=principal)]


@router.get("/{agreement_id}", response_model=AgreementOut)
def get_agreement(
    agreement_id: AgreementId, session: SessionDep, principal: CallerDep, response: Response
) -> AgreementOut:
    """One agreement with its current terms and the actions possible from its state (parties and operators)."""
    agreement = _visible(session, agreement_id, principal)
    response.headers["ETag"] = f'"v{agreement.version}"'
    return _out(session, agreement, principal)


@router.get("/{agreement_id}/history", response_model=list[TransitionOut])
def agreement_history(agreement_id: AgreementId, session: SessionDep, principal: CallerDep) -> list[TransitionOut]:
    """Every transition: who, when, why, on which terms."""
    _visible(session, agreement_id, principal)
    return [
        TransitionOut.model_validate(t, from_attributes=True)
        for t in agreements.transitions_of(db_session=session, agreement_id=agreement_id)
    ]


@router.get("/{agreement_id}/terms", response_model=list[TermsVersionOut])
def agreement_terms(agreement_id: AgreementId, session: SessionDep, principal: CallerDep) -> list[TermsVersionOut]:
    """Every immutable version of the terms, with its hash."""
    _visible(session, agreement_id, principal)
    return [
        TermsVersionOut(
            number=v.number,
            hash=v.hash,
            proposed_by=v.proposed_by,
            party=v.party,
            created_at=v.created_at,
            terms=Terms.model_validate(v.terms),
        )
        for v in agreements.versions_of(db_session=session, agreement_id=agreement_id)
    ]


@router.post("/{agreement_id}/{action}", response_model=AgreementOut)
def transition(
    agreement_id: AgreementId,
    action: Annotated[Action, Path(description="the transition to apply")],
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    principal: CallerDep,
    body: TransitionRequest | None = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Apply a transition. Illegal ones answer 409 with the current state and the allowed actions."""
    if action is Action.EXPIRE:
        raise BadRequest("agreements expire by themselves at valid_until", code="agreement.expire_is_scheduled")
    scope = f"{principal.subject}:POST /v1/agreements/{agreement_id}/{action.value}"
    payload = body.model_dump(mode="json") if body else None
    replay, fingerprint = _replayed(session, idempotency_key, scope, payload)
    if replay is not None:
        return replay
    agreement = _visible(session, agreement_id, principal)
    was_active = agreement.state is AgreementState.ACTIVE
    agreement = agreements.transition(
        db_session=session,
        agreement=agreement,
        action=action,
        principal=principal,
        reason=body.reason if body else None,
        terms=body.terms if body else None,
        expected_version=_expected_version(if_match),
        source=ctx.source,
    )
    if was_active or agreement.state is AgreementState.ACTIVE:
        # The grant appears or disappears only when the agreement enters or leaves ACTIVE.
        grants: GrantMaterializer = request.app.state.grants
        on_commit(session, partial(grants.notify, agreement.id))
    out = _out(session, agreement, principal).model_dump(mode="json")
    if idempotency_key is not None:
        idempotency.remember(
            session, scope=scope, key=idempotency_key, fingerprint=fingerprint, status_code=200, body=out
        )
    return _respond(200, out, agreement.version)
