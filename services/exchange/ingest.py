"""Validated, atomic ingestion of a dataset's rows (CSV, Parquet or in-memory records) into a new version.

Every row is checked against the dataset's Table Schema before anything becomes visible: types, constraints
(required, unique, minimum/maximum, minLength/maxLength, pattern, enum), the primary key, and the columns of the
header. Checks are DuckDB expressions evaluated over whole columns, not a Python loop per cell: the file is read
with DuckDB's parallel CSV/Parquet readers, every cell is parsed and checked in one pass, and only the first
:data:`MAX_ERRORS` problems are turned into messages, with their row and field. Cell values of fields flagged
``personal`` are never copied into a message.

The new version is written in a staging directory (Parquet, then the DuckDB file) and committed by
:class:`exchange.storage.VersionWriter`; a failure or a kill at any point leaves the previous version current.
"""

from __future__ import annotations

import codecs
import csv
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from contracts.datasets import SchemaField, TableSchema
from exchange.policy.scans import SUBJECT_HASH_COLUMN, SUBJECT_HASH_VERSION, subject_hash_sql
from exchange.storage import DatasetVersion, Storage, VersionWriter, schema_hash
from kit.errors import Conflict, Unprocessable

__all__ = [
    "MAX_ERRORS",
    "Duplicates",
    "FileFormat",
    "IngestError",
    "IngestReport",
    "Mode",
    "Progress",
    "StateUpdate",
    "TableIngestResult",
    "duckdb_type",
    "ingest",
    "ingest_table",
]

MAX_ERRORS = 100
Progress = Callable[[int], None]
"""Called with the number of source bytes just consumed (increments; their sum is the file size)."""
FileFormat = Literal["csv", "parquet"]
Mode = Literal["append", "replace"]
Duplicates = Literal["error", "skip"]
StateUpdate = Callable[["DatasetVersion | None", set[int]], dict[str, Any]]
"""(previous version, rejected groups) -> the state to record with the new version."""

_CHUNK = 1 << 20
_SNIFF_BYTES = 64 * 1024
_DELIMITERS = (",", ";", "\t")
_SHOWN_MAX = 60

# DuckDB type of each Table Schema type; what is not listed is kept as validated text.
_DUCK_TYPES = {
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMPTZ",
    "time": "TIME",
    "year": "INTEGER",
}
_TRUE_VALUES = ("true", "True", "TRUE", "1")
_FALSE_VALUES = ("false", "False", "FALSE", "0")
# Lexical forms of Table Schema's defaults; DuckDB's casts alone are more lenient ('1.5' casts to BIGINT 2).
_RE_INTEGER = r"[+-]?[0-9]+"
_RE_NUMBER = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|NaN|INF|-INF"
_GLOB_DATE = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
_GLOB_DATETIME = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*"
_RE_DATETIME_TAIL = r"^(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
_RE_TIME = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
_RE_YEAR = r"[0-9]{4}"
_RE_YEARMONTH = r"[0-9]{4}-(0[1-9]|1[0-2])"
_RE_DURATION = r"P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?(T([0-9]+H)?([0-9]+M)?([0-9]+(\.[0-9]+)?S)?)?"
_RE_GEOPOINT = r"\s*[+-]?[0-9]+(\.[0-9]+)?\s*,\s*[+-]?[0-9]+(\.[0-9]+)?\s*"
_RE_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s]+"
_RE_URI = r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+"
_RE_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_RE_BINARY = r"[A-Za-z0-9+/]*={0,2}"
# Source column types accepted as they are for a target type (no text round trip).
_NATIVE = {
    "integer": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"},
    "number": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "FLOAT", "DOUBLE", "UTINYINT", "USMALLINT", "UINTEGER"},
    "boolean": {"BOOLEAN"},
    "date": {"DATE"},
    "datetime": {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"},
    "time": {"TIME"},
    "year": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "USMALLINT"},
}


class IngestError(BaseModel):
    """One problem found in the data; CSV rows count the header as row 1, as spreadsheets do."""

    row: int | None = Field(description="row number (CSV: the header is row 1; Parquet and records: from 1)")
    field: str | None = Field(description="the field (or, for a key, the fields joined by commas)")
    code: str = Field(description="type-error, constraint-error, unique-error, primary-key, missing-label, ...")
    constraint: str | None = Field(default=None, description="for constraint-error: which constraint")
    message: str


class IngestReport(BaseModel):
    """What an ingestion did, or why it did nothing."""

    valid: bool
    territory: str
    dataset: str
    mode: Mode
    file_format: Literal["csv", "parquet", "records"]
    encoding: str | None = None
    delimiter: str | None = None
    bytes_read: int = 0
    rows_read: int = Field(default=0, description="data rows in the source")
    rows_added: int = Field(default=0, description="rows of the source now in the dataset")
    rows_skipped: int = Field(default=0, description="rows dropped as duplicates of existing or earlier rows")
    rows_rejected: int = Field(default=0, description="rows left out with their invalid group (records only)")
    rows_total: int | None = Field(default=None, description="rows in the new version")
    version: int | None = Field(default=None, description="the new version, when one was committed")
    previous_version: int | None = None
    parquet_sha256: str | None = None
    errors: list[IngestError] = Field(default_factory=list)
    error_count: int = 0
    truncated: bool = Field(default=False, description="more errors exist than listed")
    duration_seconds: float = 0.0

    def raise_for_errors(self) -> None:
        """Raise Unprocessable (422, ``ingest.invalid``) carrying this report when the data was refused."""
        if self.valid:
            return
        first = self.errors[0].message if self.errors else "invalid data"
        more = f" (and {self.error_count - 1} more)" if self.error_count > 1 else ""
        raise Unprocessable(
            f"the data was refused: {first}{more}",
            code="ingest.invalid",
            extra={"report": self.model_dump(mode="json")},
        )


