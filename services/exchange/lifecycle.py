"""Destroying what may no longer be kept: rows of a data subject (erasure) and rows past their retention period.

Both write a new version of the dataset without the rows (the same atomic switch as ingestion: a failure leaves the
current version intact), then destroy every earlier version, whose files still hold them. A query that opened an
earlier version just before finishes on its open file; none starts on it afterwards.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb

from contracts.datasets import Retention, parse_iso_duration
from exchange.policy.scans import SUBJECT_HASH_COLUMN, SUBJECT_HASH_VERSION
from exchange.storage import DatasetVersion, Storage, version_numbers
from kit.pseudonyms import pseudonym64

__all__ = ["Removal", "cutoff", "erase_subject", "purge_expired", "remove_rows", "subject_rows"]


@dataclass
class Removal:
    """What a removal did (or, in a dry run, would do) to one dataset."""

    dataset: str
    rows_before: int
    rows_removed: int
    version: int | None = None  # the new version (None: nothing removed, or a dry run)
    destroyed_versions: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows_before": self.rows_before,
            "rows_removed": self.rows_removed,
            "version": self.version,
            "destroyed_versions": self.destroyed_versions or [],
        }


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def remove_rows(
    storage: Storage, siren: str, slug: str, where: str, params: list[Any], *, dry_run: bool = False
) -> Removal:
    """Write a version of ``slug`` without the rows matching ``where`` (trusted SQL over the stored table, hidden
    columns included, ``?`` parameters), then destroy the earlier versions."""
    with storage.writer(siren, slug) as writer:
        previous = writer.previous
        if previous is None:
            return Removal(slug, 0, 0)
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET temp_directory = '{writer.scratch / 'spill'}'")
            con.execute(f"ATTACH '{previous.duckdb_path}' AS prev (READ_ONLY)")
            matching = con.execute(f"SELECT count(*) FROM prev.rows WHERE {where}", params).fetchone()
            removed = int(matching[0]) if matching else 0
            if dry_run or removed == 0:
                return Removal(slug, previous.rows, removed)
            con.execute(f"ATTACH '{writer.duckdb_path}' AS out")
            con.execute(f"CREATE TABLE out.rows AS SELECT * FROM prev.rows WHERE ({where}) IS NOT TRUE", params)
            columns = [row[0] for row in con.execute("DESCRIBE out.rows").fetchall()]
            exported = ", ".join(_quoted(c) for c in columns if not c.startswith("__maillage_"))
            con.execute(
                f"COPY (SELECT {exported} FROM out.rows) TO '{writer.parquet_path}' (FORMAT parquet, COMPRESSION zstd)"
            )
            count = con.execute("SELECT count(*) FROM out.rows").fetchone()
            rows = int(count[0]) if count else 0
        finally:
            con.close()
        # Fewer rows cannot make one subject hold more: the previous statistics stay valid upper bounds.
        writer.subject_hash = previous.subject_hash
        writer.subject_rows_max = previous.subject_rows_max
        writer.subjects = previous.subjects
        version = writer.commit(rows=rows, schema=previous.schema())
    destroyed = _destroy_older(storage, siren, slug, version)
    return Removal(slug, previous.rows, removed, version.version, destroyed)


def _destroy_older(storage: Storage, siren: str, slug: str, current: DatasetVersion) -> list[int]:
    directory = storage.dataset_dir(siren, slug)
    destroyed = []
    for number in sorted(version_numbers(directory)):
        if number < current.version:
            shutil.rmtree(directory / f"v{number}", ignore_errors=True)
            destroyed.append(number)
    return destroyed


def erase_subject(storage: Storage, siren: str, subject_pseudonym: str, slugs: list[str]) -> list[Removal]:
    """Delete every row about the subject from each dataset of ``slugs`` whose stored version carries the keyed
    subject hash (others are reported with ``rows_removed = -1``: re-ingest them, then erase again)."""
    value = pseudonym64(subject_pseudonym)
    removals = []
    for slug in slugs:
        current = storage.current(siren, slug)
        if current is None:
            continue
        if current.subject_hash != SUBJECT_HASH_VERSION:
            removals.append(Removal(slug, current.rows, -1))
            continue
        removals.append(remove_rows(storage, siren, slug, f"{_quoted(SUBJECT_HASH_COLUMN)} = ?", [value]))
    return removals


def subject_rows(
    storage: Storage, siren: str, slug: str, subject_pseudonym: str, offset: int = 0, limit: int = 1000
) -> tuple[list[dict[str, Any]], int]:
    """One page of the subject's rows of ``slug`` (hidden columns left out, values as JSON text), and the total."""
    current = storage.current(siren, slug)
    if current is None or current.subject_hash != SUBJECT_HASH_VERSION:
        return [], 0
    value = pseudonym64(subject_pseudonym)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"ATTACH '{current.duckdb_path}' AS d (READ_ONLY)")
        where = f"{_quoted(SUBJECT_HASH_COLUMN)} = ?"
        total_row = con.execute(f"SELECT count(*) FROM d.rows WHERE {where}", [value]).fetchone()
        total = int(total_row[0]) if total_row else 0
        relation = con.execute(
            f"SELECT * EXCLUDE ({_quoted(SUBJECT_HASH_COLUMN)}) FROM d.rows WHERE {where} "
            f"ORDER BY ALL LIMIT {int(limit)} OFFSET {int(offset)}",
            [value],
        )
        names = [d[0] for d in relation.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in relation.fetchall()]
    finally:
        con.close()
    return json.loads(json.dumps(rows, default=str)), total


def cutoff(retention: Retention, now: datetime) -> datetime:
    """The moment before which rows have outlived ``retention`` (calendar years and months, then days)."""
    years, months, days = parse_iso_duration(retention.period)
    month_index = now.year * 12 + (now.month - 1) - (years * 12 + months)
    year, month = divmod(month_index, 12)
    day = min(now.day, _days_in(year, month + 1))
    return now.replace(year=year, month=month + 1, day=day) - timedelta(days=days)


def _days_in(year: int, month: int) -> int:
    following = datetime(year + (month == 12), month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


def purge_expired(
    storage: Storage, siren: str, slug: str, retention: Retention, now: datetime, *, dry_run: bool = False
) -> tuple[Removal, datetime]:
    """Remove the rows whose ``time_column`` is before the retention cutoff (rows without a time are kept)."""
    limit = cutoff(retention, now)
    where = f"TRY_CAST({_quoted(retention.time_column)} AS TIMESTAMPTZ) < ?"
    return remove_rows(storage, siren, slug, where, [limit], dry_run=dry_run), limit
