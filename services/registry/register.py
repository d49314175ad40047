"""The public register of agreements (transparency): who uses which data, for what, on which legal basis, when.

Lists every agreement that has been in force (ACTIVE once): current ones (ACTIVE, SUSPENDED) and past ones (REVOKED,
TERMINATED, EXPIRED). Negotiations that never came into force are not agreements and stay private to their parties.
Nothing secret is listed: no terms details beyond purpose and legal basis, no person's name.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlmodel import Session, col, select

from contracts.vocabularies import DPV_PURPOSES
from kit.service import SessionDep
from registry.agreements import Agreement, AgreementState
from registry.models import Organisation, Territory

__all__ = ["RegisterEntry", "register_entries", "router"]

router = APIRouter(prefix="/v1", tags=["register"])

_IN_FORCE_ONCE = (
    AgreementState.ACTIVE,
    AgreementState.SUSPENDED,
    AgreementState.REVOKED,
    AgreementState.TERMINATED,
    AgreementState.EXPIRED,
)
COLUMNS = (
    "agreement_id",
    "provider_siren",
    "provider_name",
    "consumer_id",
    "consumer_name",
    "dataset",
    "purpose_iri",
    "purpose_label",
    "purpose_text",
    "legal_basis",
    "valid_from",
    "valid_until",
    "state",
    "in_force_since",
    "ended_at",
)


class RegisterEntry(BaseModel):
    agreement_id: str
    provider_siren: str
    provider_name: str | None
    consumer_id: str
    consumer_name: str | None
    dataset: str
    purpose_iri: str
    purpose_label: str | None
    purpose_text: str
    legal_basis: str
    valid_from: datetime
    valid_until: datetime
    state: AgreementState
    in_force_since: datetime | None
    ended_at: datetime | None


def register_entries(*, db_session: Session, provider: str | None = None) -> list[RegisterEntry]:
    """The register, oldest agreement first, optionally for one provider territory."""
    statement = select(Agreement).where(
        col(Agreement.state).in_(_IN_FORCE_ONCE), col(Agreement.activated_at).is_not(None)
    )
    if provider is not None:
        statement = statement.where(col(Agreement.provider) == provider)
    rows = db_session.exec(statement.order_by(col(Agreement.activated_at), col(Agreement.id))).all()
    names = {t.siren: t.name for t in db_session.exec(select(Territory)).all()}
    names.update({o.siret: o.name for o in db_session.exec(select(Organisation)).all()})
    return [
        RegisterEntry(
            agreement_id=row.id,
            provider_siren=row.provider,
            provider_name=names.get(row.provider),
            consumer_id=row.consumer,
            consumer_name=names.get(row.consumer),
            dataset=row.dataset,
            purpose_iri=row.purpose_iri,
            purpose_label=DPV_PURPOSES.get(row.purpose_iri),
            purpose_text=row.purpose_text,
            legal_basis=row.legal_basis,
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            state=row.state,
            in_force_since=row.activated_at,
            ended_at=row.ended_at,
        )
        for row in rows
    ]


def _csv(entries: list[RegisterEntry]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: ("" if v is None else v) for k, v in entry.model_dump(mode="json").items()})
    return buffer.getvalue()


Provider = Annotated[str | None, Query(pattern=r"^[0-9]{9}$", description="only this provider territory")]


@router.get(
    "/register",
    response_model=list[RegisterEntry],
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def public_register(
    request: Request,
    session: SessionDep,
    provider: Provider = None,
    format: Annotated[Literal["json", "csv"] | None, Query(description="overrides Accept")] = None,
) -> Response:
    """The public register of agreements, as JSON or CSV (by ?format= or Accept: text/csv). No authentication."""
    entries = register_entries(db_session=session, provider=provider)
    wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if wants_csv:
        return Response(
            _csv(entries),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'inline; filename="registre-des-conventions.csv"'},
        )
    return Response("[" + ",".join(entry.model_dump_json() for entry in entries) + "]", media_type="application/json")


@router.get("/register.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def public_register_csv(session: SessionDep, provider: Provider = None) -> Response:
    """The public register as CSV (UTF-8, comma-separated, one agreement per line)."""
    return Response(_csv(register_entries(db_session=session, provider=provider)), media_type="text/csv; charset=utf-8")
