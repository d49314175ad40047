"""HTTP API of the exchange: queries, ingestion, open-data downloads, the audit log."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import col, select

from contracts.datasets import AccessLevel, DatasetMetadata
from contracts.events import AuditRecordedV1
from contracts.requests import QueryRequestV1
from exchange import audit
from exchange.audit import AuditRecord, ChainReport, verify_chain
from exchange.config import ExchangeSettings
from exchange.ingest import IngestReport, ingest
from exchange.query import MEDIA_ARROW, MEDIA_CSV, MEDIA_JSON, QueryEngine, render
from exchange.rights import purge_dataset
from exchange.storage import DatasetVersion, Storage, export_csv
from kit.advertisements import published_metadata
from kit.auth import Principal, Role
from kit.errors import Conflict, Forbidden, NotFound, Unprocessable
from kit.service import CallerPrincipal, ContextDep, OptionalPrincipal, SessionDep, SlugPath, TerritoryPath

__all__ = ["negotiate_result", "router"]

router = APIRouter(prefix="/v1/territories/{siren}")


Territory = TerritoryPath
Slug = SlugPath


def engine(request: Request) -> QueryEngine:
    value: QueryEngine = request.app.state.engine
    return value


def storage(request: Request) -> Storage:
    value: Storage = request.app.state.storage
    return value


EngineDep = Annotated[QueryEngine, Depends(engine)]
StorageDep = Annotated[Storage, Depends(storage)]


def negotiate_result(accept: str | None) -> str:
    """Arrow IPC stream by default (machines); JSON or CSV when asked for."""
    value = (accept or "").lower()
    if MEDIA_JSON in value:
        return MEDIA_JSON
    if MEDIA_CSV in value:
        return MEDIA_CSV
    return MEDIA_ARROW


@router.post(
    "/query",
    tags=["query"],
    responses={
        200: {
            "content": {MEDIA_ARROW: {}, MEDIA_JSON: {}, MEDIA_CSV: {}},
            "description": "the permitted result; X-Maillage-Suppressed-Groups and X-Maillage-Audit-Id headers",
        }
    },
)
async def query(
    body: QueryRequestV1, request: Request, territory: Territory, principal: CallerPrincipal, engine: EngineDep
) -> Response:
    """Run one SELECT over the territory's datasets under the caller's agreement (or on open data)."""
    result = await engine.run(principal, territory, body.sql, body.agreement_id)
    content, media_type = render(result.table, negotiate_result(request.headers.get("accept")))
    return Response(
        content,
        media_type=media_type,
        headers={
            "X-Maillage-Suppressed-Groups": _count(result.suppressed_groups),
            "X-Maillage-Audit-Id": result.audit_id,
            "X-Maillage-Rows": str(result.table.num_rows),
        },
    )


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)


class DatasetData(BaseModel):
    slug: str
    version: int
    rows: int
    parquet_bytes: int
    parquet_sha256: str
    updated_at: str


@router.get("/datasets", response_model=list[DatasetData], tags=["data"])
def datasets_held(territory: Territory, storage: StorageDep) -> list[DatasetData]:
    """Which datasets hold data here, at which version (no data is shown)."""
    return [
        DatasetData(
            slug=v.slug,
            version=v.version,
            rows=v.rows,
            parquet_bytes=v.parquet_bytes,
            parquet_sha256=v.parquet_sha256,
            updated_at=v.created_at.isoformat(),
        )
        for v in storage.list_datasets(territory)
    ]


def _metadata(session: SessionDep, territory: str, slug: str) -> DatasetMetadata:
    metadata = published_metadata(session, f"{territory}/{slug}")
    if metadata is None:
        raise NotFound(f"dataset {territory}/{slug} is not published", code="dataset.not_found")
    return metadata


def _require_steward(principal: Principal, territory: str) -> None:
    if not principal.has_role(territory, Role.STEWARD):
        raise Forbidden(f"only stewards of territory {territory} ingest its data", code="auth.steward_required")


@router.post("/datasets/{slug}/data", response_model=None, status_code=201, tags=["data"])
async def upload(
    request: Request,
    territory: Territory,
    slug: Slug,
    session: SessionDep,
    principal: CallerPrincipal,
    storage: StorageDep,
    ctx: ContextDep,
    mode: Annotated[Literal["append", "replace"], Query()] = "append",
) -> IngestReport:
    """Ingest a CSV (UTF-8 or Latin-1, , or ;) or Parquet file; validated before anything becomes visible."""
    _require_steward(principal, territory)
    metadata = _metadata(session, territory, slug)
    settings = ctx.settings
    assert isinstance(settings, ExchangeSettings)
    content_type = request.headers.get("content-type", "text/csv").split(";")[0].strip().lower()
    file_format: Literal["csv", "parquet"] = "parquet" if "parquet" in content_type else "csv"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise Unprocessable("the file is larger than this node accepts", code="ingest.too_large", status_code=413)
    staging = settings.data_dir / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=staging, suffix=f".{file_format}") as handle:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise Unprocessable(
                    "the file is larger than this node accepts", code="ingest.too_large", status_code=413
                )
            await asyncio.to_thread(handle.write, chunk)
        handle.flush()
        report = await run_in_threadpool(
            ingest,
            storage,
            territory,
            slug,
            metadata.table_schema,
            Path(handle.name),
            file_format=file_format,
            mode=mode,
        )
    report.raise_for_errors()
    return report


def _open_version(
    session: SessionDep, storage: Storage, territory: str, slug: str, principal: Principal | None
) -> DatasetVersion:
    """Open data for everyone; the territory's own stewards and DPO may take any of its datasets (reversibility)."""
    metadata = _metadata(session, territory, slug)
    own = principal is not None and (
        principal.has_role(territory, Role.STEWARD) or principal.has_role(territory, Role.DPO)
    )
    if metadata.access is not AccessLevel.OPEN and not own:
        raise Forbidden(
            f"dataset {territory}/{slug} is not open data: query it under an agreement", code="policy.not_open"
        )
    version = storage.current(territory, slug)
    if version is None:
        raise NotFound(f"dataset {territory}/{slug} holds no data yet", code="dataset.no_data")
    return version


