"""Consented subjects per territory and purpose, from the consent service's events, as the query workers read them.

The consumer keeps one row per consent record (the highest event ``seq`` wins, so a late redelivery cannot undo a
withdrawal). After each commit it rewrites the snapshot of the (territory, purpose) it touched: an immutable DuckDB
file ``<data_dir>/territories/<siren>/consent/<purpose>/v<N>.duckdb`` with table ``subjects(s UBIGINT, valid_until
TIMESTAMPTZ, recipients VARCHAR[])`` — the 64-bit pseudonyms of the subjects whose consent is active, with the
recipients it names — named by ``current.json``. A query under a consent-based grant attaches the current snapshot
and gets, in every scan of the dataset, the filter::

    "__maillage_sh" IN (SELECT s FROM consent_<purpose>.main.subjects
                        WHERE (valid_until IS NULL OR valid_until > current_timestamp)
                          AND list_contains(recipients, '<the grant's consumer>'))

so a withdrawal applies to the first query after the event is processed (the snapshot is rewritten right after the
event's transaction commits, before the event is acknowledged), and an expiry at its exact time even
before the consent service's sweep. No snapshot yet (no consent ever given): the filter is FALSE.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, select

from contracts import subjects as subject_names
from contracts.envelope import Envelope
from contracts.events import ConsentChangedV1
from exchange.sandbox import Attachment
from kit.consumer import DurableConsumer
from kit.db import Database, as_utc, on_commit
from kit.errors import ServiceUnavailable
from kit.messaging import Messaging
from kit.pseudonyms import pseudonym64

__all__ = ["ConsentSets", "ConsentedSubject", "consent_filter"]

log = logging.getLogger(__name__)
POINTER = "current.json"
KEEP = 3  # snapshot files kept (a worker may still read the previous one)


class ConsentedSubject(SQLModel, table=True):
    """The latest state of one consent record, as the exchange applies it."""

    __tablename__ = "exchange_consent"

    record_id: str = Field(primary_key=True, max_length=64)
    territory: str = Field(max_length=9, index=True)
    purpose: str = Field(max_length=200, index=True)
    subject: str = Field(max_length=64)
    active: bool
    valid_until: datetime | None = None
    seq: int
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))


def consent_filter(alias: str | None, consumer: str) -> str:
    """The trusted predicate injected in every scan of a dataset read under a consent-based grant: subjects whose
    consent is in force and names ``consumer`` (a validated SIREN or SIRET) among its recipients."""
    if alias is None or not consumer.isdigit():
        return "FALSE"
    return (
        f'"__maillage_sh" IN (SELECT s FROM {alias}.main.subjects '
        f"WHERE (valid_until IS NULL OR valid_until > current_timestamp) AND list_contains(recipients, '{consumer}'))"
    )


class ConsentSets:
    """The consented subjects of the territories hosted here, per purpose, and their snapshots for the workers."""

    def __init__(self, root: Path, database: Database, territories: list[str]) -> None:
        self.root = Path(root)
        self.database = database
        self.territories = set(territories)
        self._lock = threading.RLock()
        self._stale: set[tuple[str, str]] = set()  # changed in the database, snapshot not rewritten yet
        self.rebuilt = 0  # snapshots written (for tests and metrics)

    # -- the consumer -----------------------------------------------------------------------------------------

    def consumer(self, messaging: Messaging, durable: str) -> DurableConsumer:
        return DurableConsumer(
            database=self.database,
            messaging=messaging,
            stream="CONSENT",
            durable=durable,
            filter_subject="consent.record.changed.>",
            handler=self.apply,
        )

    def apply(self, session: Session, envelope: Envelope) -> None:
        """Apply one consent event (other territories' and older events are ignored)."""
        if envelope.type != ConsentChangedV1.cloud_type():
            return
        event = ConsentChangedV1.model_validate(envelope.data)
        if event.territory not in self.territories:
            return
        row = session.get(ConsentedSubject, event.record_id)
        if row is not None and row.seq >= event.seq:
            return
        row = row or ConsentedSubject(
            record_id=event.record_id,
            territory=event.territory,
            purpose=event.purpose,
            subject=event.subject_pseudonym,
            active=event.active,
            seq=event.seq,
        )
        row.subject, row.active, row.seq = event.subject_pseudonym, event.active, event.seq
        row.valid_until, row.recipients = event.valid_until, list(event.recipients)
        session.add(row)
        # After the commit (the database's write lock is not held while the file is written), before the consumer
        # acknowledges the event. A failed rebuild marks the pair stale: queries then rebuild or refuse.
        pair = (event.territory, event.purpose)
        with self._lock:
            self._stale.add(pair)
        on_commit(session, lambda: self._refresh(*pair))

    # -- snapshots --------------------------------------------------------------------------------------------

    def directory(self, territory: str, purpose: str) -> Path:
        return self.root / "territories" / territory / "consent" / subject_names.purpose_token(purpose)

    def rebuild_all(self) -> int:
        """Rewrite every snapshot from the database (at start: files may be missing or older)."""
        with self.database.session() as session:
            pairs = {(row.territory, row.purpose) for row in session.exec(select(ConsentedSubject)).all()}
        for territory, purpose in sorted(pairs):
            self.rebuild(territory, purpose)
        return len(pairs)

    def _refresh(self, territory: str, purpose: str) -> None:
        try:
            self.rebuild(territory, purpose)
        except Exception:  # noqa: BLE001 - stays stale: the next query rebuilds it or refuses
            log.exception("consent snapshot of %s could not be rewritten", territory)

    def rebuild(self, territory: str, purpose: str) -> None:
        """Write a new snapshot of (territory, purpose) from the database and switch the pointer to it."""
        with self._lock:
            with self.database.session() as session:
                rows = self._active(session, territory, purpose)
            directory = self.directory(territory, purpose)
            directory.mkdir(parents=True, exist_ok=True)
            current = self._pointer(directory)
            number = (current or 0) + 1
            path = directory / f"v{number}.duckdb"
            tmp = directory / f".v{number}.tmp.duckdb"
            tmp.unlink(missing_ok=True)
            table = pa.table(
                {
                    "s": pa.array([pseudonym64(s) for s, _, _ in rows], type=pa.uint64()),
                    "valid_until": pa.array(
                        [as_utc(v) if v is not None else None for _, v, _ in rows], type=pa.timestamp("us", tz="UTC")
                    ),
                    "recipients": pa.array([r for _, _, r in rows], type=pa.list_(pa.string())),
                }
            )
            con = duckdb.connect(str(tmp))
            try:
                con.register("snapshot", table)
                con.execute("CREATE TABLE subjects AS SELECT s, valid_until, recipients FROM snapshot")
            finally:
                con.close()
            os.replace(tmp, path)
            pointer = directory / f".{POINTER}.tmp"
            pointer.write_text(json.dumps({"version": number, "subjects": len(rows)}))
            os.replace(pointer, directory / POINTER)
            self.rebuilt += 1
            self._stale.discard((territory, purpose))
            for old in directory.glob("v*.duckdb"):
                stem = old.stem[1:]
                if stem.isdigit() and int(stem) <= number - KEEP:
                    old.unlink(missing_ok=True)

    @staticmethod
    def _active(session: Session, territory: str, purpose: str) -> list[tuple[str, datetime | None, list[str]]]:
        found = session.exec(
            select(ConsentedSubject).where(
                ConsentedSubject.territory == territory,
                ConsentedSubject.purpose == purpose,
                ConsentedSubject.active == True,  # noqa: E712 - SQL
            )
        ).all()
        return [(row.subject, row.valid_until, list(row.recipients or [])) for row in found]

    def attachment(self, territory: str, purpose: str) -> Attachment | None:
        """The current snapshot of (territory, purpose) to attach to a query, or None when there is none.

        A snapshot behind the database (its rewrite failed) is rewritten first; if that fails too, the query is
        refused rather than computed on a withdrawn subject."""
        if (territory, purpose) in self._stale:
            try:
                self.rebuild(territory, purpose)
            except Exception as exc:
                raise ServiceUnavailable(
                    "the consented subjects cannot be brought up to date right now; refusing (fail closed)",
                    code="policy.consent_stale",
                ) from exc
        directory = self.directory(territory, purpose)
        number = self._pointer(directory)
        if number is None:
            return None
        alias = f"consent_{subject_names.purpose_token(purpose)}"
        return Attachment(alias=alias, path=(directory / f"v{number}.duckdb").resolve(), version=str(number))

    @staticmethod
    def _pointer(directory: Path) -> int | None:
        try:
            return int(json.loads((directory / POINTER).read_text())["version"])
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return None