@dataclass
class TableIngestResult:
    """The report of :func:`ingest_table`, plus every dropped group with its errors (``drop_invalid``)."""

    report: IngestReport
    rejected: dict[int, list[IngestError]] = field(default_factory=dict)


def duckdb_type(schema_field: SchemaField) -> str:
    """The DuckDB column type a field is stored as."""
    return _DUCK_TYPES.get(schema_field.type, "VARCHAR")


# -- public entry points ----------------------------------------------------------------------------------------


def ingest(
    storage: Storage,
    siren: str,
    slug: str,
    schema: TableSchema,
    source: Path | BinaryIO,
    *,
    file_format: FileFormat = "csv",
    mode: Mode = "append",
    progress: Progress | None = None,
    duplicates: Duplicates = "error",
    key: Sequence[str] | None = None,
    lock_timeout: float = 600.0,
) -> IngestReport:
    """Validate ``source`` against ``schema`` and, when every row passes, commit it as a new version.

    ``mode``: ``append`` keeps the previous version's rows, ``replace`` does not. ``duplicates``: ``error`` refuses
    rows that repeat a unique field or the primary key (in the file, or of existing rows on append); ``skip`` drops
    rows whose ``key`` (default: the primary key) is already present, keeping the first. Data problems come back
    in the report (``valid`` false, nothing changed); a concurrent ingestion past ``lock_timeout`` raises Conflict.
    """
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"unknown file format {file_format!r}")
    started = time.perf_counter()
    report = IngestReport(valid=False, territory=siren, dataset=slug, mode=mode, file_format=file_format)
    with storage.writer(siren, slug, lock_timeout=lock_timeout) as writer:
        previous = _previous_for(writer, schema, mode)
        report.previous_version = writer.previous.version if writer.previous else None
        con = _connect(writer.scratch)
        try:
            if file_format == "csv":
                staged = _stage_csv(source, writer.scratch, progress)
                report.encoding, report.bytes_read = staged.encoding, staged.size
                loaded = _load_csv(con, staged, schema)
                report.delimiter = loaded.delimiter
            else:
                path, size = _stage_binary(source, writer.scratch / "source.parquet", progress)
                report.bytes_read = size
                loaded = _load_parquet(con, path, schema)
            outcome = _commit_if_valid(con, writer, schema, loaded, previous, duplicates, key, drop_invalid=False)
        finally:
            con.close()
    return _finish(report, outcome, started)


def ingest_table(
    storage: Storage,
    siren: str,
    slug: str,
    schema: TableSchema,
    table: pa.Table,
    *,
    mode: Mode = "append",
    duplicates: Duplicates = "skip",
    key: Sequence[str] | None = None,
    groups: Sequence[int] | None = None,
    drop_invalid: bool = False,
    state: StateUpdate | None = None,
    lock_timeout: float = 600.0,
) -> TableIngestResult:
    """Validate and commit in-memory records (an Arrow table of the schema's fields, as text or native types).

    ``groups`` gives each row's group (e.g. the message it came from). With ``drop_invalid`` a group with any
    invalid row is left out whole and returned in ``rejected`` with all its errors, and the other groups are
    committed; without it any error refuses everything. ``state(previous, rejected_groups)`` returns what to record
    with the new version (streaming keeps the ids of the messages it committed there); it runs under the lock.
    """
    started = time.perf_counter()
    report = IngestReport(valid=False, territory=siren, dataset=slug, mode=mode, file_format="records")
    if groups is not None and len(groups) != table.num_rows:
        raise ValueError("groups must give one group per row")
    with storage.writer(siren, slug, lock_timeout=lock_timeout) as writer:
        previous = _previous_for(writer, schema, mode)
        report.previous_version = writer.previous.version if writer.previous else None
        con = _connect(writer.scratch)
        try:
            loaded = _load_records(con, table, schema, groups)
            outcome = _commit_if_valid(
                con, writer, schema, loaded, previous, duplicates, key, drop_invalid=drop_invalid, state=state
            )
        finally:
            con.close()
    return TableIngestResult(report=_finish(report, outcome, started), rejected=outcome.rejected)


# -- staging the source -----------------------------------------------------------------------------------------


@dataclass
class _Staged:
    path: Path
    encoding: str
    size: int
    sample: str


def _stage_csv(source: Path | BinaryIO, scratch: Path, progress: Progress | None) -> _Staged:
    """A UTF-8 file DuckDB can read: the source itself when it is UTF-8, else a transcoded copy in ``scratch``."""
    counter = _Counter(progress)
    if isinstance(source, Path):
        path, utf8, head = _check_utf8_file(source, counter)
    else:
        path, utf8, head = _copy_checking_utf8(source, scratch / "upload.csv", counter)
    if utf8:
        encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
        sample = head[:_SNIFF_BYTES].decode("utf-8", errors="ignore").lstrip("\ufeff")
        return _Staged(path=path, encoding=encoding, size=counter.total, sample=sample)
    # Not UTF-8: French spreadsheets export Windows-1252; bytes it leaves undefined only decode as Latin-1.
    target = scratch / "source.csv"
    # A UTF-8 byte order mark in front of Windows-1252 text (some exports add one whatever the encoding) is dropped.
    skip = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    encoding = "cp1252"
    try:
        _transcode(path, target, encoding, counter, skip)
    except UnicodeDecodeError:
        encoding = "latin-1"
        _transcode(path, target, encoding, counter, skip)
    if path.parent == scratch:
        path.unlink()
    with target.open("rb") as handle:
        sample = handle.read(_SNIFF_BYTES).decode("utf-8", errors="ignore")
    return _Staged(path=target, encoding=encoding, size=counter.total, sample=sample)


