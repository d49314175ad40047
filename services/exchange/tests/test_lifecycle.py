"""Erasure and retention on stored versions: new version without the rows, earlier versions destroyed, dry runs."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.datasets import Retention, TableSchema
from exchange.ingest import ingest
from exchange.lifecycle import cutoff, erase_subject, purge_expired, remove_rows, subject_rows
from exchange.storage import Storage
from kit.pseudonyms import pseudonym, territory_key

SIREN = "242100410"
SLUG = "consommation-eau-menages"
SECRET = "lifecycle test pseudonym secret, not a real one"
SCHEMA = TableSchema.model_validate(
    {
        "fields": [
            {"name": "meter_id", "type": "string", "personal": True, "identifier": True, "subject_key": True},
            {"name": "commune_insee", "type": "string"},
            {"name": "month", "type": "date"},
            {"name": "volume_m3", "type": "number"},
        ]
    }
)
CSV = (
    "meter_id,commune_insee,month,volume_m3\n"
    "M-1,21231,2018-01-01,1\nM-1,21231,2024-01-01,2\nM-2,21231,2024-01-01,3\nM-2,21231,2024-02-01,4\n"
)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    store = Storage(tmp_path / "data", pseudonym_secret=SECRET)
    report = ingest(store, SIREN, SLUG, SCHEMA, io.BytesIO(CSV.encode()), mode="replace")
    assert report.valid, report.errors
    return store


def subject(meter: str) -> str:
    return pseudonym(territory_key(SECRET, SIREN), meter)


def test_cutoff_counts_calendar_months_and_clamps_the_day() -> None:
    assert cutoff(Retention(period="P1M", time_column="month"), datetime(2026, 3, 31, tzinfo=UTC)) == datetime(
        2026, 2, 28, tzinfo=UTC
    )
    assert cutoff(Retention(period="P5Y", time_column="month"), datetime(2028, 2, 29, tzinfo=UTC)) == datetime(
        2023, 2, 28, tzinfo=UTC
    )
    assert cutoff(Retention(period="P2W", time_column="month"), datetime(2026, 1, 10, tzinfo=UTC)) == datetime(
        2025, 12, 27, tzinfo=UTC
    )


def test_erasure_writes_a_version_without_the_subject_and_destroys_the_earlier_ones(storage: Storage) -> None:
    ingest(
        storage, SIREN, SLUG, SCHEMA, io.BytesIO(b"meter_id,commune_insee,month,volume_m3\nM-3,21166,2024-03-01,5\n")
    )
    first = storage.current(SIREN, SLUG)
    assert first is not None and first.version == 2 and first.rows == 5
    rows, total = subject_rows(storage, SIREN, SLUG, subject("M-2"))
    assert total == 2 and {r["meter_id"] for r in rows} == {"M-2"} and "__maillage_sh" not in rows[0]
    [removal] = erase_subject(storage, SIREN, subject("M-2"), [SLUG])
    assert (removal.rows_before, removal.rows_removed, removal.version) == (5, 2, 3)
    assert removal.destroyed_versions == [2]  # v1 was already pruned by the usual policy (two versions kept)
    current = storage.current(SIREN, SLUG)
    assert current is not None and current.rows == 3 and storage.versions(SIREN, SLUG) == [3]
    assert subject_rows(storage, SIREN, SLUG, subject("M-2")) == ([], 0)
    assert current.subject_rows_max == 2  # still an upper bound
    # Erasing again finds nothing and writes nothing.
    assert erase_subject(storage, SIREN, subject("M-2"), [SLUG])[0].rows_removed == 0
    assert storage.versions(SIREN, SLUG) == [3]


def test_retention_dry_run_then_purge(storage: Storage) -> None:
    retention = Retention(period="P5Y", time_column="month")
    now = datetime(2026, 11, 29, tzinfo=UTC)
    dry, limit = purge_expired(storage, SIREN, SLUG, retention, now, dry_run=True)
    assert limit == datetime(2021, 11, 29, tzinfo=UTC) and dry.rows_removed == 1 and dry.version is None
    assert storage.current(SIREN, SLUG).rows == 4  # type: ignore[union-attr]
    done, _ = purge_expired(storage, SIREN, SLUG, retention, now)
    assert done.rows_removed == 1 and storage.current(SIREN, SLUG).rows == 3  # type: ignore[union-attr]


def test_a_failed_removal_leaves_the_current_version_intact(storage: Storage) -> None:
    before = storage.current(SIREN, SLUG)
    with pytest.raises(Exception, match="no_such_column"):
        remove_rows(storage, SIREN, SLUG, '"no_such_column" = ?', [1])
    assert storage.current(SIREN, SLUG) == before and storage.versions(SIREN, SLUG) == [1]
