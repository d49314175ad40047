"""The audit chain on SQLite and PostgreSQL: appends, verification, tampering found at the first broken link."""

from __future__ import annotations

import threading

from sqlalchemy import update
from sqlmodel import col, select

from contracts.terms import Quota
from exchange.audit import GENESIS, AuditRecord, append, mask_literals, verify_chain
from exchange.quotas import QuotaUsage, check, record
from kit.db import Database
from kit.errors import TooManyRequests
from kit.outbox import OutboxEvent

DIJON, NORGE = "242100410", "200069540"


def add(database: Database, territory: str = DIJON, sql: str = "SELECT 1", decision: str = "accepted") -> AuditRecord:
    return append(
        database,
        territory=territory,
        principal="partner-analyst",
        organisation="73282932000074",
        agreement_id=None,
        purpose=None,
        datasets=["frequentation-bus"],
        sql=sql,
        decision=decision,  # type: ignore[arg-type]
        reason=None if decision == "accepted" else "policy.table_not_allowed",
        rows_out=3,
        bytes_out=120,
        duration_ms=1.5,
        source="urn:maillage:test:exchange",
    )


def test_chain_appends_and_verifies(database: Database):
    first = add(database)
    second = add(database, decision="refused")
    other = add(database, territory=NORGE)
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash and other.prev_hash == GENESIS
    assert (first.seq, second.seq, other.seq) == (1, 2, 1)
    with database.session() as session:
        report = verify_chain(session, DIJON)
        assert report.valid and report.records == 2 and report.last_hash == second.hash
        events = session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq))).all()
    assert [e.subject for e in events] == [f"audit.{DIJON}", f"audit.{DIJON}", f"audit.{NORGE}"]


def test_tampering_is_found_at_the_first_broken_link(database: Database):
    records = [add(database) for _ in range(5)]
    with database.unit_of_work() as session:
        session.execute(update(AuditRecord).where(col(AuditRecord.id) == records[2].id).values(rows_out=0))
    with database.session() as session:
        report = verify_chain(session, DIJON)
    assert not report.valid and report.first_broken_seq == 3 and "content" in (report.reason or "")
    with database.unit_of_work() as session:
        session.delete(session.get(AuditRecord, records[2].id))
    with database.session() as session:
        report = verify_chain(session, DIJON)
    assert not report.valid and report.first_broken_seq == 3 and "missing" in (report.reason or "")


def test_concurrent_appends_keep_one_chain(database: Database):
    threads = [threading.Thread(target=add, args=(database,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with database.session() as session:
        report = verify_chain(session, DIJON)
    assert report.valid and report.records == 8


def test_literals_are_masked_and_hostile_text_is_not_kept():
    masked, digest = mask_literals("SELECT sum(volume_m3) FROM eau WHERE meter_id = 'CPT-123456' AND month > 3")
    assert "CPT-123456" not in masked and "?" in masked and len(digest) == 64
    masked, _ = mask_literals("SELECT 'Jean Dupont' ; DROP TABLE x; ((((")
    assert "Dupont" not in masked


def test_quotas_refuse_until_the_next_day(database: Database):
    quota = Quota(queries_per_day=2, rows_out_per_day=1000, bytes_out_per_day=10_000)
    agreement = "0f8fad5b-d9cb-469f-a165-70867728950e"
    with database.session() as session:
        check(session, agreement, quota)
    record(database, agreement, rows=10, bytes_out=100)
    record(database, agreement, rows=10, bytes_out=100)
    with database.session() as session:
        usage = session.get(QuotaUsage, (agreement, next(iter(session.exec(select(QuotaUsage.day))))))
        assert usage is not None and usage.queries == 2 and usage.rows_out == 20
        try:
            check(session, agreement, quota)
        except TooManyRequests as refused:
            assert refused.code == "policy.quota_exceeded" and int(refused.headers["Retry-After"]) > 0
            assert refused.extra["exceeded"] == ["queries"]
        else:
            raise AssertionError("quota not enforced")