class _Counter:
    """Reports consumed bytes to ``progress`` once each, even when a file is read twice (transcoding)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.total = 0
        self._position = 0

    def reached(self, position: int) -> None:
        if position > self.total:
            if self.progress is not None:
                self.progress(position - self.total)
            self.total = position

    def add(self, count: int) -> None:
        self._position += count
        self.reached(self._position)


def _check_utf8_file(path: Path, counter: _Counter) -> tuple[Path, bool, bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    head = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            if len(head) < _SNIFF_BYTES:
                head += chunk[: _SNIFF_BYTES - len(head)]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return path, False, head
            counter.add(len(chunk))
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return path, False, head
    return path, True, head


def _copy_checking_utf8(source: BinaryIO, target: Path, counter: _Counter) -> tuple[Path, bool, bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    utf8 = True
    head = b""
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            if len(head) < _SNIFF_BYTES:
                head += chunk[: _SNIFF_BYTES - len(head)]
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
            out.write(chunk)
            counter.add(len(chunk))
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return target, utf8, head


def _transcode(source: Path, target: Path, encoding: str, counter: _Counter, skip: int = 0) -> None:
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    position = skip
    with source.open("rb") as handle, target.open("w", encoding="utf-8", newline="") as out:
        handle.seek(skip)
        while chunk := handle.read(_CHUNK):
            out.write(decoder.decode(chunk))
            position += len(chunk)
            counter.reached(position)
        out.write(decoder.decode(b"", final=True))


def _stage_binary(source: Path | BinaryIO, target: Path, progress: Progress | None) -> tuple[Path, int]:
    counter = _Counter(progress)
    if isinstance(source, Path):
        counter.add(source.stat().st_size)
        return source, counter.total
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
            counter.add(len(chunk))
    return target, counter.total


# -- loading into DuckDB ----------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """The source rows in table ``raw`` (rowid = data row index) and how schema fields map to its columns."""

    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # field -> (column identifier, type)
    first_row: int = 2
    rows: int = 0
    delimiter: str | None = None
    errors: list[IngestError] = field(default_factory=list)
    error_count: int = 0
    grouped: bool = False
    decimal_comma: bool = False
    empty_is_null: bool = False  # the reader already turned empty cells into NULL


def _connect(scratch: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    # Naive datetimes are read as UTC (Table Schema's default), whatever the machine's zone; big inputs spill here.
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {_str(str(scratch / 'duckdb-spill'))}")
    con.execute("SET preserve_insertion_order = true")
    return con


def _sniff_delimiter(sample: str, schema: TableSchema) -> tuple[str, list[str]]:
    """The delimiter whose header best matches the schema's field names (then: the most columns)."""
    names = {f.name for f in schema.fields}
    best: tuple[int, int, str, list[str]] | None = None
    for delimiter in _DELIMITERS:
        try:
            header = next(csv.reader(io.StringIO(sample), delimiter=delimiter), [])
        except csv.Error:
            continue
        score = (sum(1 for name in header if name in names), len(header))
        if best is None or score > best[:2]:
            best = (*score, delimiter, header)
    if best is None:
        return ",", []
    return best[2], best[3]


def _header_errors(header: list[str], schema: TableSchema, row: int | None) -> list[IngestError]:
    errors: list[IngestError] = []
    names = [f.name for f in schema.fields]
    seen: set[str] = set()
    where = f"row {row}: " if row is not None else ""
    for label in header:
        if label in seen:
            errors.append(
                IngestError(
                    row=row, field=label, code="duplicate-label", message=f"{where}column {label!r} appears twice"
                )
            )
        seen.add(label)
        if label not in names:
            errors.append(
                IngestError(
                    row=row,
                    field=_shown_label(label),
                    code="extra-label",
                    message=f"{where}column {_shown_label(label)!r} is not a field of the schema "
                    f"(fields: {', '.join(names)})",
                )
            )
    for name in names:
        if name not in seen:
            errors.append(
                IngestError(row=row, field=name, code="missing-label", message=f"{where}column {name!r} is missing")
            )
    return errors


def _load_csv(con: duckdb.DuckDBPyConnection, staged: _Staged, schema: TableSchema) -> _Loaded:
    loaded = _Loaded(first_row=2)
    if not staged.sample.strip():
        loaded.errors = [IngestError(row=None, field=None, code="source-error", message="the file is empty")]
        loaded.error_count = 1
        return loaded
    delimiter, header = _sniff_delimiter(staged.sample, schema)
    loaded.delimiter = delimiter
    # A ';' file comes from a French spreadsheet, whose decimal separator is the comma.
    loaded.decimal_comma = delimiter == ";"
    header_errors = _header_errors(header, schema, 1)
    if header_errors:
        loaded.errors, loaded.error_count = header_errors[:MAX_ERRORS], len(header_errors)
        return loaded
    positions = {label: index for index, label in enumerate(header)}
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header)))
    options = (
        f"auto_detect = false, header = true, delim = {_str(delimiter)}, quote = '\"', escape = '\"', "
        f"columns = {{{columns}}}, strict_mode = true{_nullstr(schema)}"
    )
    path = _str(str(staged.path))
    try:
        con.execute(f"CREATE TABLE raw AS SELECT * FROM read_csv({path}, {options})")
    except duckdb.Error:
        loaded.errors, loaded.error_count = _structural_errors(con, path, options, header)
        return loaded
    loaded.columns = {f.name: (f"c{positions[f.name]}", "VARCHAR") for f in schema.fields}
    # DuckDB's reader yields NULL for empty cells, quoted or not (nullstr '' and allow_quoted_nulls by default).
    loaded.empty_is_null = not schema.missing_values or schema.missing_values == [""]
    loaded.rows = _scalar_int(con, "SELECT count(*) FROM raw")
    return loaded


def _nullstr(schema: TableSchema) -> str:
    if schema.missing_values and schema.missing_values != [""]:
        return f", nullstr = [{', '.join(_str(v) for v in schema.missing_values)}]"
    return ""


