"""HTTP API of consent: notices, records (give, refuse, renew, withdraw), subjects' state, keys and receipts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from consent import records
from consent.models import ConsentEvent, ConsentRecord, Notice, SubjectRequest
from consent.receipts import InvalidReceipt, ReceiptSigner, verify
from consent.records import ConsentIn, NoticeIn, NoticeRef, Outcome
from consent.records import history as records_history
from consent.subject_requests import Exchange, RequestFailed, due_date, run_request
from contracts.requests import SubjectRequestV1
from kit.auth import Principal, Role
from kit.db import as_utc, utcnow
from kit.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable
from kit.pseudonyms import pseudonym, territory_key
from kit.service import CallerPrincipal, ContextDep, ServiceContext, SessionDep, TerritoryPath

__all__ = ["router", "signer_for"]

router = APIRouter(prefix="/v1/territories/{siren}/consent", tags=["consent"])

RecordId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Pseudonym = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$")]
_WRITERS = (Role.STEWARD, Role.DPO, Role.ADMIN)


def signer_for(request: Request, territory: str) -> ReceiptSigner:
    settings = request.app.state.ctx.settings
    return ReceiptSigner.derive(settings.secret_key.get_secret_value(), territory)


def _pseudonym(request: Request, territory: str, identifier: str) -> str:
    settings = request.app.state.ctx.settings
    return pseudonym(territory_key(settings.pseudonym_secret.get_secret_value(), territory), identifier.strip())


def _require(principal: Principal, territory: str) -> None:
    if not any(principal.has_role(territory, role) for role in _WRITERS):
        raise Forbidden("consent records are kept by the territory's steward, DPO or admin", code="auth.forbidden")


class NoticeOut(BaseModel):
    notice_id: str
    version: int
    language: str
    title: str
    url: str | None
    sha256: str
    purposes: list[str]
    requires_renewal: bool
    created_at: datetime
    consents_expired: int = Field(default=0, description="consents under earlier versions that now need renewal")


class EventOut(BaseModel):
    seq: int
    event: str
    at: datetime
    valid_until: datetime | None
    notice_version: int
    reason: str | None
    receipt_id: str


class RecordOut(BaseModel):
    record_id: str
    territory: str
    subject: str = Field(description="pseudonymous subject id (HMAC-SHA256 of the identifier)")
    purpose: str
    legal_basis: str
    state: str
    valid_until: datetime | None
    notice: dict[str, Any]
    processing: dict[str, Any]
    seq: int
    updated_at: datetime


class ChangeOut(BaseModel):
    changed: bool = Field(description="false when the request repeated the current state (nothing recorded)")
    record: RecordOut
    receipt: str = Field(description="compact JWS (EdDSA) of the change, verifiable with the territory's JWKS")


class SubjectOut(BaseModel):
    subject: str
    purposes: dict[str, RecordOut] = Field(description="the current record per purpose")
    history: dict[str, list[EventOut]] = Field(description="every event per record id")


class SubjectLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_identifier: str = Field(min_length=1, max_length=200)


class WithdrawBySubject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_identifier: str = Field(min_length=1, max_length=200)
    purpose: str


class RenewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    valid_until: datetime | None = None
    notice: NoticeRef | None = None


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipt: str = Field(min_length=1, max_length=20_000)


class VerifyOut(BaseModel):
    valid: bool
    payload: dict[str, Any]


def _record_out(record: ConsentRecord) -> RecordOut:
    return RecordOut(
        record_id=record.id,
        territory=record.territory,
        subject=record.subject,
        purpose=record.purpose,
        legal_basis=record.legal_basis,
        state=record.state,
        valid_until=as_utc(record.valid_until) if record.valid_until else None,
        notice={
            "id": record.notice_id,
            "version": record.notice_version,
            "language": record.notice_language,
            "sha256": record.notice_hash,
        },
        processing=record.processing,
        seq=record.seq,
        updated_at=as_utc(record.updated_at),
    )


def _change(outcome: Outcome, response: Response) -> ChangeOut:
    response.status_code = 201 if outcome.changed and outcome.record.seq == 1 else 200
    return ChangeOut(changed=outcome.changed, record=_record_out(outcome.record), receipt=outcome.receipt)


def _notice_out(notice: Notice, expired: int = 0) -> NoticeOut:
    return NoticeOut(
        notice_id=notice.notice_id,
        version=notice.version,
        language=notice.language,
        title=notice.title,
        url=notice.url,
        sha256=notice.content_hash,
        purposes=notice.purposes,
        requires_renewal=notice.requires_renewal,
        created_at=as_utc(notice.created_at),
        consents_expired=expired,
    )


def _record(session: Session, territory: str, record_id: str) -> ConsentRecord:
    record = session.get(ConsentRecord, record_id)
    if record is None or record.territory != territory:
        raise NotFound("no such consent record here", code="consent.not_found")
    return record


def _subject_state(session: Session, territory: str, subject: str) -> SubjectOut:
    found = session.exec(
        select(ConsentRecord).where(ConsentRecord.territory == territory, ConsentRecord.subject == subject)
    ).all()
    if not found:
        raise NotFound("no consent record for this subject here", code="consent.unknown_subject")
    events = session.exec(
        select(ConsentEvent)
        .where(col(ConsentEvent.record_id).in_([r.id for r in found]))
        .order_by(col(ConsentEvent.record_id), col(ConsentEvent.seq))
    ).all()
    history: dict[str, list[EventOut]] = {}
    for event in events:
        history.setdefault(event.record_id, []).append(
            EventOut(
                seq=event.seq,
                event=event.kind,
                at=as_utc(event.at),
                valid_until=as_utc(event.valid_until) if event.valid_until else None,
                notice_version=event.notice_version,
                reason=event.reason,
                receipt_id=event.receipt_id,
            )
        )
    return SubjectOut(subject=subject, purposes={r.purpose: _record_out(r) for r in found}, history=history)


@router.post("/notices", status_code=201)
def publish_notice(
    body: NoticeIn,
    request: Request,
    territory: TerritoryPath,
    principal: CallerPrincipal,
    session: SessionDep,
    ctx: ContextDep,
    response: Response,
) -> NoticeOut:
    """Publish a notice version (its text is hashed, not kept); republishing the same one is a no-op."""
    _require(principal, territory)
    notice, expired, created = records.publish_notice(
        session, territory, body, actor=principal.subject, signer=signer_for(request, territory), source=ctx.source
    )
    if not created:
        response.status_code = 200
    return _notice_out(notice, expired)


@router.get("/notices")
def list_notices(territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep) -> list[NoticeOut]:
    """Every notice version of the territory."""
    _require(principal, territory)
    notices = session.exec(
        select(Notice).where(Notice.territory == territory).order_by(col(Notice.notice_id), col(Notice.version))
    ).all()
    return [_notice_out(n) for n in notices]


@router.post("/records", status_code=201, responses={200: {"description": "nothing changed (a repeated request)"}})
def record_decision(
    body: ConsentIn,
    request: Request,
    territory: TerritoryPath,
    principal: CallerPrincipal,
    session: SessionDep,
    ctx: ContextDep,
    response: Response,
) -> ChangeOut:
    """Record a citizen's decision for one purpose (given or refused) and return its signed receipt."""
    _require(principal, territory)
    subject = _pseudonym(request, territory, body.subject_identifier)
    outcome = records.give(
        session,
        territory,
        subject,
        body,
        actor=principal.subject,
        signer=signer_for(request, territory),
        source=ctx.source,
    )
    return _change(outcome, response)


