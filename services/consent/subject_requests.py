"""Data-subject requests (GDPR art. 15 access, art. 17 erasure): tracked here, executed by the exchange over NATS.

A request is received (due one month later), then run: the exchange answers ``exchange.<siren>.subject`` with the
subject's rows or erases them (see contracts.requests.SubjectRequestV1). Access produces one JSON file — every row
about the subject in each dataset, found by the keyed subject hash, and the subject's consent records with their
history — kept in the service's data directory until deleted (at the latest 30 days after). Erasure deletes the
rows on the exchange (audited there), then anonymises the consent records: their subject becomes a random value,
an ``erased`` event is appended, and the request keeps only that it happened. A request that could not reach the
exchange stays ``pending`` with the error and can be run again; running again is harmless (rows already erased are
not found twice).
"""

from __future__ import annotations

import calendar
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from sqlmodel import Session, select

from consent.models import ConsentEvent, ConsentRecord, SubjectRequest
from consent.receipts import ReceiptSigner
from consent.records import _event
from contracts import subjects
from contracts.requests import SubjectRequestV1
from kit.db import Database, as_utc, utcnow
from kit.messaging import Messaging

__all__ = ["Exchange", "due_date", "run_request", "RequestFailed"]

PAGE = 1000
TIMEOUT = 30.0


class RequestFailed(RuntimeError):
    pass


def due_date(received: datetime) -> datetime:
    """One calendar month after ``received`` (GDPR art. 12(3)), on the last day of a shorter month."""
    year, month = divmod(received.month, 12)
    year, month = received.year + year, month + 1
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)


@dataclass
class Exchange:
    """The territory's exchange, reached over NATS with the caller's credential."""

    messaging: Messaging
    authorization: str

    async def ask(self, siren: str, request: SubjectRequestV1) -> dict[str, Any]:
        if self.messaging.nc is None or not self.messaging.connected:
            raise RequestFailed("NATS is not reachable right now")
        try:
            reply = await self.messaging.nc.request(
                subjects.exchange_subject(siren),
                request.model_dump_json().encode(),
                timeout=TIMEOUT,
                headers={"Authorization": self.authorization},
            )
        except (NatsTimeout, NoRespondersError) as exc:
            raise RequestFailed(f"the exchange of {siren} did not answer ({type(exc).__name__})") from exc
        status = (reply.headers or {}).get("Maillage-Status", "500")
        body = json.loads(reply.data or b"{}")
        if status != "200":
            raise RequestFailed(f"the exchange refused: {body.get('error')} {body.get('detail', '')}".strip())
        return dict(body)


def _consent_history(session: Session, territory: str, subject: str) -> list[dict[str, Any]]:
    records = session.exec(
        select(ConsentRecord).where(ConsentRecord.territory == territory, ConsentRecord.subject == subject)
    ).all()
    out = []
    for record in records:
        events = session.exec(
            select(ConsentEvent).where(ConsentEvent.record_id == record.id).order_by(ConsentEvent.seq)  # type: ignore[arg-type]
        ).all()
        out.append(
            {
                "record_id": record.id,
                "purpose": record.purpose,
                "legal_basis": record.legal_basis,
                "state": record.state,
                "notice": {
                    "id": record.notice_id,
                    "version": record.notice_version,
                    "language": record.notice_language,
                },
                "processing": record.processing,
                "events": [
                    {"seq": e.seq, "event": e.kind, "at": as_utc(e.at).isoformat(), "reason": e.reason} for e in events
                ],
            }
        )
    return out


async def run_request(
    database: Database,
    exchange: Exchange,
    request_id: str,
    *,
    files: Path,
    signer: ReceiptSigner,
    actor: str,
    source: str,
) -> SubjectRequest:
    """Run (or run again) a received request; its final state is committed whatever happens."""
    with database.session() as session:
        found = session.get(SubjectRequest, request_id)
        assert found is not None
        request = found
    message = SubjectRequestV1(request_id=request.id, kind="access", subject_pseudonym=request.subject)
    try:
        if request.kind == "access":
            listing = await exchange.ask(request.territory, message)
            rows: dict[str, list[dict[str, Any]]] = {}
            for slug in sorted(listing.get("datasets", {})):
                offset = 0
                rows[slug] = []
                while True:
                    page = await exchange.ask(
                        request.territory, message.model_copy(update={"dataset": slug, "offset": offset, "limit": PAGE})
                    )
                    rows[slug].extend(page["rows"])
                    offset += len(page["rows"])
                    if not page["rows"] or offset >= int(page["total"]):
                        break
            with database.session() as session:
                consents = _consent_history(session, request.territory, request.subject)
            document = {
                "request_id": request.id,
                "territory": request.territory,
                "generated_at": utcnow().isoformat(),
                "subject": request.subject,
                "datasets": rows,
                "consents": consents,
            }
            files.mkdir(parents=True, exist_ok=True)
            path = files / f"{request.id}.json"
            tmp = path.with_suffix(".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
                json.dump(document, out, ensure_ascii=False, default=str)
            os.replace(tmp, path)
            detail = {"rows": {slug: len(r) for slug, r in rows.items()}, "consent_records": len(consents)}
        else:
            erased = await exchange.ask(request.territory, message.model_copy(update={"kind": "erasure"}))
            detail = {"erased": erased.get("erased", {}), "not_erasable": erased.get("not_erasable", [])}
    except RequestFailed as exc:
        with database.unit_of_work() as session:
            row = session.get(SubjectRequest, request_id)
            assert row is not None
            row.status = "pending"
            row.detail = {**row.detail, "error": str(exc)[:500]}
            session.add(row)
        return row
    with database.unit_of_work() as session:
        row = session.get(SubjectRequest, request_id)
        assert row is not None
        if row.kind == "erasure":
            detail["consent_records_anonymised"] = _anonymise(session, row, signer=signer, actor=actor, source=source)
            row.subject = "erased"
        row.status = "completed"
        row.completed_at = utcnow()
        row.detail = detail
        session.add(row)
    return row


def _anonymise(session: Session, request: SubjectRequest, *, signer: ReceiptSigner, actor: str, source: str) -> int:
    records = session.exec(
        select(ConsentRecord).where(
            ConsentRecord.territory == request.territory, ConsentRecord.subject == request.subject
        )
    ).all()
    for record in records:
        record.subject = secrets.token_hex(32)  # unlinkable: no key derives it
        record.valid_until = None
        _event(session, record, "erased", actor=actor, signer=signer, source=source, reason="subject-erasure")
    return len(records)


def purge_access_files(files: Path, *, older_than: timedelta = timedelta(days=30)) -> int:
    """Delete access files older than ``older_than`` (they hold personal data)."""
    if not files.is_dir():
        return 0
    limit = utcnow().timestamp() - older_than.total_seconds()
    removed = 0
    for path in files.glob("*.json"):
        if path.stat().st_mtime < limit:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