_REJECT_MESSAGES = {
    "MISSING COLUMNS": "the row has fewer columns than the header",
    "TOO MANY COLUMNS": "the row has more columns than the header",
    "UNQUOTED VALUE": "a quote is not closed, or a value has a quote inside without being quoted",
    "LINE SIZE OVER MAXIMUM": "the line is too long",
    "INVALID ENCODING": "the line is not valid text",
}


def _structural_errors(
    con: duckdb.DuckDBPyConnection, path: str, options: str, header: list[str]
) -> tuple[list[IngestError], int]:
    """Rows DuckDB's strict reader refused, with their line. The line itself is never shown: it holds values."""
    try:
        con.execute(
            # Materialised on purpose: a bare count(*) may skip the parsing that records the rejects.
            f"CREATE TEMP TABLE __kept AS SELECT * FROM read_csv({path}, {options}, ignore_errors = true, "
            "store_rejects = true, rejects_table = '__rejects', rejects_scan = '__rejects_scan')"
        )
        total = _scalar_int(con, "SELECT count(*) FROM __rejects")
        rows = con.execute(
            f"SELECT line, column_name, CAST(error_type AS VARCHAR) FROM __rejects ORDER BY line LIMIT {MAX_ERRORS}"
        ).fetchall()
    except duckdb.Error:
        total, rows = 0, []
    if total == 0:
        message = "the file could not be read as CSV (check the delimiter and the quotes)"
        return [IngestError(row=None, field=None, code="source-error", message=message)], 1
    errors = []
    for line, column_name, error_type in rows:
        index = int(column_name[1:]) if isinstance(column_name, str) and column_name[1:].isdigit() else -1
        label = header[index] if 0 <= index < len(header) else None
        what = _REJECT_MESSAGES.get(error_type, "the row could not be read")
        errors.append(IngestError(row=int(line), field=label, code="source-error", message=f"row {line}: {what}"))
    return errors, total


def _load_parquet(con: duckdb.DuckDBPyConnection, path: Path, schema: TableSchema) -> _Loaded:
    loaded = _Loaded(first_row=1)
    try:
        con.execute(f"CREATE TABLE raw AS SELECT * FROM read_parquet({_str(str(path))})")
    except duckdb.Error:
        message = "the file could not be read as Parquet"
        loaded.errors, loaded.error_count = [IngestError(row=None, field=None, code="source-error", message=message)], 1
        return loaded
    described = con.execute("DESCRIBE raw").fetchall()
    header = [str(row[0]) for row in described]
    errors = _header_errors(header, schema, None)
    lowered = [name.lower() for name in header]
    if not errors and len(set(lowered)) != len(lowered):
        # DuckDB resolves identifiers case-insensitively: 'Count' and 'count' could not be told apart.
        errors = [IngestError(row=None, field=None, code="duplicate-label", message="two columns differ only by case")]
    if errors:
        loaded.errors, loaded.error_count = errors[:MAX_ERRORS], len(errors)
        return loaded
    types = {str(row[0]): str(row[1]) for row in described}
    loaded.columns = {f.name: (f.name, types[f.name]) for f in schema.fields}
    loaded.rows = _scalar_int(con, "SELECT count(*) FROM raw")
    return loaded


def _load_records(
    con: duckdb.DuckDBPyConnection, table: pa.Table, schema: TableSchema, groups: Sequence[int] | None
) -> _Loaded:
    loaded = _Loaded(first_row=1)
    header = [name for name in table.column_names]
    errors = _header_errors(header, schema, None)
    if errors:
        loaded.errors, loaded.error_count = errors[:MAX_ERRORS], len(errors)
        return loaded
    renamed = table.rename_columns([f"c{i}" for i in range(table.num_columns)])
    if groups is not None:
        renamed = renamed.append_column("__group", pa.array(list(groups), type=pa.int64()))
        loaded.grouped = True
    con.register("__records", renamed)
    con.execute("CREATE TABLE raw AS SELECT * FROM __records")
    con.unregister("__records")
    positions = {name: index for index, name in enumerate(header)}
    types = {str(row[0]): str(row[1]) for row in con.execute("DESCRIBE raw").fetchall()}
    loaded.columns = {f.name: (f"c{positions[f.name]}", types[f"c{positions[f.name]}"]) for f in schema.fields}
    loaded.rows = table.num_rows
    return loaded


# -- checking ---------------------------------------------------------------------------------------------------


@dataclass
class _FieldSql:
    """SQL over table ``raw`` for one field: its text, its typed value, and its error code (NULL when fine)."""

    index: int
    field: SchemaField
    text: str
    typed: str
    error: str


@dataclass
class _Outcome:
    valid: bool = False
    rows_read: int = 0
    rows_added: int = 0
    rows_total: int | None = None
    errors: list[IngestError] = field(default_factory=list)
    error_count: int = 0
    version: DatasetVersion | None = None
    rejected: dict[int, list[IngestError]] = field(default_factory=dict)
    rows_rejected: int = 0


def _previous_for(writer: VersionWriter, schema: TableSchema, mode: Mode) -> DatasetVersion | None:
    if mode not in ("append", "replace"):
        raise ValueError(f"unknown mode {mode!r}")
    previous = writer.previous
    if mode == "replace" or previous is None:
        return None
    if previous.schema_hash != schema_hash(schema):
        raise Conflict(
            f"the dataset's schema changed since version {previous.version}: its rows were checked against another "
            "schema, so new rows cannot be appended to them; ingest the whole dataset with mode=replace",
            code="ingest.schema_changed",
        )
    return previous


