"""Quotas per agreement and per UTC day: queries, rows out, bytes out (terms.quota)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from contracts.terms import Quota
from kit.db import Database
from kit.errors import TooManyRequests

__all__ = ["QuotaUsage", "check", "record"]


class QuotaUsage(SQLModel, table=True):
    """What an agreement consumed on one UTC day."""

    __tablename__ = "quota_usage"

    agreement_id: str = Field(primary_key=True, max_length=36)
    day: date = Field(primary_key=True)
    queries: int = 0
    rows_out: int = 0
    bytes_out: int = 0


def _reset(now: datetime) -> datetime:
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def check(session: Session, agreement_id: str, quota: Quota, *, now: datetime | None = None) -> None:
    """Raise 429 ``policy.quota_exceeded`` (with the reset time) when today's quota is used up."""
    moment = now or datetime.now(UTC)
    usage = session.get(QuotaUsage, (agreement_id, moment.date()))
    if usage is None:
        return
    exceeded = [
        name
        for name, used, limit in (
            ("queries", usage.queries, quota.queries_per_day),
            ("rows", usage.rows_out, quota.rows_out_per_day),
            ("bytes", usage.bytes_out, quota.bytes_out_per_day),
        )
        if used >= limit
    ]
    if exceeded:
        reset = _reset(moment)
        retry_after = max(1, int((reset - moment).total_seconds()))
        raise TooManyRequests(
            f"the agreement's daily quota of {', '.join(exceeded)} is used up until {reset.isoformat()}",
            code="policy.quota_exceeded",
            headers={"Retry-After": str(retry_after)},
            extra={"reset_at": reset.isoformat(), "exceeded": exceeded},
        )


def record(database: Database, agreement_id: str, *, rows: int, bytes_out: int, now: datetime | None = None) -> None:
    """Add one query's consumption to today's usage (atomically)."""
    day = (now or datetime.now(UTC)).date()
    for _ in range(5):
        with database.unit_of_work() as session:
            result = session.execute(
                update(QuotaUsage)
                .where(col(QuotaUsage.agreement_id) == agreement_id, col(QuotaUsage.day) == day)
                .values(
                    queries=QuotaUsage.queries + 1,
                    rows_out=QuotaUsage.rows_out + rows,
                    bytes_out=QuotaUsage.bytes_out + bytes_out,
                )
            )
            if getattr(result, "rowcount", 0) == 1:
                return
            try:
                session.add(
                    QuotaUsage(agreement_id=agreement_id, day=day, queries=1, rows_out=rows, bytes_out=bytes_out)
                )
                session.flush()
                return
            except IntegrityError:
                session.rollback()  # created concurrently: update it on the next turn
