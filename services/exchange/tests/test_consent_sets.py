"""The exchange's consented subjects: the latest event of each record wins, snapshots follow every change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from contracts.envelope import Envelope
from contracts.events import ConsentChangedV1
from exchange.consent import ConsentSets, consent_filter
from kit.db import Database
from kit.pseudonyms import pseudonym, pseudonym64, territory_key

DIJON, BESANCON = "242100410", "242500361"
RESEARCH = "https://w3id.org/dpv#ScientificResearch"
PARTNER, OTHER = "73282932000074", "242500361"
KEY = territory_key("test pseudonym secret, not a real one", DIJON)


def change(record: str, seq: int, active: bool, meter: str, territory: str = DIJON, **extra: object) -> Envelope:
    extra.setdefault("recipients", [PARTNER])
    event = ConsentChangedV1(
        territory=territory,
        record_id=record,
        seq=seq,
        subject_pseudonym=pseudonym(KEY, meter),
        purpose=RESEARCH,
        event="given" if active else "withdrawn",
        active=active,
        at=datetime.now(UTC),
        **extra,  # type: ignore[arg-type]
    )
    return Envelope(source="test", type=event.cloud_type(), data=event.to_data())


def snapshot(sets: ConsentSets, consumer: str = PARTNER) -> set[int]:
    attachment = sets.attachment(DIJON, RESEARCH)
    assert attachment is not None and attachment.alias == "consent_scientificresearch"
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{attachment.path}' AS c (READ_ONLY)")
        # The filter as the scans inject it, over every subject the snapshot knows.
        rows = 'SELECT s AS "__maillage_sh" FROM c.main.subjects'
        query = f'SELECT "__maillage_sh" FROM ({rows}) WHERE {consent_filter("c", consumer)}'
        return {row[0] for row in con.execute(query).fetchall()}
    finally:
        con.close()


def apply(sets: ConsentSets, database: Database, envelope: Envelope) -> None:
    with database.unit_of_work() as session:
        sets.apply(session, envelope)


def test_latest_event_wins_and_snapshots_follow(database: Database, tmp_path: Path) -> None:
    sets = ConsentSets(tmp_path, database, [DIJON])
    assert sets.attachment(DIJON, RESEARCH) is None and consent_filter(None, PARTNER) == "FALSE"
    apply(sets, database, change("r1", 1, True, "CPT-1"))
    apply(sets, database, change("r2", 1, True, "CPT-2"))
    assert snapshot(sets) == {pseudonym64(pseudonym(KEY, "CPT-1")), pseudonym64(pseudonym(KEY, "CPT-2"))}
    # A consent naming only another recipient counts for that one, not for the partner.
    apply(sets, database, change("r5", 1, True, "CPT-5", recipients=[OTHER]))
    assert pseudonym64(pseudonym(KEY, "CPT-5")) not in snapshot(sets)
    assert snapshot(sets, OTHER) == {pseudonym64(pseudonym(KEY, "CPT-5"))}
    apply(sets, database, change("r1", 2, False, "CPT-1"))
    apply(sets, database, change("r1", 1, True, "CPT-1"))  # a late redelivery of the older event: ignored
    assert snapshot(sets) == {pseudonym64(pseudonym(KEY, "CPT-2"))}
    apply(sets, database, change("r3", 1, True, "CPT-3", territory=BESANCON))  # not hosted here: ignored
    assert snapshot(sets) == {pseudonym64(pseudonym(KEY, "CPT-2"))}
    # Expired by its validity: still listed, filtered at query time by the time in the snapshot.
    past = datetime.now(UTC) - timedelta(seconds=1)
    apply(sets, database, change("r4", 1, True, "CPT-4", valid_until=past))
    assert snapshot(sets) == {pseudonym64(pseudonym(KEY, "CPT-2"))}
    # Files lost (a restored node): rebuilt from the database at start.
    for path in (tmp_path / "territories").rglob("*"):
        if path.is_file():
            path.unlink()
    assert sets.attachment(DIJON, RESEARCH) is None
    assert sets.rebuild_all() == 1 and snapshot(sets) == {pseudonym64(pseudonym(KEY, "CPT-2"))}
    assert len(list(sets.directory(DIJON, RESEARCH).glob("v*.duckdb"))) <= 3