def _commit_if_valid(
    con: duckdb.DuckDBPyConnection,
    writer: VersionWriter,
    schema: TableSchema,
    loaded: _Loaded,
    previous: DatasetVersion | None,
    duplicates: Duplicates,
    key: Sequence[str] | None,
    *,
    drop_invalid: bool,
    state: StateUpdate | None = None,
) -> _Outcome:
    outcome = _Outcome(rows_read=loaded.rows)
    if loaded.errors:
        outcome.errors, outcome.error_count = loaded.errors, loaded.error_count
        return outcome
    names = [f.name for f in schema.fields]
    dedup_key = list(key) if key is not None else list(schema.primary_key or [])
    unknown = [name for name in dedup_key if name not in names]
    if unknown:
        raise ValueError(f"key names {', '.join(unknown)}, which is not a field")
    if duplicates == "skip" and not dedup_key:
        raise ValueError("duplicates='skip' needs a key (the schema has no primary key)")
    checker = _Checker(con, schema, loaded, previous, skip_key=dedup_key if duplicates == "skip" else None)
    checker.build()
    errors, total, bad_rows = checker.collect(all_errors=drop_invalid)
    if errors and not drop_invalid:
        outcome.errors, outcome.error_count = errors, total
        return outcome
    if drop_invalid and errors:
        outcome.rejected = checker.reject_groups(errors, bad_rows)
        outcome.rows_rejected = _scalar_int(
            con, "SELECT count(*) FROM checked WHERE __group IN (SELECT __group FROM __rejected)"
        )
    added = checker.select_new_rows()
    if added == 0 and (previous is not None or drop_invalid):
        # Nothing new to append (all duplicates, rejected, or an empty file): the current version stays.
        outcome.valid = True
        outcome.version = writer.previous
        outcome.rows_total = writer.previous.rows if writer.previous else None
        return outcome
    checker.write(writer)
    total_rows = _scalar_int(con, "SELECT count(*) FROM __out.rows")
    con.execute("DETACH __out")
    recorded = state(writer.previous, set(outcome.rejected)) if state is not None else None
    outcome.version = writer.commit(rows=total_rows, schema=schema, state=recorded)
    outcome.valid = True
    outcome.rows_added = added
    outcome.rows_total = total_rows
    return outcome


