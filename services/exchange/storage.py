"""Per-territory dataset storage: immutable versions (Parquet + DuckDB) behind an atomically replaced pointer.

Layout under the exchange's data dir::

    territories/<siren>/datasets/<slug>/
        v<N>/data.parquet        canonical, exportable form
        v<N>/data.duckdb         one table ``rows``: what sandboxed query workers attach READ_ONLY
        v<N>/schema.json         the Table Schema the version was validated against
        v<N>/ingest-state.json   optional: what streaming ingestion already committed (message ids)
        current.json             {"version": N, "rows": ..., "parquet_sha256": ...}, replaced with os.replace
        .lock                    serialises writers (flock; released by the kernel if a writer dies)
        .tmp-<hex>/              a version being written; left by a killed writer, removed by the next one
        .tmp-<hex>-scratch/      that writer's uploads, transcoded copies and DuckDB spill files

A version directory is complete before it gets its ``v<N>`` name, and ``current.json`` names it only afterwards, so a
reader that follows the pointer always finds whole, never-changing files. Paths are built only from identifiers that
passed :mod:`contracts.identifiers`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from contracts.datasets import TableSchema
from contracts.identifiers import SubjectTokenError, validate_siren, validate_slug
from kit.errors import BadRequest, Conflict
from kit.pseudonyms import DEVELOPMENT_SECRET, territory_key

__all__ = [
    "POINTER_FILE",
    "DatasetVersion",
    "Storage",
    "StorageError",
    "VersionWriter",
    "export_csv",
    "schema_hash",
]

POINTER_FILE = "current.json"
PARQUET_FILE = "data.parquet"
DUCKDB_FILE = "data.duckdb"
SCHEMA_FILE = "schema.json"
STATE_FILE = "ingest-state.json"
_LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"v([1-9][0-9]{0,8})")
# Keys of a field that decide what a valid row is; titles and descriptions may change without a new data layout.
_DATA_KEYS = ("name", "type", "format", "constraints")


class StorageError(RuntimeError):
    """The storage on disk is not in the state this code writes (a hand edit, a foreign file)."""


def schema_hash(schema: TableSchema) -> str:
    """SHA-256 of what in ``schema`` decides row validity (fields' names, types, formats, constraints, keys)."""
    document = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
    relevant = {
        "fields": [{key: field[key] for key in _DATA_KEYS if key in field} for field in document["fields"]],
        "primaryKey": document.get("primaryKey"),
        "missingValues": document.get("missingValues"),
    }
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable, committed version of a dataset, as described by its ``current.json`` pointer."""

    siren: str
    slug: str
    version: int
    rows: int
    parquet_bytes: int
    duckdb_bytes: int
    parquet_sha256: str
    schema_hash: str
    created_at: datetime
    directory: Path
    # data.duckdb's table ``rows`` holds the hidden subject hash column, computed as this definition says
    # (exchange.policy.scans.SUBJECT_HASH_VERSION); None: it does not (older versions, no subject_key).
    subject_hash: str | None = None
    # With subject_hash: the most rows any one hash value holds in ``rows`` (an upper bound after deletions). The k
    # check divides a group's row count by it for a free lower bound of its distinct subjects (exchange.policy).
    subject_rows_max: int | None = None
    subjects: int | None = None  # and how many distinct hash values it holds

    @property
    def parquet_path(self) -> Path:
        return self.directory / PARQUET_FILE

    @property
    def duckdb_path(self) -> Path:
        return self.directory / DUCKDB_FILE

    @property
    def schema_path(self) -> Path:
        return self.directory / SCHEMA_FILE

    def schema(self) -> TableSchema:
        """The Table Schema this version was validated against."""
        return TableSchema.model_validate_json(self.schema_path.read_bytes())

    def ingest_state(self) -> dict[str, Any]:
        """What streaming ingestion recorded with this version (empty when nothing was)."""
        path = self.directory / STATE_FILE
        if not path.exists():
            return {}
        state = json.loads(path.read_bytes())
        return state if isinstance(state, dict) else {}

    def pointer(self) -> dict[str, Any]:
        """The JSON document of ``current.json`` naming this version."""
        return {
            "version": self.version,
            "rows": self.rows,
            "parquet_bytes": self.parquet_bytes,
            "duckdb_bytes": self.duckdb_bytes,
            "parquet_sha256": self.parquet_sha256,
            "schema_hash": self.schema_hash,
            "created_at": self.created_at.isoformat(),
            **({"subject_hash": self.subject_hash} if self.subject_hash is not None else {}),
            **({"subject_rows_max": self.subject_rows_max} if self.subject_rows_max is not None else {}),
            **({"subjects": self.subjects} if self.subjects is not None else {}),
        }


def _optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"not a positive count: {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, not {type(value).__name__}")


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Storage:
    """The datasets of every territory hosted by this exchange, under ``root``.

    ``keep_versions``: after each commit, versions older than the ``keep_versions`` most recent are removed
    (``None`` keeps everything). At least two are kept, so a reader that opened the previous version just before a
    switch finishes its work.
    """

    def __init__(
        self, root: Path, *, keep_versions: int | None = 2, pseudonym_secret: str | bytes = DEVELOPMENT_SECRET
    ) -> None:
        if keep_versions is not None and keep_versions < 2:
            raise ValueError("keep_versions must be at least 2 (the current version and the previous one)")
        self.root = Path(root)
        self._pseudonym_secret = pseudonym_secret
        self.keep_versions = keep_versions

    # -- paths ---------------------------------------------------------------------------------------------------

    def territory_dir(self, siren: str) -> Path:
        """``<root>/territories/<siren>``, the SIREN validated first."""
        try:
            return self.root / "territories" / validate_siren(siren)
        except SubjectTokenError as exc:
            raise BadRequest(str(exc), code="territory.invalid_siren") from None

    def dataset_dir(self, siren: str, slug: str) -> Path:
        """``<root>/territories/<siren>/datasets/<slug>``, both identifiers validated first."""
        territory = self.territory_dir(siren)
        try:
            return territory / "datasets" / validate_slug(slug)
        except SubjectTokenError as exc:
            raise BadRequest(str(exc), code="dataset.invalid_slug") from None

    # -- reading -------------------------------------------------------------------------------------------------

    def current(self, siren: str, slug: str) -> DatasetVersion | None:
        """The committed version readers should use, or None when the dataset has no data yet."""
        directory = self.dataset_dir(siren, slug)
        try:
            raw = (directory / POINTER_FILE).read_bytes()
        except FileNotFoundError:
            return None
        try:
            pointer = json.loads(raw)
            number = int(pointer["version"])
            return DatasetVersion(
                siren=siren,
                slug=slug,
                version=number,
                rows=int(pointer["rows"]),
                parquet_bytes=int(pointer["parquet_bytes"]),
                duckdb_bytes=int(pointer["duckdb_bytes"]),
                parquet_sha256=str(pointer["parquet_sha256"]),
                schema_hash=str(pointer["schema_hash"]),
                created_at=datetime.fromisoformat(pointer["created_at"]),
                directory=directory / f"v{number}",
                subject_hash=_optional_str(pointer.get("subject_hash")),
                subject_rows_max=_optional_count(pointer.get("subject_rows_max")),
                subjects=_optional_count(pointer.get("subjects")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{directory / POINTER_FILE} is not a version pointer: {exc}") from exc

    def pseudonym_key(self, siren: str) -> bytes:
        """The pseudonymisation key of ``siren`` (kit.pseudonyms): ingestion hashes subjects with it."""
        return territory_key(self._pseudonym_secret, siren)

    def versions(self, siren: str, slug: str) -> list[int]:
        """Numbers of the version directories present on disk (committed or orphaned), ascending."""
        return sorted(version_numbers(self.dataset_dir(siren, slug)))

    def list_territories(self) -> list[str]:
        """SIRENs that have a directory here."""
        base = self.root / "territories"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and _is_siren(p.name))

    def list_datasets(self, siren: str) -> list[DatasetVersion]:
        """The current version of every dataset of ``siren`` that has data, by slug."""
        base = self.territory_dir(siren) / "datasets"
        if not base.is_dir():
            return []
        found = []
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and _is_slug(entry.name):
                version = self.current(siren, entry.name)
                if version is not None:
                    found.append(version)
        return found

    # -- writing -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, siren: str, slug: str, *, lock_timeout: float = 600.0) -> Iterator[VersionWriter]:
        """Hold the dataset's write lock and a fresh staging directory; commit it with :meth:`VersionWriter.commit`.

        Leaving the block without a commit (an exception, invalid data) removes the staging directory; a process
        killed inside the block leaves it behind, and the next writer removes it.
        """
        directory = self.dataset_dir(siren, slug)
        directory.mkdir(parents=True, exist_ok=True)
        with _flock(directory / _LOCK_FILE, lock_timeout):
            previous = self.current(siren, slug)
            _remove_leftovers(directory, previous.version if previous else 0)
            token = uuid.uuid4().hex
            staging = directory / f"{_TMP_PREFIX}{token}"
            scratch = directory / f"{_TMP_PREFIX}{token}-scratch"
            staging.mkdir()
            scratch.mkdir()
            writer = VersionWriter(self, siren, slug, directory, staging, previous, scratch)
            try:
                yield writer
            finally:
                for path in (staging, scratch):
                    if path.exists():
                        shutil.rmtree(path, ignore_errors=True)

    def remove_leftovers(self) -> list[Path]:
        """Remove what killed writers left in every dataset (run at start; the next ingest would do it too)."""
        removed: list[Path] = []
        for siren in self.list_territories():
            base = self.territory_dir(siren) / "datasets"
            for directory in sorted(base.iterdir()) if base.is_dir() else []:
                if not (directory.is_dir() and _is_slug(directory.name)):
                    continue
                try:
                    with _flock(directory / _LOCK_FILE, 0.0):
                        current = self.current(siren, directory.name)
                        removed.extend(_remove_leftovers(directory, current.version if current else 0))
                except Conflict:
                    continue  # a live writer: its leftovers are its own work in progress
        return removed

    def remove_old_versions(self, keep: int = 2, *, siren: str | None = None, slug: str | None = None) -> list[Path]:
        """Remove versions older than the ``keep`` most recent (never the current one nor the previous one).

        Scope: every dataset, one territory's, or one dataset. A dataset whose writer is busy is skipped (its
        writer cleans up after its own commit). Open files survive their removal on POSIX, so a query still
        reading a removed version finishes.
        """
        if keep < 2:
            raise ValueError("keep must be at least 2 (the current version and the previous one)")
        if slug is not None and siren is None:
            raise ValueError("a slug needs its territory")
        targets: list[tuple[str, str]] = []
        for territory in [siren] if siren is not None else self.list_territories():
            slugs = [slug] if slug is not None else [v.slug for v in self.list_datasets(territory)]
            targets.extend((territory, s) for s in slugs)
        removed: list[Path] = []
        for territory, dataset in targets:
            directory = self.dataset_dir(territory, dataset)
            try:
                with _flock(directory / _LOCK_FILE, 0.0):
                    removed.extend(self._prune(territory, dataset, keep))
            except Conflict:
                continue
        return removed

    def _prune(self, siren: str, slug: str, keep: int) -> list[Path]:
        current = self.current(siren, slug)
        if current is None:
            return []
        directory = self.dataset_dir(siren, slug)
        kept = sorted(n for n in version_numbers(directory) if n <= current.version)[-keep:]
        removed = []
        for number in version_numbers(directory):
            if number < current.version and number not in kept:
                path = directory / f"v{number}"
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed


class VersionWriter:
    """The staging directory of the next version of one dataset, under its write lock."""

    def __init__(
        self,
        storage: Storage,
        siren: str,
        slug: str,
        directory: Path,
        staging: Path,
        previous: DatasetVersion | None,
        scratch: Path,
    ) -> None:
        self.storage = storage
        self.scratch = scratch  # uploads, transcoded copies, DuckDB's spill files: never part of the version
        self.siren = siren
        self.slug = slug
        self.directory = directory
        self.staging = staging
        self.previous = previous
        # Orphans were removed before: a number is reused only when no reader could ever have seen it.
        self.version = max([previous.version if previous else 0, *version_numbers(directory)]) + 1
        self.committed: DatasetVersion | None = None
        self.subject_hash: str | None = None  # set by whoever writes the hidden subject hash column
        self.subject_rows_max: int | None = None  # and the most rows one hash value holds
        self.subjects: int | None = None  # and how many hash values there are

    @property
    def parquet_path(self) -> Path:
        return self.staging / PARQUET_FILE

    @property
    def duckdb_path(self) -> Path:
        return self.staging / DUCKDB_FILE

    def commit(self, *, rows: int, schema: TableSchema, state: dict[str, Any] | None = None) -> DatasetVersion:
        """Make the staged files the current version: fsync, rename to ``v<N>``, then replace the pointer."""
        if self.committed is not None:
            raise StorageError("this version is already committed")
        for name in (PARQUET_FILE, DUCKDB_FILE):
            if not (self.staging / name).is_file():
                raise StorageError(f"{name} was not written")
        (self.staging / SCHEMA_FILE).write_text(
            schema.model_dump_json(by_alias=True, exclude_none=True, indent=1), encoding="utf-8"
        )
        if state is None and self.previous is not None:
            # Streaming's record of committed messages outlives file ingests in between.
            state = self.previous.ingest_state() or None
        if state is not None:
            (self.staging / STATE_FILE).write_text(json.dumps(state, separators=(",", ":")), encoding="utf-8")
        for path in self.staging.iterdir():
            if path.is_file():
                _fsync_path(path)
                path.chmod(0o444)  # immutable from now on; query workers open these read-only
        _fsync_path(self.staging, directory=True)
        version = DatasetVersion(
            siren=self.siren,
            slug=self.slug,
            version=self.version,
            rows=rows,
            parquet_bytes=self.parquet_path.stat().st_size,
            duckdb_bytes=self.duckdb_path.stat().st_size,
            parquet_sha256=_sha256_file(self.parquet_path),
            schema_hash=schema_hash(schema),
            created_at=datetime.now(UTC),
            directory=self.directory / f"v{self.version}",
            subject_hash=self.subject_hash,
            subject_rows_max=self.subject_rows_max if self.subject_hash is not None else None,
            subjects=self.subjects if self.subject_hash is not None else None,
        )
        self._rename()
        self._publish(version)
        self.committed = version
        if self.storage.keep_versions is not None:
            self.storage._prune(self.siren, self.slug, self.storage.keep_versions)
        return version

    def _rename(self) -> None:
        os.rename(self.staging, self.directory / f"v{self.version}")
        _fsync_path(self.directory, directory=True)

    def _publish(self, version: DatasetVersion) -> None:
        tmp = self.directory / f"{POINTER_FILE}.{_TMP_PREFIX}{uuid.uuid4().hex}"
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(version.pointer(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / POINTER_FILE)
        _fsync_path(self.directory, directory=True)


def _is_siren(name: str) -> bool:
    try:
        validate_siren(name)
    except SubjectTokenError:
        return False
    return True


def _is_slug(name: str) -> bool:
    try:
        validate_slug(name)
    except SubjectTokenError:
        return False
    return True


def version_numbers(directory: Path) -> set[int]:
    if not directory.is_dir():
        return set()
    numbers = set()
    for entry in directory.iterdir():
        match = _VERSION_RE.fullmatch(entry.name)
        if match and entry.is_dir():
            numbers.add(int(match.group(1)))
    return numbers


def _remove_leftovers(directory: Path, current: int) -> list[Path]:
    """Remove what interrupted writers left: staging dirs, stray pointer temp files, versions never published."""
    removed = []
    for entry in directory.iterdir():
        if entry.name.startswith(_TMP_PREFIX) or entry.name.startswith(f"{POINTER_FILE}.{_TMP_PREFIX}"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    for number in version_numbers(directory):
        if number > current:
            # Renamed but the pointer never replaced: no reader ever saw it.
            shutil.rmtree(directory / f"v{number}", ignore_errors=True)
            removed.append(directory / f"v{number}")
    return removed


@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on ``path``; Conflict after ``timeout`` seconds (0: do not wait)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise Conflict(
                        "another ingestion of this dataset is in progress; retry later", code="ingest.busy"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _csv_text(name: str, duck_type: str) -> str:
    """SQL rendering a column as the text Table Schema reads back (ISO 8601 in UTC, 'NaN', 'INF', no '20.0')."""
    column = f'"{name}"'
    if duck_type == "TIMESTAMP WITH TIME ZONE":
        utc = f"({column} AT TIME ZONE 'UTC')"
        return (
            f"CASE WHEN microsecond({utc}) = 0 THEN strftime({utc}, '%Y-%m-%dT%H:%M:%SZ') "
            f"ELSE strftime({utc}, '%Y-%m-%dT%H:%M:%S.%fZ') END"
        )
    if duck_type == "DOUBLE":
        return (
            f"CASE WHEN isnan({column}) THEN 'NaN' WHEN isinf({column}) AND {column} > 0 THEN 'INF' "
            f"WHEN isinf({column}) THEN '-INF' WHEN {column} = trunc({column}) AND abs({column}) < 1e15 "
            f"THEN CAST(CAST({column} AS BIGINT) AS VARCHAR) ELSE CAST({column} AS VARCHAR) END"
        )
    return f"CAST({column} AS VARCHAR)"


def export_csv(version: DatasetVersion, *, chunk_size: int = 1 << 16, temp_dir: Path | None = None) -> Iterator[bytes]:
    """The version's rows as CSV (UTF-8, comma, header first), in chunks of bytes; reads the canonical Parquet."""
    # DuckDB writes the CSV (fast, quotes only when needed) to a file unlinked as soon as it is complete, so an
    # abandoned download leaks nothing on disk.
    with tempfile.TemporaryDirectory(prefix="maillage-export-", dir=temp_dir) as tmp:
        target = Path(tmp) / "export.csv"
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            source = "read_parquet('" + str(version.parquet_path).replace("'", "''") + "')"
            described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
            columns = ", ".join(f'{_csv_text(str(n), str(t))} AS "{n}"' for n, t, *_ in described)
            path = "'" + str(target).replace("'", "''") + "'"
            con.execute(f"COPY (SELECT {columns} FROM {source}) TO {path} (FORMAT csv, HEADER, DELIMITER ',')")
        finally:
            con.close()
        handle = target.open("rb")
        target.unlink()
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk
