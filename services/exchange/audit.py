"""The audit log: every query, accepted or refused, in a hash chain per territory, published on ``audit.<siren>``.

Each record holds the hash of the previous one of its territory, so changing or deleting a record breaks every link
after it; :func:`verify_chain` finds the first broken link. The SQL is kept with its literals masked (a refused query
may carry a meter number or a name in a filter: the audit must not become a store of personal data); the SHA-256 of
the exact normalised SQL proves which query it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import sqlglot
from pydantic import BaseModel
from sqlalchemy import UniqueConstraint
from sqlalchemy.exc import IntegrityError
from sqlglot import exp
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from contracts.events import AuditRecordedV1, Event
from kit.db import Database
from kit.outbox import enqueue

__all__ = [
    "AuditRecord",
    "ChainReport",
    "Decision",
    "append",
    "mask_literals",
    "record_hash",
    "verify_chain",
]

GENESIS = "0" * 64
Decision = Literal["accepted", "refused"]


class AuditRecord(SQLModel, table=True):
    """One query, accepted or refused."""

    __tablename__ = "audit_record"
    __table_args__ = (UniqueConstraint("territory", "seq"),)

    id: str = SQLField(primary_key=True, max_length=36)
    territory: str = SQLField(max_length=9, index=True)
    seq: int
    at: datetime
    principal: str = SQLField(max_length=200)
    organisation: str | None = SQLField(default=None, max_length=14)
    agreement_id: str | None = SQLField(default=None, max_length=36)
    purpose: str | None = SQLField(default=None, max_length=200)
    datasets: str = SQLField(default="", max_length=2000, description="comma-separated slugs")
    sql_masked: str = SQLField(max_length=20000)
    sql_hash: str = SQLField(max_length=64)
    decision: str = SQLField(max_length=8)
    reason: str | None = SQLField(default=None, max_length=200)
    rows_out: int = 0
    bytes_out: int = 0
    suppressed_groups: int = 0
    duration_ms: float = 0.0
    prev_hash: str = SQLField(max_length=64)
    hash: str = SQLField(max_length=64)


_HASHED = (
    "id",
    "territory",
    "seq",
    "at",
    "principal",
    "organisation",
    "agreement_id",
    "purpose",
    "datasets",
    "sql_masked",
    "sql_hash",
    "decision",
    "reason",
    "rows_out",
    "bytes_out",
    "suppressed_groups",
    "duration_ms",
    "prev_hash",
)


def record_hash(record: AuditRecord) -> str:
    """SHA-256 of the canonical JSON of every field but the hash itself (the previous hash included)."""
    values: dict[str, Any] = {name: getattr(record, name) for name in _HASHED}
    at = values["at"]
    values["at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    values["duration_ms"] = round(float(values["duration_ms"]), 3)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1024)
def mask_literals(sql: str) -> tuple[str, str]:
    """(SQL with every literal replaced by ``?``, SHA-256 of the normalised SQL); unparseable SQL is not kept.

    Kept for the queries that come again (a pure function of the text; the literals it drops never stay in memory
    longer than the query text itself would in the plan cache)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except Exception:  # noqa: BLE001 - hostile input: keep only its hash
        return "<unparseable>", hashlib.sha256(sql.encode("utf-8", "replace")).hexdigest()
    if tree is None:
        return "<empty>", hashlib.sha256(b"").hexdigest()
    normalised = tree.sql(dialect="duckdb")
    masked = tree.transform(lambda node: exp.Placeholder() if isinstance(node, exp.Literal) else node)
    return masked.sql(dialect="duckdb")[:20000], hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def as_event(record: AuditRecord) -> AuditRecordedV1:
    """A stored record as the contract describes it (published on ``audit.<siren>``, listed by the API)."""
    return AuditRecordedV1.model_validate(
        {**record.model_dump(), "datasets": [d for d in record.datasets.split(",") if d]}
    )


def _last(session: Session, territory: str) -> AuditRecord | None:
    statement = (
        select(AuditRecord)
        .where(col(AuditRecord.territory) == territory)
        .order_by(col(AuditRecord.seq).desc())
        .limit(1)
    )
    return session.exec(statement).first()


def append(
    database: Database,
    *,
    territory: str,
    principal: str,
    organisation: str | None,
    agreement_id: str | None,
    purpose: str | None,
    datasets: list[str],
    sql: str,
    decision: Decision,
    reason: str | None,
    rows_out: int = 0,
    bytes_out: int = 0,
    suppressed_groups: int = 0,
    duration_ms: float = 0.0,
    source: str,
    also: Callable[[AuditRecord], Event] | None = None,
) -> AuditRecord:
    """Append one record to the territory's chain (and publish it through the outbox), retrying on a race.

    ``also`` builds another event from the record, published in the same transaction (a destruction event)."""
    sql_masked, sql_hash = mask_literals(sql)
    for _ in range(20):
        try:
            with database.unit_of_work() as session:
                last = _last(session, territory)
                record = AuditRecord(
                    id=str(uuid.uuid4()),
                    territory=territory,
                    seq=(last.seq + 1) if last else 1,
                    at=datetime.now(UTC),
                    principal=principal,
                    organisation=organisation,
                    agreement_id=agreement_id,
                    purpose=purpose,
                    datasets=",".join(datasets),
                    sql_masked=sql_masked,
                    sql_hash=sql_hash,
                    decision=decision,
                    reason=reason,
                    rows_out=rows_out,
                    bytes_out=bytes_out,
                    suppressed_groups=suppressed_groups,
                    duration_ms=round(duration_ms, 3),
                    prev_hash=last.hash if last else GENESIS,
                    hash="",
                )
                record.hash = record_hash(record)
                session.add(record)
                enqueue(session, as_event(record), source=source)
                if also is not None:
                    enqueue(session, also(record), source=source)
            return record
        except IntegrityError:
            continue  # another query took this sequence number: chain after it
    raise RuntimeError(f"could not append to the audit chain of {territory}")


class ChainReport(BaseModel):
    territory: str
    valid: bool
    records: int
    first_broken_seq: int | None = None
    reason: str | None = None
    last_hash: str | None = None


def verify_chain(session: Session, territory: str, *, batch: int = 5000) -> ChainReport:
    """Recompute every hash of the territory's chain; report the first broken link."""
    previous_hash, expected_seq, count = GENESIS, 1, 0
    last_seq = 0
    while True:
        rows = session.exec(
            select(AuditRecord)
            .where(col(AuditRecord.territory) == territory, col(AuditRecord.seq) > last_seq)
            .order_by(col(AuditRecord.seq))
            .limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            count += 1
            if row.seq != expected_seq:
                return ChainReport(
                    territory=territory,
                    valid=False,
                    records=count,
                    first_broken_seq=expected_seq,
                    reason=f"record {expected_seq} is missing",
                )
            if row.prev_hash != previous_hash:
                return ChainReport(
                    territory=territory,
                    valid=False,
                    records=count,
                    first_broken_seq=row.seq,
                    reason="prev_hash does not match the previous record",
                )
            if record_hash(row) != row.hash:
                return ChainReport(
                    territory=territory,
                    valid=False,
                    records=count,
                    first_broken_seq=row.seq,
                    reason="the record's content does not match its hash",
                )
            previous_hash, expected_seq, last_seq = row.hash, row.seq + 1, row.seq
    return ChainReport(territory=territory, valid=True, records=count, last_hash=previous_hash if count else None)