class _Checker:
    """Builds table ``checked`` (row index, typed values, per-field error codes) and the uniqueness checks."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        schema: TableSchema,
        loaded: _Loaded,
        previous: DatasetVersion | None,
        *,
        skip_key: list[str] | None,
    ) -> None:
        self.con = con
        self.schema = schema
        self.loaded = loaded
        self.previous = previous
        self.skip_key = skip_key
        self.fields = [self._field_sql(i, f) for i, f in enumerate(schema.fields)]
        self.by_name = {f.field.name: f for f in self.fields}

    # SQL per field ---------------------------------------------------------------------------------------------

    def _field_sql(self, index: int, schema_field: SchemaField) -> _FieldSql:
        column, source_type = self.loaded.columns[schema_field.name]
        ref = f'raw."{column}"'
        kind = schema_field.type
        native = source_type in _NATIVE.get(kind, set())
        if source_type == "VARCHAR":
            text = self._missing(ref)
        else:
            text = f"CAST({ref} AS VARCHAR)"
        if native:
            typed = f"TRY_CAST({ref} AS {_DUCK_TYPES[kind]})"
            type_ok = f"{typed} IS NOT NULL"
            present = f"{ref} IS NOT NULL"
        else:
            typed, type_ok = self._parse(schema_field, text)
            present = f"{text} IS NOT NULL"
        checks = [(f"NOT ({type_ok})", "type")]
        checks += self._constraints(schema_field, text, typed)
        constraints = schema_field.constraints
        required = bool(constraints and constraints.required) or schema_field.name in (self.schema.primary_key or [])
        when_missing = "'required'" if required else "NULL"
        branches = " ".join(f"WHEN {condition} THEN '{code}'" for condition, code in checks)
        error = f"CASE WHEN NOT ({present}) THEN {when_missing} {branches} END"
        return _FieldSql(index=index, field=schema_field, text=text, typed=typed, error=error)

    def _missing(self, ref: str) -> str:
        values = self.schema.missing_values
        if values is None or values == [""]:
            return ref if self.loaded.empty_is_null else f"NULLIF({ref}, '')"
        if not values:
            return ref
        return f"CASE WHEN {ref} IN ({', '.join(_str(v) for v in values)}) THEN NULL ELSE {ref} END"

    def _parse(self, schema_field: SchemaField, text: str) -> tuple[str, str]:
        """(typed expression, condition true when the present text is a valid value) for a text source."""
        kind, fmt = schema_field.type, schema_field.format
        custom = fmt is not None and "%" in fmt
        lenient = fmt == "any"

        def matches(pattern: str) -> str:
            # An anchored regexp_matches runs two to three times faster than regexp_full_match in DuckDB.
            return f"regexp_matches({text}, {_str(f'^(?:{pattern})$')})"

        if kind == "integer":
            typed = f"TRY_CAST({text} AS BIGINT)"
            return typed, f"{matches(_RE_INTEGER)} AND {typed} IS NOT NULL"
        if kind == "number":
            source = f"replace({text}, ',', '.')" if self.loaded.decimal_comma else text
            typed = f"TRY_CAST({source} AS DOUBLE)"
            pattern = _RE_NUMBER.replace(r"(\.", r"([.,]") if self.loaded.decimal_comma else _RE_NUMBER
            return typed, f"{matches(pattern)} AND {typed} IS NOT NULL"
        if kind == "boolean":
            trues = ", ".join(_str(v) for v in _TRUE_VALUES)
            falses = ", ".join(_str(v) for v in _FALSE_VALUES)
            typed = f"CASE WHEN {text} IN ({trues}) THEN true WHEN {text} IN ({falses}) THEN false END"
            return typed, f"{typed} IS NOT NULL"
        if kind in ("date", "datetime", "time"):
            target = _DUCK_TYPES[kind]
            if custom:
                assert fmt is not None
                typed = f"CAST(try_strptime({text}, {_str(fmt)}) AS {target})"
                return typed, f"{typed} IS NOT NULL"
            typed = f"TRY_CAST({text} AS {target})"
            if lenient:
                return typed, f"{typed} IS NOT NULL"
            if kind == "datetime":
                # A GLOB on the fixed-width prefix and a regex on the short rest: half the cost of one regex.
                tail = f"regexp_matches(substr({text}, 17), {_str(_RE_DATETIME_TAIL)})"
                lexical = f"{text} GLOB {_str(_GLOB_DATETIME)} AND {tail}"
            elif kind == "date":
                lexical = f"{text} GLOB {_str(_GLOB_DATE)}"
            else:
                lexical = matches(_RE_TIME)
            return typed, f"{lexical} AND {typed} IS NOT NULL"
        if kind == "year":
            typed = f"TRY_CAST({text} AS INTEGER)"
            return typed, f"{matches(_RE_YEAR)} AND {typed} IS NOT NULL"
        if kind == "yearmonth":
            return text, matches(_RE_YEARMONTH)
        if kind == "duration":
            return text, f"{matches(_RE_DURATION)} AND {text} NOT IN ('P', 'PT') AND NOT suffix({text}, 'T')"
        if kind == "geopoint":
            if fmt in (None, "default"):
                return text, matches(_RE_GEOPOINT)
            return text, f"json_valid({text})"
        if kind in ("geojson", "object"):
            return text, f"json_valid({text}) AND json_type({text}) = 'OBJECT'"
        if kind == "array":
            return text, f"json_valid({text}) AND json_type({text}) = 'ARRAY'"
        if kind == "string":
            formats = {"email": _RE_EMAIL, "uri": _RE_URI, "uuid": _RE_UUID, "binary": _RE_BINARY}
            if fmt in formats:
                return text, matches(formats[fmt])
        return text, "true"

    def _constraints(self, schema_field: SchemaField, text: str, typed: str) -> list[tuple[str, str]]:
        constraints = schema_field.constraints
        if constraints is None:
            return []
        kind = schema_field.type
        checks: list[tuple[str, str]] = []
        ordered = kind in ("integer", "number", "date", "datetime", "time", "year", "yearmonth")
        if constraints.minimum is not None and ordered:
            checks.append((f"{typed} < {self._literal(schema_field, constraints.minimum)}", "minimum"))
        if constraints.maximum is not None and ordered:
            checks.append((f"{typed} > {self._literal(schema_field, constraints.maximum)}", "maximum"))
        measured = f"json_array_length({text})" if kind == "array" else f"length({text})"
        if constraints.min_length is not None:
            checks.append((f"{measured} < {int(constraints.min_length)}", "minLength"))
        if constraints.max_length is not None:
            checks.append((f"{measured} > {int(constraints.max_length)}", "maxLength"))
        if constraints.pattern is not None:
            self._check_pattern(schema_field.name, constraints.pattern)
            anchored = _str(f"^(?:{constraints.pattern})$")
            checks.append((f"NOT regexp_matches({text}, {anchored})", "pattern"))
        if constraints.enum is not None:
            if not constraints.enum:
                checks.append(("true", "enum"))
            else:
                values = ", ".join(self._literal(schema_field, v) for v in constraints.enum)
                checks.append((f"{typed} NOT IN ({values})", "enum"))
        return checks

    def _literal(self, schema_field: SchemaField, value: Any) -> str:
        """``value`` (from the schema) as an SQL constant of the field's type; Unprocessable when it is not one."""
        target = duckdb_type(schema_field)
        literal = _str(str(value).lower() if isinstance(value, bool) else str(value))
        expression = f"CAST({literal} AS {target})"
        try:
            ok = self.con.execute(f"SELECT TRY_CAST({literal} AS {target}) IS NOT NULL").fetchone()
        except duckdb.Error:
            ok = None
        if not ok or not ok[0]:
            raise Unprocessable(
                f"field {schema_field.name}: the schema's constraint value {value!r} is not a {schema_field.type}",
                code="schema.invalid",
            )
        return expression

    def _check_pattern(self, name: str, pattern: str) -> None:
        try:
            self.con.execute(f"SELECT regexp_full_match('', {_str(pattern)})")
        except duckdb.Error:
            raise Unprocessable(
                f"field {name}: the pattern uses a regular expression feature not supported here (RE2 syntax: no "
                "look-around, no back-references)",
                code="schema.unsupported_pattern",
            ) from None

    # building and collecting -----------------------------------------------------------------------------------

    def build(self) -> None:
        """View ``checked``: every cell parsed and checked, computed over whole columns when a query reads it.

        A view rather than a table: counting errors reads only the error columns, writing reads only the typed
        values, and no intermediate copy of the data is materialised.
        """
        parts = ["raw.rowid AS __row"]
        if self.loaded.grouped:
            parts.append("raw.__group AS __group")
        for f in self.fields:
            parts.append(f"{f.typed} AS __v{f.index}")
            parts.append(f"{f.error} AS __e{f.index}")
        self.con.execute(f"CREATE VIEW checked AS SELECT {', '.join(parts)} FROM raw")

    def _keys(self) -> list[tuple[list[str], str, bool]]:
        """(fields, error code, checked against existing rows) of every uniqueness rule to check as an error."""
        rules: list[tuple[list[str], str, bool]] = []
        primary = list(self.schema.primary_key or [])
        if primary and primary != self.skip_key:
            rules.append((primary, "primary-key", True))
        for f in self.schema.fields:
            if f.constraints and f.constraints.unique and [f.name] != self.skip_key and [f.name] != primary:
                rules.append(([f.name], "unique-error", True))
        return rules

    def _key_sql(self, names: list[str]) -> tuple[str, str]:
        columns = [f"__v{self.by_name[n].index}" for n in names]
        not_null = " AND ".join(f"{c} IS NOT NULL" for c in columns)
        return ", ".join(columns), not_null

    def _existing_match(self, names: list[str], alias: str = "checked") -> str:
        """SQL condition: the row's key is already in the previous version."""
        assert self.previous is not None
        on = " AND ".join(f'p."{n}" = {alias}.__v{self.by_name[n].index}' for n in names)
        return f"EXISTS (SELECT 1 FROM read_parquet({_str(str(self.previous.parquet_path))}) p WHERE {on})"

    def collect(self, *, all_errors: bool) -> tuple[list[IngestError], int, set[int]]:
        """The errors (the first MAX_ERRORS, or all), their total, and the indexes of rows with one."""
        limit = "" if all_errors else f"LIMIT {MAX_ERRORS + 1}"
        counts = self.con.execute(
            f"SELECT {', '.join(f'count(__e{f.index})' for f in self.fields)} FROM checked"
        ).fetchone()
        assert counts is not None
        total = sum(int(c) for c in counts)
        found: list[tuple[int, int, str, str | None]] = []  # (row index, order, code, constraint/detail)
        for f, count in zip(self.fields, counts, strict=True):
            if count:
                rows = self.con.execute(
                    f"SELECT __row, __e{f.index} FROM checked WHERE __e{f.index} IS NOT NULL ORDER BY __row {limit}"
                ).fetchall()
                found.extend((int(row), f.index, str(code), None) for row, code in rows)
        order = len(self.fields)
        for names, code, against_existing in self._keys():
            columns, not_null = self._key_sql(names)
            duplicated = _scalar_int(
                self.con,
                f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM checked WHERE {not_null} "
                f"GROUP BY {columns} HAVING count(*) > 1)",
            )
            if duplicated:
                total += duplicated
                rows = self.con.execute(
                    f"SELECT __row, first FROM (SELECT __row, min(__row) OVER (PARTITION BY {columns}) AS first "
                    f"FROM checked WHERE {not_null}) WHERE __row > first ORDER BY __row {limit}"
                ).fetchall()
                found.extend((int(row), order, code, f"first:{int(first)}") for row, first in rows)
            if against_existing and self.previous is not None:
                existing = f"SELECT __row FROM checked WHERE {not_null} AND {self._existing_match(names)}"
                clashes = _scalar_int(self.con, f"SELECT count(*) FROM ({existing})")
                if clashes:
                    total += clashes
                    rows = self.con.execute(f"{existing} ORDER BY __row {limit}").fetchall()
                    found.extend((int(row), order, code, "existing") for (row,) in rows)
            order += 1
        found.sort(key=lambda item: (item[0], item[1]))
        bad_rows = {item[0] for item in found}
        if not all_errors:
            found = found[:MAX_ERRORS]
        return self._messages(found), total, bad_rows

    def _messages(self, found: list[tuple[int, int, str, str | None]]) -> list[IngestError]:
        shown = self._values({(row, order) for row, order, _, _ in found if order < len(self.fields)})
        keys = self._keys()
        errors = []
        for row, order, code, detail in found:
            number = row + self.loaded.first_row
            if order < len(self.fields):
                f = self.fields[order]
                errors.append(_cell_error(number, f.field, code, shown.get((row, order))))
                continue
            names, rule, _ = keys[order - len(self.fields)]
            label = ", ".join(names)
            if detail == "existing":
                assert self.previous is not None
                what = f"is already present in version {self.previous.version} of the dataset"
            else:
                what = f"repeats row {int((detail or 'first:0').split(':')[1]) + self.loaded.first_row}"
            kind = "primary key" if rule == "primary-key" else "unique value"
            errors.append(
                IngestError(
                    row=number,
                    field=label,
                    code=rule,
                    constraint="unique" if rule == "unique-error" else None,
                    message=f"row {number}, {'fields' if len(names) > 1 else 'field'} {label}: the {kind} {what}",
                )
            )
        return errors

    def _values(self, cells: set[tuple[int, int]]) -> dict[tuple[int, int], str | None]:
        """The source text of erroneous cells of non-personal fields, to quote them in messages."""
        wanted: dict[int, set[int]] = {}
        for row, order in cells:
            if not self.fields[order].field.personal:
                wanted.setdefault(order, set()).add(row)
        shown: dict[tuple[int, int], str | None] = {}
        for order, rows in wanted.items():
            f = self.fields[order]
            listed = ", ".join(str(r) for r in sorted(rows))
            for row, value in self.con.execute(
                f"SELECT raw.rowid, {f.text} FROM raw WHERE raw.rowid IN ({listed})"
            ).fetchall():
                shown[(int(row), order)] = value
        return shown

    def reject_groups(self, errors: list[IngestError], bad_rows: set[int]) -> dict[int, list[IngestError]]:
        """Record the groups of ``bad_rows`` in table ``__rejected``; their errors by group."""
        if not self.loaded.grouped:
            raise ValueError("drop_invalid needs groups")
        listed = ", ".join(str(r) for r in sorted(bad_rows)) or "NULL"
        self.con.execute(f"CREATE TABLE __rejected AS SELECT DISTINCT __group FROM checked WHERE __row IN ({listed})")
        group_of = dict(self.con.execute(f"SELECT __row, __group FROM checked WHERE __row IN ({listed})").fetchall())
        rejected: dict[int, list[IngestError]] = {}
        for error in errors:
            assert error.row is not None
            rejected.setdefault(int(group_of[error.row - self.loaded.first_row]), []).append(error)
        return rejected

    def select_new_rows(self) -> int:
        """View ``new_rows``: the typed rows to add (rejected groups and skipped duplicates left out); their count."""
        columns = ", ".join(f'CAST(__v{f.index} AS {duckdb_type(f.field)}) AS "{f.field.name}"' for f in self.fields)
        conditions = []
        if self.loaded.grouped and _has_table(self.con, "__rejected"):
            conditions.append("__group NOT IN (SELECT __group FROM __rejected)")
        qualify = ""
        if self.skip_key:
            if self.previous is not None:
                conditions.append(f"NOT {self._existing_match(self.skip_key)}")
            key_columns, _ = self._key_sql(self.skip_key)
            qualify = f"QUALIFY row_number() OVER (PARTITION BY {key_columns} ORDER BY __row) = 1 ORDER BY __row"
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        self.con.execute(f"CREATE VIEW new_rows AS SELECT {columns} FROM checked {where} {qualify}")
        return _scalar_int(self.con, "SELECT count(*) FROM new_rows")

    def write(self, writer: VersionWriter) -> None:
        """Write the previous rows (on append) and the new ones into the staged DuckDB file, then its Parquet copy."""
        self.con.execute(f"ATTACH {_str(str(writer.duckdb_path))} AS __out")
        if self.previous is not None:
            source = (
                f"SELECT * FROM read_parquet({_str(str(self.previous.parquet_path))}) "
                "UNION ALL BY NAME SELECT * FROM new_rows"
            )
        else:
            source = "SELECT * FROM new_rows"
        key = self.schema.subject_key
        if key is not None and key.type not in ("string", "integer"):
            key = None  # the hash hashes the value's text: only for types whose text does not depend on settings
        exported = "__out.rows"
        if key is not None:
            # The query workers' table gets the hidden subject hash (the k count reads it); the Parquet, the
            # exportable form, does not.
            quoted = '"' + key.name.replace('"', '""') + '"'
            hashed = subject_hash_sql(quoted, writer.storage.pseudonym_key(writer.siren))
            source = f'SELECT *, {hashed} AS "{SUBJECT_HASH_COLUMN}" FROM ({source})'
            exported = f'(SELECT * EXCLUDE ("{SUBJECT_HASH_COLUMN}") FROM __out.rows)'
        self.con.execute(f"CREATE TABLE __out.rows AS {source}")
        self.con.execute(f"COPY {exported} TO {_str(str(writer.parquet_path))} (FORMAT parquet, COMPRESSION zstd)")
        writer.subject_hash = SUBJECT_HASH_VERSION if key is not None else None
        if key is not None:
            # The k check's free lower bound (a group's rows divided by this) needs the most rows one subject holds.
            row = self.con.execute(
                f'SELECT max(n), count(*) FROM (SELECT count(*) AS n FROM __out.rows WHERE "{SUBJECT_HASH_COLUMN}" '
                f'IS NOT NULL GROUP BY "{SUBJECT_HASH_COLUMN}")'
            ).fetchone()
            if row is not None and row[0] is not None:
                writer.subject_rows_max, writer.subjects = int(row[0]), int(row[1])