@router.get("/records/{record_id}")
def get_record(
    record_id: RecordId, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> SubjectOut:
    """One record and its history."""
    _require(principal, territory)
    record = _record(session, territory, record_id)
    state = _subject_state(session, territory, record.subject)
    return SubjectOut(
        subject=record.subject,
        purposes={record.purpose: state.purposes[record.purpose]},
        history={record.id: state.history.get(record.id, [])},
    )


@router.post("/records/{record_id}/withdraw")
def withdraw(
    record_id: RecordId,
    request: Request,
    territory: TerritoryPath,
    principal: CallerPrincipal,
    session: SessionDep,
    ctx: ContextDep,
    response: Response,
) -> ChangeOut:
    """Withdraw a consent (a no-op when already withdrawn; 409 consent.not_active when it was never given)."""
    _require(principal, territory)
    return _withdraw(_record(session, territory, record_id), request, principal, session, ctx, response)


def _withdraw(
    record: ConsentRecord | None,
    request: Request,
    principal: Principal,
    session: Session,
    ctx: ServiceContext,
    response: Response,
) -> ChangeOut:
    if record is None:
        raise Conflict("no consent was given for this purpose: nothing to withdraw", code="consent.not_active")
    signer = signer_for(request, record.territory)
    outcome = records.withdraw(session, record, actor=principal.subject, signer=signer, source=ctx.source)
    return _change(outcome, response)


@router.post("/withdraw")
def withdraw_by_subject(
    body: WithdrawBySubject,
    request: Request,
    territory: TerritoryPath,
    principal: CallerPrincipal,
    session: SessionDep,
    ctx: ContextDep,
    response: Response,
) -> ChangeOut:
    """Withdraw by identifier and purpose, as easily as consent was given."""
    _require(principal, territory)
    subject = _pseudonym(request, territory, body.subject_identifier)
    return _withdraw(
        records.find(session, territory, subject, body.purpose), request, principal, session, ctx, response
    )


@router.post("/records/{record_id}/renew")
def renew(
    record_id: RecordId,
    body: RenewIn,
    request: Request,
    territory: TerritoryPath,
    principal: CallerPrincipal,
    session: SessionDep,
    ctx: ContextDep,
    response: Response,
) -> ChangeOut:
    """Renew an active or expired consent (a new validity, optionally a newer notice version)."""
    _require(principal, territory)
    record = _record(session, territory, record_id)
    outcome = records.renew(
        session,
        record,
        body.valid_until,
        body.notice,
        actor=principal.subject,
        signer=signer_for(request, territory),
        source=ctx.source,
    )
    return _change(outcome, response)


@router.post("/subjects/lookup")
def lookup_subject(
    body: SubjectLookup, request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> SubjectOut:
    """A subject's current state per purpose and its history, by identifier (sent in the body, never in a URL)."""
    _require(principal, territory)
    return _subject_state(session, territory, _pseudonym(request, territory, body.subject_identifier))


@router.get("/subjects/{subject}")
def get_subject(
    subject: Pseudonym, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> SubjectOut:
    """A subject's current state per purpose and its history, by pseudonym."""
    _require(principal, territory)
    return _subject_state(session, territory, subject)


@router.get("/keys")
def keys(request: Request, territory: TerritoryPath) -> dict[str, list[dict[str, str]]]:
    """The territory's receipt-signing public keys (JWKS): receipts verify offline with them."""
    return {"keys": [signer_for(request, territory).jwk()]}


@router.post("/receipts/verify")
def verify_receipt(body: VerifyIn, request: Request, territory: TerritoryPath) -> VerifyOut:
    """Check a receipt against the territory's keys: 422 ``receipt.<reason>`` when it does not verify."""
    try:
        payload = verify(body.receipt, {"keys": [signer_for(request, territory).jwk()]})
    except InvalidReceipt as exc:
        raise Unprocessable(exc.detail, code=exc.reason) from None
    if payload.get("territory") != territory:
        raise Unprocessable("the receipt is another territory's", code="receipt.other_territory")
    return VerifyOut(valid=True, payload=payload)


# -- data-subject requests ----------------------------------------------------------------------------------------

RequestId = RecordId


class SubjectRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["access", "erasure"]
    subject_identifier: str = Field(min_length=1, max_length=200)


class SubjectRequestOut(BaseModel):
    request_id: str
    kind: str
    status: str = Field(description="received, pending (the exchange could not be reached: run it again), completed")
    received_at: datetime
    due_at: datetime = Field(description="one month after reception")
    overdue: bool
    completed_at: datetime | None
    detail: dict[str, Any]
    file: str | None = Field(default=None, description="access: where to download the subject's file")


def _request_out(row: SubjectRequest, request: Request) -> SubjectRequestOut:
    done = row.completed_at is not None
    has_file = row.kind == "access" and done and (_files(request) / f"{row.id}.json").exists()
    return SubjectRequestOut(
        request_id=row.id,
        kind=row.kind,
        status=row.status,
        received_at=as_utc(row.received_at),
        due_at=as_utc(row.due_at),
        overdue=not done and as_utc(row.due_at) < utcnow(),
        completed_at=as_utc(row.completed_at) if row.completed_at else None,
        detail=row.detail,
        file=f"/v1/territories/{row.territory}/consent/subject-requests/{row.id}/file" if has_file else None,
    )


def _files(request: Request) -> Path:
    return Path(request.app.state.ctx.settings.data_dir) / "subject-requests"


def _exchange(request: Request, ctx: ServiceContext) -> Exchange:
    return Exchange(ctx.messaging, request.headers.get("authorization", ""))


def _subject_request(session: Session, territory: str, request_id: str) -> SubjectRequest:
    row = session.get(SubjectRequest, request_id)
    if row is None or row.territory != territory:
        raise NotFound("no such data-subject request here", code="subject_request.not_found")
    return row


@router.post("/subject-requests", status_code=201, tags=["data-subject requests"])
async def create_subject_request(
    body: SubjectRequestIn, request: Request, territory: TerritoryPath, principal: CallerPrincipal, ctx: ContextDep
) -> SubjectRequestOut:
    """Receive and run an access or erasure request (404 ``consent.unknown_subject`` when nothing is held)."""
    _require(principal, territory)
    assert ctx.database is not None
    subject = _pseudonym(request, territory, body.subject_identifier)
    exchange = _exchange(request, ctx)
    with ctx.database.session() as session:
        known = session.exec(
            select(ConsentRecord.id).where(ConsentRecord.territory == territory, ConsentRecord.subject == subject)
        ).first()
        open_request = session.exec(
            select(SubjectRequest).where(
                SubjectRequest.territory == territory,
                SubjectRequest.subject == subject,
                SubjectRequest.kind == body.kind,
                SubjectRequest.status != "completed",
            )
        ).first()
    if open_request is None:
        if known is None:
            probe = SubjectRequestV1(request_id="probe", kind="access", subject_pseudonym=subject)
            try:
                held = (await exchange.ask(territory, probe)).get("datasets", {})
            except RequestFailed as exc:
                raise ServiceUnavailable(str(exc), code="subject_request.exchange_unavailable") from None
            if not held:
                raise NotFound("nothing is held about this subject here", code="consent.unknown_subject")
        received = utcnow()
        open_request = SubjectRequest(
            territory=territory,
            subject=subject,
            kind=body.kind,
            status="received",
            due_at=due_date(received),
            received_at=received,
        )
        with ctx.database.unit_of_work() as session:
            session.add(open_request)
    row = await run_request(
        ctx.database,
        exchange,
        open_request.id,
        files=_files(request),
        signer=signer_for(request, territory),
        actor=principal.subject,
        source=ctx.source,
    )
    return _request_out(row, request)


@router.post("/subject-requests/{request_id}/run", tags=["data-subject requests"])
async def rerun_subject_request(
    request_id: RequestId, request: Request, territory: TerritoryPath, principal: CallerPrincipal, ctx: ContextDep
) -> SubjectRequestOut:
    """Run a pending request again (a completed one is returned as it is)."""
    _require(principal, territory)
    assert ctx.database is not None
    with ctx.database.session() as session:
        row = _subject_request(session, territory, request_id)
    if row.status != "completed":
        row = await run_request(
            ctx.database,
            _exchange(request, ctx),
            row.id,
            files=_files(request),
            signer=signer_for(request, territory),
            actor=principal.subject,
            source=ctx.source,
        )
    return _request_out(row, request)


@router.get("/subject-requests", tags=["data-subject requests"])
def list_subject_requests(
    request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> list[SubjectRequestOut]:
    """Every request of the territory, the oldest first, with its deadline."""
    _require(principal, territory)
    rows = session.exec(
        select(SubjectRequest).where(SubjectRequest.territory == territory).order_by(col(SubjectRequest.received_at))
    ).all()
    return [_request_out(r, request) for r in rows]


@router.get("/subject-requests/{request_id}", tags=["data-subject requests"])
def get_subject_request(
    request_id: RequestId, request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> SubjectRequestOut:
    _require(principal, territory)
    return _request_out(_subject_request(session, territory, request_id), request)


@router.get("/subject-requests/{request_id}/file", response_class=FileResponse, tags=["data-subject requests"])
def download_access_file(
    request_id: RequestId, request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> FileResponse:
    """The access file (JSON): every row about the subject and its consent records."""
    _require(principal, territory)
    row = _subject_request(session, territory, request_id)
    path = _files(request) / f"{row.id}.json"
    if row.kind != "access" or not path.exists():
        raise NotFound(
            "this request has no file (not an access request, not completed, or deleted)",
            code="subject_request.no_file",
        )
    return FileResponse(path, media_type="application/json", filename=f"acces-{row.id}.json")


@router.delete("/subject-requests/{request_id}/file", status_code=204, tags=["data-subject requests"])
def delete_access_file(
    request_id: RequestId, request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> Response:
    """Delete the access file once handed over (it is deleted 30 days after anyway)."""
    _require(principal, territory)
    row = _subject_request(session, territory, request_id)
    (_files(request) / f"{row.id}.json").unlink(missing_ok=True)
    return Response(status_code=204)


# -- reversibility ------------------------------------------------------------------------------------------------


class ConsentArchive(BaseModel):
    """Every consent notice, record and event of a territory, and its receipt keys (to check old receipts)."""

    model_config = ConfigDict(extra="forbid")

    territory: str
    notices: list[dict[str, Any]]
    records: list[dict[str, Any]] = Field(description="each record with its events, in order")
    receipt_keys: dict[str, list[dict[str, str]]] = Field(description="JWKS of the receipts' signing keys")


def _plain(model: Any) -> dict[str, Any]:
    return {k: (as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in model.model_dump().items()}


@router.get("/export", tags=["reversibility"])
def export_consents(
    request: Request, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep
) -> ConsentArchive:
    """The territory's consent notices, records and events (pseudonyms only), to take to another node."""
    _require(principal, territory)
    notices = session.exec(select(Notice).where(Notice.territory == territory).order_by(col(Notice.created_at))).all()
    rows = session.exec(
        select(ConsentRecord).where(ConsentRecord.territory == territory).order_by(col(ConsentRecord.created_at))
    ).all()
    records = []
    for row in rows:
        events = records_history(session, row.id)
        records.append({**_plain(row), "events": [_plain(e) for e in events]})
    return ConsentArchive(
        territory=territory,
        notices=[_plain(n) for n in notices],
        records=records,
        receipt_keys={"keys": [signer_for(request, territory).jwk()]},
    )


@router.post("/import", status_code=201, tags=["reversibility"])
def import_consents(
    body: ConsentArchive, territory: TerritoryPath, principal: CallerPrincipal, session: SessionDep, ctx: ContextDep
) -> dict[str, int]:
    """Restore a territory's consents from its archive, on a node that holds none; the exchanges receive each
    record's current state. Pseudonyms only match the data if this node has the same pseudonymisation secret."""
    _require(principal, territory)
    if body.territory != territory:
        raise Unprocessable("the archive is another territory's", code="consent.other_territory")
    if session.exec(select(ConsentRecord.id).where(ConsentRecord.territory == territory).limit(1)).first():
        raise Conflict(f"consent records of {territory} exist here already", code="consent.not_empty")
    try:
        for notice in body.notices:
            session.add(Notice.model_validate({**notice, "territory": territory}))
        for item in body.records:
            events = item.get("events", [])
            record = ConsentRecord.model_validate(
                {k: v for k, v in item.items() if k != "events"} | {"territory": territory}
            )
            session.add(record)
            for event in events:
                session.add(ConsentEvent.model_validate(event))
            if record.seq:
                records.announce(session, record, source=ctx.source)
        session.flush()
    except (ValueError, TypeError, KeyError) as exc:
        raise Unprocessable(
            f"the archive does not describe consent records: {exc}"[:300], code="consent.bad_archive"
        ) from None
    return {"notices": len(body.notices), "records": len(body.records)}