@router.get("/datasets/{slug}/data.csv", response_class=StreamingResponse, tags=["data"])
def download_csv(
    territory: Territory, slug: Slug, session: SessionDep, storage: StorageDep, principal: OptionalPrincipal
) -> StreamingResponse:
    """Every row of an open dataset (or of any dataset, for the territory's stewards and DPO), as CSV."""
    version = _open_version(session, storage, territory, slug, principal)
    return StreamingResponse(
        export_csv(version),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{slug}.csv"', "ETag": f'"v{version.version}"'},
    )


@router.get("/datasets/{slug}/data.parquet", response_class=FileResponse, tags=["data"])
def download_parquet(
    territory: Territory, slug: Slug, session: SessionDep, storage: StorageDep, principal: OptionalPrincipal
) -> FileResponse:
    """Every row of an open dataset (or of any dataset, for the territory's stewards and DPO), as Parquet."""
    version = _open_version(session, storage, territory, slug, principal)
    return FileResponse(
        version.parquet_path,
        media_type="application/vnd.apache.parquet",
        filename=f"{slug}.parquet",
        headers={"ETag": f'"v{version.version}"'},
    )


def _require_auditor(principal: Principal, territory: str) -> None:
    if not (principal.has_role(territory, Role.STEWARD) or principal.has_role(territory, Role.DPO)):
        raise Forbidden(
            f"the audit log of {territory} is for its stewards and DPO", code="auth.steward_or_dpo_required"
        )