def _cell_error(row: int, schema_field: SchemaField, code: str, value: str | None) -> IngestError:
    name = schema_field.name
    quoted = _shown(value) if value is not None else "the value"
    constraints = schema_field.constraints
    if code == "required":
        return IngestError(
            row=row,
            field=name,
            code="constraint-error",
            constraint="required",
            message=f"row {row}, field {name}: a value is required",
        )
    if code == "type":
        expected = schema_field.type + (f" ({schema_field.format})" if schema_field.format else "")
        message = f"row {row}, field {name}: {quoted} is not a valid {expected}"
        return IngestError(row=row, field=name, code="type-error", message=message)
    limit: Any = getattr(constraints, _CONSTRAINT_ATTRS.get(code, code), None) if constraints else None
    templates = {
        "minimum": "{value} is below the minimum {limit}",
        "maximum": "{value} is above the maximum {limit}",
        "minLength": "{value} is shorter than {limit} characters",
        "maxLength": "{value} is longer than {limit} characters",
        "pattern": "{value} does not match the pattern {limit}",
        "enum": "{value} is not one of {limit}",
    }
    shown_limit = _shown_enum(limit) if code == "enum" else limit
    what = templates.get(code, "{value} breaks the constraint " + code).format(value=quoted, limit=shown_limit)
    return IngestError(
        row=row, field=name, code="constraint-error", constraint=code, message=f"row {row}, field {name}: {what}"
    )


