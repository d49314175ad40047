"""Data-subject requests and retention on the exchange: the rows are here, so they are found and destroyed here.

Every destruction is one audit record in the territory's hash chain (who, which dataset, how many rows; never the
subject) and one :class:`contracts.events.DataDestroyedV1` event, in the same transaction.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from contracts.datasets import DatasetMetadata
from contracts.events import DataDestroyedV1
from contracts.requests import SubjectRequestV1
from exchange import audit
from exchange.lifecycle import Removal, erase_subject, purge_expired, subject_rows
from exchange.storage import Storage
from kit.advertisements import published_in
from kit.auth import Principal, Role
from kit.db import Database
from kit.errors import Forbidden

__all__ = ["purge_dataset", "purge_territory", "subject_request"]

log = logging.getLogger(__name__)


def _require_rights_officer(principal: Principal, territory: str) -> None:
    if not (principal.has_role(territory, Role.DPO) or principal.has_role(territory, Role.STEWARD)):
        raise Forbidden(
            "data-subject requests and purges are run by the territory's DPO or steward", code="auth.forbidden"
        )


def _record(
    database: Database,
    *,
    territory: str,
    principal: str,
    removal: Removal,
    reason: str,
    statement: str,
    source: str,
    started: float,
    cutoff: datetime | None = None,
    request_id: str | None = None,
) -> str:
    def destroyed(record: audit.AuditRecord) -> DataDestroyedV1:
        assert removal.version is not None
        return DataDestroyedV1(
            territory=territory,
            dataset=removal.dataset,
            reason="retention" if reason == "retention.purge" else "erasure",
            rows_removed=removal.rows_removed,
            dataset_version=removal.version,
            destroyed_versions=removal.destroyed_versions or [],
            cutoff=cutoff,
            request_id=request_id,
            audit_id=record.id,
            at=datetime.now(UTC),
        )

    record = audit.append(
        database,
        territory=territory,
        principal=principal,
        organisation=territory,
        agreement_id=None,
        purpose=None,
        datasets=[removal.dataset],
        sql=statement,
        decision="accepted",
        reason=reason,
        rows_out=removal.rows_removed,
        duration_ms=(time.perf_counter() - started) * 1000,
        source=source,
        also=destroyed if removal.version is not None else None,
    )
    return record.id


def subject_request(
    database: Database, storage: Storage, siren: str, principal: Principal, request: SubjectRequestV1, source: str
) -> dict[str, Any]:
    """Answer a data-subject request: the subject's rows (access, paged) or their erasure from every dataset."""
    _require_rights_officer(principal, siren)
    with database.session() as session:
        published = published_in(session, siren)
    keyed = sorted(slug for slug, meta in published.items() if meta.table_schema.subject_key is not None)
    if request.kind == "access":
        if request.dataset is None:
            counts = {slug: subject_rows(storage, siren, slug, request.subject_pseudonym, 0, 1)[1] for slug in keyed}
            return {"request_id": request.request_id, "datasets": {s: n for s, n in counts.items() if n}}
        if request.dataset not in keyed:
            return {"request_id": request.request_id, "dataset": request.dataset, "rows": [], "total": 0}
        started = time.perf_counter()
        rows, total = subject_rows(
            storage, siren, request.dataset, request.subject_pseudonym, request.offset, request.limit
        )
        # Rows about a person leave the exchange: audited like any query (never naming the subject).
        audit.append(
            database,
            territory=siren,
            principal=principal.subject,
            organisation=siren,
            agreement_id=None,
            purpose=None,
            datasets=[request.dataset],
            sql=f'SELECT * FROM "{request.dataset}" WHERE <data subject of request {request.request_id}>',
            decision="accepted",
            reason="subject.access",
            rows_out=len(rows),
            duration_ms=(time.perf_counter() - started) * 1000,
            source=source,
        )
        return {
            "request_id": request.request_id,
            "dataset": request.dataset,
            "offset": request.offset,
            "rows": rows,
            "total": total,
        }
    started = time.perf_counter()
    removals = erase_subject(storage, siren, request.subject_pseudonym, keyed)
    for removal in removals:
        if removal.rows_removed > 0:
            _record(
                database,
                territory=siren,
                principal=principal.subject,
                removal=removal,
                reason="subject.erasure",
                statement=f'DELETE FROM "{removal.dataset}" WHERE <data subject of request {request.request_id}>',
                source=source,
                started=started,
                request_id=request.request_id,
            )
    return {
        "request_id": request.request_id,
        "erased": {r.dataset: r.rows_removed for r in removals if r.rows_removed >= 0},
        "not_erasable": sorted(r.dataset for r in removals if r.rows_removed < 0),
    }


def purge_dataset(
    database: Database,
    storage: Storage,
    siren: str,
    slug: str,
    metadata: DatasetMetadata,
    *,
    principal: str,
    source: str,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Purge the rows of ``slug`` past its retention period (a dry run reports what would go)."""
    if metadata.retention is None:
        return {"dataset": slug, "retention": None, "rows_expired": 0, "dry_run": dry_run}
    started = time.perf_counter()
    removal, cutoff = purge_expired(storage, siren, slug, metadata.retention, now or datetime.now(UTC), dry_run=dry_run)
    audit_id = None
    if removal.version is not None:
        column = metadata.retention.time_column
        audit_id = _record(
            database,
            territory=siren,
            principal=principal,
            removal=removal,
            reason="retention.purge",
            statement=f'DELETE FROM "{slug}" WHERE "{column}" < \'{cutoff.isoformat()}\'',
            source=source,
            started=started,
            cutoff=cutoff,
        )
    return {
        "dataset": slug,
        "retention": metadata.retention.model_dump(),
        "cutoff": cutoff.isoformat(),
        "dry_run": dry_run,
        "rows_before": removal.rows_before,
        "rows_expired": removal.rows_removed,
        "version": removal.version,
        "destroyed_versions": removal.destroyed_versions or [],
        "audit_id": audit_id,
    }


def purge_territory(database: Database, storage: Storage, siren: str, *, source: str) -> list[dict[str, Any]]:
    """The scheduled purge: every published dataset of ``siren`` with a retention period."""
    with database.session() as session:
        published = published_in(session, siren)
    reports = []
    for slug, metadata in sorted(published.items()):
        if metadata.retention is None or storage.current(siren, slug) is None:
            continue
        report = purge_dataset(database, storage, siren, slug, metadata, principal="maillage:retention", source=source)
        if report["rows_expired"]:
            log.info("retention purge of %s/%s removed %d rows", siren, slug, report["rows_expired"])
        reports.append(report)
    return reports