class PurgeReport(BaseModel):
    dataset: str
    retention: dict[str, str] | None
    cutoff: str | None = None
    dry_run: bool
    rows_before: int = 0
    rows_expired: int = Field(description="rows past the retention period (removed, unless a dry run)")
    version: int | None = Field(default=None, description="the new version without them")
    destroyed_versions: list[int] = Field(default_factory=list)
    audit_id: str | None = None


@router.post("/datasets/{slug}/retention/purge", response_model=PurgeReport, tags=["lifecycle"])
async def purge(
    territory: Territory,
    slug: Slug,
    session: SessionDep,
    principal: CallerPrincipal,
    store: StorageDep,
    ctx: ContextDep,
    dry_run: Annotated[bool, Query(description="report what would go, remove nothing")] = False,
) -> PurgeReport:
    """Purge the rows past the dataset's retention period now (the exchange also does it on a schedule)."""
    if not (principal.has_role(territory, Role.STEWARD) or principal.has_role(territory, Role.DPO)):
        raise Forbidden("purges are run by the territory's steward or DPO", code="auth.forbidden")
    metadata = _metadata(session, territory, slug)
    if metadata.retention is None:
        raise Unprocessable(f"dataset {slug} declares no retention period", code="dataset.no_retention")
    assert ctx.database is not None
    report = await run_in_threadpool(
        purge_dataset,
        ctx.database,
        store,
        territory,
        slug,
        metadata,
        principal=principal.subject,
        source=ctx.source,
        dry_run=dry_run,
    )
    return PurgeReport.model_validate(report)


@router.get("/audit", response_model=list[AuditRecordedV1], tags=["audit"])
def audit_log(
    territory: Territory,
    session: SessionDep,
    principal: CallerPrincipal,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditRecordedV1]:
    """The territory's audit records after sequence ``after`` (stewards and DPO), as published on NATS."""
    _require_auditor(principal, territory)
    rows = session.exec(
        select(AuditRecord)
        .where(col(AuditRecord.territory) == territory, col(AuditRecord.seq) > after)
        .order_by(col(AuditRecord.seq))
        .limit(limit)
    ).all()
    return [audit.as_event(row) for row in rows]


class AuditImport(BaseModel):
    records: list[AuditRecordedV1] = Field(max_length=1_000_000)


@router.post("/audit/import", response_model=ChainReport, status_code=201, tags=["audit"])
def import_audit(
    body: AuditImport, territory: Territory, session: SessionDep, principal: CallerPrincipal
) -> ChainReport:
    """Restore a territory's audit chain from its archive, on a node that holds none yet; the chain is verified
    first (422 ``audit.broken_chain`` with the first broken link), and new records chain after it."""
    _require_auditor(principal, territory)
    if session.exec(select(AuditRecord.id).where(col(AuditRecord.territory) == territory).limit(1)).first():
        raise Conflict(f"the audit chain of {territory} is not empty here", code="audit.not_empty")
    previous = audit.GENESIS
    for expected, item in enumerate(sorted(body.records, key=lambda r: r.seq), start=1):
        # The hashes cover the territory: a chain only imports into the territory it was written for.
        record = AuditRecord(**{**item.model_dump(), "datasets": ",".join(item.datasets), "territory": territory})
        if record.seq != expected or record.prev_hash != previous or audit.record_hash(record) != record.hash:
            raise Unprocessable(
                f"the chain breaks at record {record.seq}",
                code="audit.broken_chain",
                extra={"first_broken_seq": record.seq},
            )
        previous = record.hash
        session.add(record)
    session.flush()
    return audit.verify_chain(session, territory)


@router.get("/audit/verify", response_model=ChainReport, tags=["audit"])
def audit_verify(territory: Territory, session: SessionDep, principal: CallerPrincipal) -> ChainReport:
    """Recompute the territory's hash chain; report the first broken link (stewards and DPO)."""
    _require_auditor(principal, territory)
    return verify_chain(session, territory)