_CONSTRAINT_ATTRS = {"minLength": "min_length", "maxLength": "max_length"}


def _finish(report: IngestReport, outcome: _Outcome, started: float) -> IngestReport:
    report.valid = outcome.valid
    report.rows_read = outcome.rows_read
    report.errors = outcome.errors
    report.error_count = outcome.error_count
    report.truncated = outcome.error_count > len(outcome.errors)
    if outcome.version is not None:
        report.version = outcome.version.version
        report.rows_total = outcome.rows_total
        report.parquet_sha256 = outcome.version.parquet_sha256
        report.rows_added = outcome.rows_added
        report.rows_rejected = outcome.rows_rejected
        report.rows_skipped = max(0, outcome.rows_read - outcome.rows_added - outcome.rows_rejected)
    report.duration_seconds = round(time.perf_counter() - started, 4)
    return report


# -- helpers ----------------------------------------------------------------------------------------------------


def _str(value: str) -> str:
    """An SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _scalar_int(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = 'memory'", [name]
    ).fetchone()
    return bool(row and row[0])


def _shown(value: str) -> str:
    text = value if len(value) <= _SHOWN_MAX else value[: _SHOWN_MAX - 1] + "…"
    return repr(text)


def _shown_label(label: str) -> str:
    return label if len(label) <= _SHOWN_MAX else label[: _SHOWN_MAX - 1] + "…"


def _shown_enum(values: Iterable[Any] | None) -> str:
    listed = [str(v) for v in (values or [])]
    text = ", ".join(listed[:10]) + (", …" if len(listed) > 10 else "")
    return f"[{text}]"
