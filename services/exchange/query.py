"""The compute-to-data query path: grants → policy → sandbox → suppression → audit → quota, for HTTP and NATS alike.

A query names datasets of one territory hosted here. The caller's permissions come from the grants (KV bucket
``grants``, fail closed when the cache is stale) and from open access. Every query, accepted or refused, is audited.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from opentelemetry import metrics, trace

from contracts.datasets import AccessLevel, DatasetMetadata
from contracts.grants import Grant
from contracts.vocabularies import LegalBasis
from exchange import audit, quotas
from exchange.consent import ConsentSets, consent_filter
from exchange.policy import DatasetInfo, Permission, Plan, PlanCache, PolicyError
from exchange.policy.scans import SUBJECT_HASH_VERSION
from exchange.sandbox import Attachment, SandboxError, SandboxPool
from exchange.storage import Storage
from kit.advertisements import published_in
from kit.auth import Principal
from kit.db import Database
from kit.errors import MaillageError, ServiceUnavailable
from kit.grants import GrantCache

__all__ = ["QueryEngine", "QueryResult", "render"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)
query_duration = meter.create_histogram("maillage.query.duration", unit="ms", description="query path duration")
rows_out_counter = meter.create_counter("maillage.query.rows_out", unit="{row}", description="rows released")
bytes_out_counter = meter.create_counter("maillage.query.bytes_out", unit="By", description="bytes released")

MEDIA_ARROW = "application/vnd.apache.arrow.stream"
MEDIA_JSON = "application/json"
MEDIA_CSV = "text/csv"


class PolicyRefusal(MaillageError):
    status_code = 403
    code = "policy.refused"


@dataclass
class QueryResult:
    table: Any  # pyarrow.Table
    suppressed_groups: int | None  # None: unknown (no released row carried the count)
    audit_id: str
    agreement_ids: list[str] = field(default_factory=list)


def _alias(slug: str) -> str:
    return "ds_" + slug.replace("-", "_")


class QueryEngine:
    """Everything a query needs on this node."""

    def __init__(
        self,
        *,
        database: Database,
        storage: Storage,
        sandbox: SandboxPool,
        grants: GrantCache,
        source: str,
        max_rows: int,
        consents: ConsentSets | None = None,
    ) -> None:
        self.consents = consents
        self.plans = PlanCache()
        self.database = database
        self.storage = storage
        self.sandbox = sandbox
        self.grants = grants
        self.source = source
        self.max_rows = max_rows

    def _permissions(
        self, principal: Principal, siren: str, published: dict[str, DatasetMetadata], agreement_id: str | None
    ) -> tuple[dict[str, Permission], dict[str, Grant]]:
        """Open datasets for everyone; for others the caller's grants (the one named, or the only one)."""
        permissions: dict[str, Permission] = {
            slug: Permission(dataset=slug) for slug, meta in published.items() if meta.access is AccessLevel.OPEN
        }
        chosen: dict[str, Grant] = {}
        now = datetime.now(UTC)
        if agreement_id is not None:
            grant = self.grants.get(agreement_id, now)
            if grant is None or grant.provider != siren or not principal.acts_for(grant.consumer):
                if not self.grants.fresh(now):
                    raise ServiceUnavailable(
                        "the grants are not confirmed by the registry right now; refusing (fail closed)",
                        code="policy.grants_stale",
                    )
                raise PolicyRefusal(
                    f"agreement {agreement_id} grants you nothing on this territory's data now",
                    code="policy.no_agreement",
                )
            slug = grant.dataset.split("/", 1)[1]
            chosen[slug] = grant
        else:
            candidates: dict[str, list[Grant]] = {}
            for grant in self.grants.grants():
                if grant.provider == siren and principal.acts_for(grant.consumer):
                    if self.grants.get(grant.agreement_id, now) is not None:
                        candidates.setdefault(grant.dataset.split("/", 1)[1], []).append(grant)
            for slug, grants in candidates.items():
                if len(grants) == 1:
                    chosen[slug] = grants[0]
        for slug, grant in chosen.items():
            permissions[slug] = Permission(dataset=slug, terms=grant.terms)
        return permissions, chosen

    def _datasets(
        self, siren: str, published: dict[str, DatasetMetadata]
    ) -> tuple[dict[str, DatasetInfo], dict[str, Attachment]]:
        infos: dict[str, DatasetInfo] = {}
        attachments: dict[str, Attachment] = {}
        for slug, meta in published.items():
            current = self.storage.current(siren, slug)
            if current is None:
                continue  # described but holding no data yet
            alias = _alias(slug)
            infos[slug] = DatasetInfo(
                slug=slug,
                physical=f'{alias}.main."rows"',
                schema=meta.table_schema,
                access=meta.access,
                has_subject_hash=current.subject_hash == SUBJECT_HASH_VERSION,
                subject_rows_max=current.subject_rows_max,
                subjects=current.subjects,
                rows=current.rows,
            )
            attachments[slug] = Attachment(alias=alias, path=current.duckdb_path, version=str(current.version))
        return infos, attachments

    def _consent_filters(
        self,
        siren: str,
        chosen: dict[str, Grant],
        infos: dict[str, DatasetInfo],
        permissions: dict[str, Permission],
    ) -> dict[str, Attachment]:
        """Restrict datasets read under a consent-based grant to the subjects whose consent for its purpose is
        active (exchange.consent); the consent snapshots to attach, by dataset."""
        attachments: dict[str, Attachment] = {}
        for slug, grant in chosen.items():
            if grant.terms.legal_basis is not LegalBasis.CONSENT or slug not in infos:
                continue
            purpose = grant.terms.consent_purpose
            if not infos[slug].has_subject_hash or purpose is None:
                # Without the keyed subject hash, rows cannot be matched with consent events: compute on nothing.
                raise PolicyRefusal(
                    f"dataset {slug} was ingested before consent could apply to it; the territory must re-ingest it",
                    code="policy.consent_unavailable",
                    status_code=409,
                )
            snapshot = self.consents.attachment(siren, purpose) if self.consents is not None else None
            permissions[slug] = replace(
                permissions[slug],
                consent_filter=consent_filter(snapshot.alias if snapshot else None, grant.terms.consumer),
            )
            if snapshot is not None:
                attachments[slug] = snapshot
        return attachments

    async def run(self, principal: Principal, siren: str, sql: str, agreement_id: str | None) -> QueryResult:
        """Run a query for ``principal`` on territory ``siren``; every outcome is audited."""
        started = time.perf_counter()
        with tracer.start_as_current_span("exchange.query") as span:
            span.set_attribute("maillage.territory", siren)
            span.set_attribute("maillage.agreement_id", agreement_id or "")
            try:
                published = await asyncio.to_thread(self._published, siren)
                permissions, chosen = self._permissions(principal, siren, published, agreement_id)
                infos, attachments = self._datasets(siren, published)
                consented: dict[str, Attachment] = {}
                if any(g.terms.legal_basis is LegalBasis.CONSENT for g in chosen.values()):
                    # Reads the snapshot pointer, and rewrites a stale snapshot: not on the event loop.
                    consented = await asyncio.to_thread(self._consent_filters, siren, chosen, infos, permissions)
                checked: Plan = self.plans.plan(
                    sql,
                    datasets={slug: infos[slug] for slug in permissions if slug in infos},
                    permissions={slug: p for slug, p in permissions.items() if slug in infos},
                    max_rows=self.max_rows,
                )
                used = [chosen[slug] for slug in checked.datasets if slug in chosen]
                for grant in used:
                    await asyncio.to_thread(self._check_quota, grant)
                needed = [attachments[slug] for slug in checked.datasets]
                needed.extend(consented[slug] for slug in checked.datasets if slug in consented)
                result = await self.sandbox.execute(checked.sql, needed)
                table, suppressed = _suppress(result.table, checked)
            except (PolicyError, SandboxError, MaillageError) as exc:
                code = getattr(exc, "code", "policy.refused")
                span.set_attribute("maillage.decision", "refused")
                span.set_attribute("maillage.reason", code)
                record = await asyncio.to_thread(
                    self._audit, principal, siren, sql, None, [], "refused", code, 0, 0, 0, started
                )
                raise _as_http(exc, record.id) from None
            rows, size = table.num_rows, table.nbytes
            for grant in used:
                await asyncio.to_thread(quotas.record, self.database, grant.agreement_id, rows=rows, bytes_out=size)
            record = await asyncio.to_thread(
                self._audit,
                principal,
                siren,
                sql,
                used[0] if used else None,
                list(checked.datasets),
                "accepted",
                None,
                rows,
                size,
                suppressed or 0,
                started,
            )
            span.set_attribute("maillage.decision", "accepted")
            span.set_attribute("maillage.rows_out", rows)
            span.set_attribute("maillage.suppressed_groups", -1 if suppressed is None else suppressed)
            elapsed = (time.perf_counter() - started) * 1000
            query_duration.record(elapsed, {"territory": siren})
            rows_out_counter.add(rows, {"territory": siren})
            bytes_out_counter.add(size, {"territory": siren})
            return QueryResult(
                table=table,
                suppressed_groups=suppressed,
                audit_id=record.id,
                agreement_ids=[g.agreement_id for g in used],
            )

    def _published(self, siren: str) -> dict[str, DatasetMetadata]:
        with self.database.session() as session:
            return published_in(session, siren)

    def _check_quota(self, grant: Grant) -> None:
        with self.database.session() as session:
            quotas.check(session, grant.agreement_id, grant.terms.quota)

    def _audit(
        self,
        principal: Principal,
        siren: str,
        sql: str,
        grant: Grant | None,
        datasets: list[str],
        decision: audit.Decision,
        reason: str | None,
        rows: int,
        size: int,
        suppressed: int,
        started: float,
    ) -> audit.AuditRecord:
        return audit.append(
            self.database,
            territory=siren,
            principal=principal.subject,
            organisation=principal.organisation,
            agreement_id=grant.agreement_id if grant else None,
            purpose=grant.terms.purpose.iri if grant else None,
            datasets=datasets,
            sql=sql,
            decision=decision,
            reason=reason,
            rows_out=rows,
            bytes_out=size,
            suppressed_groups=suppressed,
            duration_ms=(time.perf_counter() - started) * 1000,
            source=self.source,
        )


def _suppress(table: Any, checked: Plan) -> tuple[Any, int | None]:
    """Drop groups below k (a second line of defence: the SQL already dropped them) and the technical columns.

    The number of groups below k comes from the SQL (counted over every group, before the caller's HAVING); it is
    None when no released row carries it (every group suppressed, or filtered by the caller's conditions).
    """
    if checked.k_column is None or checked.k is None or checked.k_column not in table.column_names:
        return table, 0
    counts = table.column(checked.k_column)
    keep = pc.or_kleene(pc.is_null(counts), pc.greater_equal(counts, checked.k))
    kept = table.filter(keep)
    suppressed: int | None = table.num_rows - kept.num_rows
    dropped = [checked.k_column]
    if checked.suppressed_column is not None and checked.suppressed_column in table.column_names:
        dropped.append(checked.suppressed_column)
        values = kept.column(checked.suppressed_column).drop_null()
        suppressed = int(values[0].as_py()) if len(values) else None
    return kept.drop_columns(dropped), suppressed


def _as_http(exc: Exception, audit_id: str) -> MaillageError:
    if isinstance(exc, MaillageError):
        exc.extra = {**exc.extra, "audit_id": audit_id}
        return exc
    code = getattr(exc, "code", "policy.refused")
    detail = getattr(exc, "detail", str(exc))
    status = 422
    if isinstance(exc, SandboxError):
        status = {
            "sandbox.timeout": 408,
            "sandbox.memory": 422,
            "sandbox.result_too_large": 413,
            "sandbox.busy": 503,
            "sandbox.unavailable": 503,
            "sandbox.crashed": 500,
            "sandbox.sql_error": 422,
        }.get(code, 500)
    elif code in ("policy.table_not_allowed", "policy.no_agreement"):
        status = 403
    return MaillageError(detail, code=code, status_code=status, extra={"audit_id": audit_id})


def render(table: Any, media_type: str) -> tuple[bytes, str]:
    """The result as Arrow IPC stream, JSON (records) or CSV; returns (body, content type)."""
    if media_type == MEDIA_JSON:
        return json.dumps(table.to_pylist(), default=str, ensure_ascii=False).encode("utf-8"), MEDIA_JSON
    if media_type == MEDIA_CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if v is None else v for v in row.values()])
        return buffer.getvalue().encode("utf-8"), f"{MEDIA_CSV}; charset=utf-8"
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes(), MEDIA_ARROW
