"""Per-territory storage and validated, atomic ingestion: row/field errors, append/replace, keys, crashes, cleanup."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from contracts.datasets import TableSchema
from exchange import ingest as ingest_module
from exchange.ingest import MAX_ERRORS, IngestReport, ingest
from exchange.storage import POINTER_FILE, Storage, VersionWriter, export_csv
from kit.errors import BadRequest, Conflict, Unprocessable

ROOT = Path(__file__).resolve().parents[3]
MEASURE = ROOT / "contracts" / "standards" / "schema-comptage-mobilites" / "measure"
SIREN = "242100410"  # Dijon Métropole
OTHER_SIREN = "242500361"  # Grand Besançon Métropole
HEADER = "channel_id,counter_id,start_datetime,end_datetime,count\n"


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "data")


@pytest.fixture
def measure_schema() -> TableSchema:
    return TableSchema.from_standard(json.loads((MEASURE / "schema.json").read_text(encoding="utf-8")))


def water_schema() -> TableSchema:
    return TableSchema.model_validate(
        {
            "fields": [
                {"name": "meter_id", "type": "string", "personal": True, "identifier": True, "subject_key": True},
                {"name": "commune_insee", "type": "string", "constraints": {"pattern": "[0-9][0-9AB][0-9]{3}"}},
                {"name": "month", "type": "date"},
                {"name": "volume_m3", "type": "number", "personal": True, "constraints": {"minimum": 0}},
                {"name": "household_size", "type": "integer", "personal": True},
            ],
            "primaryKey": ["meter_id", "month"],
        }
    )


def csv_bytes(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode("utf-8"))


def measure_rows(count: int, start: int = 0, channel: str = "C1") -> str:
    return "".join(
        f"{channel},CPT-{channel},2022-01-{1 + (i // 24):02d}T{i % 24:02d}:00:00+01:00,,{i}\n"
        for i in range(start, start + count)
    )


def ok(report: IngestReport) -> IngestReport:
    assert report.valid, report.errors
    return report


def table_rows(path: Path, order: str = "1") -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT * FROM rows ORDER BY {order}").fetchall()
    finally:
        con.close()


# -- the real files -----------------------------------------------------------------------------------------------


def test_the_real_eco_compteur_example_passes(storage: Storage, measure_schema: TableSchema) -> None:
    source = MEASURE / "exemple-valide-eco-compteur.csv"
    seen: list[int] = []
    report = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, source, mode="replace", progress=seen.append))
    assert report.rows_read == report.rows_added == report.rows_total == 3650  # 3,651 lines, no final newline
    assert (report.version, report.encoding, report.delimiter) == (1, "utf-8", ",")
    assert sum(seen) == report.bytes_read == source.stat().st_size

    version = storage.current(SIREN, "comptages-velo")
    assert version is not None and version.version == 1 and version.rows == 3650
    pointer = json.loads((version.directory.parent / POINTER_FILE).read_text())
    assert set(pointer) == {
        "version",
        "rows",
        "parquet_bytes",
        "duckdb_bytes",
        "parquet_sha256",
        "schema_hash",
        "created_at",
    }
    assert pointer["parquet_bytes"] == version.parquet_path.stat().st_size
    assert version.schema() == measure_schema
    # The form the query workers use: attached read-only, one table ``rows`` with the schema's types.
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{version.duckdb_path}' AS d (READ_ONLY)")
    described = {name: kind for name, kind, *_ in con.execute("DESCRIBE d.rows").fetchall()}
    assert described == {
        "channel_id": "VARCHAR",
        "counter_id": "VARCHAR",
        "start_datetime": "TIMESTAMP WITH TIME ZONE",
        "end_datetime": "TIMESTAMP WITH TIME ZONE",
        "count": "DOUBLE",
    }
    con.execute("SET TimeZone = 'UTC'")
    first = con.execute("SELECT min(start_datetime)::VARCHAR, sum(count) FROM d.rows").fetchone()
    assert first is not None and first[0] == "2021-12-31 23:00:00+00"  # 2022-01-01T00:00:00+01:00
    parquet = con.execute(f"SELECT count(*) FROM read_parquet('{version.parquet_path}')").fetchone()
    assert parquet == (3650,)
    con.close()


def test_a_latin1_semicolon_file_with_a_bom_passes(storage: Storage, measure_schema: TableSchema) -> None:
    text = (
        "channel_id;counter_id;start_datetime;end_datetime;count\r\n"
        "Pont-de-l'Île;Compteur Hôtel de Ville;2022-01-01T00:00:00+01:00;2022-01-02T00:00:00+01:00;12,5\r\n"
        '"Allée; côté Suzon";Œuvre €;2022-01-02T00:00:00+01:00;;7\r\n'
    )
    source = io.BytesIO(b"\xef\xbb\xbf" + text.encode("cp1252"))
    report = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, source, mode="replace"))
    assert (report.encoding, report.delimiter, report.rows_total) == ("cp1252", ";", 2)
    version = storage.current(SIREN, "comptages-velo")
    assert version is not None
    # The upload and its UTF-8 copy were scratch files: a version holds its data and its schema only.
    assert sorted(p.name for p in version.directory.iterdir()) == ["data.duckdb", "data.parquet", "schema.json"]
    rows = table_rows(version.duckdb_path)
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("Allée; côté Suzon", "Œuvre €", 7.0),
        ("Pont-de-l'Île", "Compteur Hôtel de Ville", 12.5),  # a ';' file's decimal comma
    ]

    # Pure Latin-1 (a byte Windows-1252 leaves undefined) and a UTF-8 file with its BOM pass too.
    latin1 = io.BytesIO(b"\xef\xbb\xbf" + text.replace("Œuvre €", "Zone \x81").encode("latin-1"))
    assert ok(ingest(storage, SIREN, "comptages-velo", measure_schema, latin1, mode="replace")).encoding == "latin-1"
    utf8 = io.BytesIO(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert ok(ingest(storage, SIREN, "comptages-velo", measure_schema, utf8, mode="replace")).encoding == "utf-8-sig"


# -- errors with row and field ----------------------------------------------------------------------------------


def test_broken_rows_fail_with_their_row_and_field(storage: Storage, measure_schema: TableSchema) -> None:
    text = (
        HEADER
        + "C1,X,2022-01-01T00:00:00Z,,3\n"  # row 2: fine
        + ",X,2022-01-01T01:00:00Z,,3\n"  # row 3: channel_id required
        + "C1,X,2022-13-01T00:00:00Z,,3\n"  # row 4: no 13th month
        + "C1,X,2022-01-01,,3\n"  # row 5: a date is not a datetime
        + "C1,X,2022-01-01T03:00:00Z,,trois\n"  # row 6: not a number
        + "C1,X,2022-01-01T04:00:00Z,,1,5\n"  # row 7: one column too many (',' file: no decimal comma)
    )
    report = ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(text))
    # A row that does not fit the header is reported first: the file's structure must be fixed.
    assert not report.valid and report.version is None
    assert [(e.row, e.code) for e in report.errors] == [(7, "source-error")]
    assert "more columns than the header" in report.errors[0].message
    assert storage.current(SIREN, "comptages-velo") is None

    report = ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(text.rsplit("C1", 1)[0]))
    assert not report.valid
    assert [(e.row, e.field, e.code, e.constraint) for e in report.errors] == [
        (3, "channel_id", "constraint-error", "required"),
        (4, "start_datetime", "type-error", None),
        (5, "start_datetime", "type-error", None),
        (6, "count", "type-error", None),
    ]
    assert report.error_count == 4 and not report.truncated
    assert report.errors[3].message == "row 6, field count: 'trois' is not a valid number"
    assert list(storage.dataset_dir(SIREN, "comptages-velo").glob("v*")) == []


def test_header_problems_are_reported_on_row_one(storage: Storage, measure_schema: TableSchema) -> None:
    text = "channel_id,counter_id,start_datetime,count,colour\nC1,X,2022-01-01T00:00:00Z,3,red\n"
    report = ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(text))
    assert {(e.row, e.field, e.code) for e in report.errors} == {
        (1, "colour", "extra-label"),
        (1, "end_datetime", "missing-label"),
    }
    report = ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(""))
    assert [e.code for e in report.errors] == ["source-error"]


def test_personal_values_are_never_echoed(storage: Storage) -> None:
    text = (
        "meter_id,commune_insee,month,volume_m3,household_size\n"
        "M-0001,21231,2024-01-01,12.5,3\n"
        "M-SECRET,2A004,2024-01-01,beaucoup,3\n"
        "M-0002,ABCDE,2024-01-01,-4,deux\n"
        ",21231,2024-01-01,1,1\n"
    )
    report = ingest(storage, SIREN, "consommation-eau-menages", water_schema(), csv_bytes(text))
    assert [(e.row, e.field, e.code, e.constraint) for e in report.errors] == [
        (3, "volume_m3", "type-error", None),
        (4, "commune_insee", "constraint-error", "pattern"),
        (4, "volume_m3", "constraint-error", "minimum"),
        (4, "household_size", "type-error", None),
        (5, "meter_id", "constraint-error", "required"),  # part of the primary key
    ]
    messages = " ".join(e.message for e in report.errors)
    for secret in ("beaucoup", "M-SECRET", "-4", "deux"):
        assert secret not in messages
    assert "'ABCDE' does not match the pattern" in messages  # not personal: quoted to help the steward
    assert "the value is below the minimum 0" in messages


def test_constraints_and_types(storage: Storage) -> None:
    schema = TableSchema.model_validate(
        {
            "fields": [
                {"name": "code", "type": "string", "constraints": {"minLength": 2, "maxLength": 4, "unique": True}},
                {"name": "kind", "type": "string", "constraints": {"enum": ["bus", "tram"]}},
                {"name": "hour", "type": "integer", "constraints": {"minimum": 0, "maximum": 23}},
                {"name": "active", "type": "boolean"},
                {"name": "day", "type": "date", "constraints": {"minimum": "2020-01-01"}},
                {"name": "at", "type": "time"},
                {"name": "year", "type": "year"},
                {"name": "email", "type": "string", "format": "email"},
                {"name": "french_day", "type": "date", "format": "%d/%m/%Y"},
            ]
        }
    )
    header = "code,kind,hour,active,day,at,year,email,french_day\n"
    good = "AB,bus,0,true,2020-01-01,08:30:00,2024,a@b.fr,31/12/2024\nABCD,tram,23,0,2024-02-29,23:59,1999,,\n"
    report = ok(ingest(storage, SIREN, "lignes", schema, csv_bytes(header + good), mode="replace"))
    version = storage.current(SIREN, "lignes")
    assert version is not None and report.rows_total == 2
    assert table_rows(version.duckdb_path)[0][3] is True

    bad = (
        "A,metro,24,yes,2019-12-31,8h30,24,nobody,2024-12-31\n"  # row 2: every field wrong
        "ABCDE,bus,1.5,TRUE,2024-02-30,12:00,2024,x@y.z,01/01/2024\n"  # row 3: too long, 1.5, 30 February
        "AB,bus,1,1,2024-01-01,12:00,2024,x@y.z,01/01/2024\n"  # row 4: fine
        "AB,bus,1,1,2024-01-01,12:00,2024,x@y.z,01/01/2024\n"  # row 5: its unique code repeats row 4
    )
    report = ingest(storage, SIREN, "lignes", schema, csv_bytes(header + bad), mode="replace")
    found = [(e.row, e.field, e.code, e.constraint) for e in report.errors]
    assert found == [
        (2, "code", "constraint-error", "minLength"),
        (2, "kind", "constraint-error", "enum"),
        (2, "hour", "constraint-error", "maximum"),
        (2, "active", "type-error", None),
        (2, "day", "constraint-error", "minimum"),
        (2, "at", "type-error", None),
        (2, "year", "type-error", None),
        (2, "email", "type-error", None),
        (2, "french_day", "type-error", None),
        (3, "code", "constraint-error", "maxLength"),
        (3, "hour", "type-error", None),
        (3, "day", "type-error", None),
        (5, "code", "unique-error", "unique"),
    ]
    assert report.errors[-1].message == "row 5, field code: the unique value repeats row 4"


def test_errors_are_limited_with_a_total(storage: Storage, measure_schema: TableSchema) -> None:
    text = HEADER + "".join(f"C1,X,2022-01-01T00:00:00Z,,n{i}\n" for i in range(250))
    report = ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(text))
    assert len(report.errors) == MAX_ERRORS and report.error_count == 250 and report.truncated
    assert [e.row for e in report.errors[:3]] == [2, 3, 4]
    with pytest.raises(Unprocessable) as raised:
        report.raise_for_errors()
    assert raised.value.code == "ingest.invalid" and raised.value.extra["report"]["error_count"] == 250


# -- append, replace, keys --------------------------------------------------------------------------------------


def test_append_and_replace(storage: Storage, measure_schema: TableSchema) -> None:
    first = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(10))))
    assert (first.version, first.rows_total, first.previous_version) == (1, 10, None)
    second = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(5, 10))))
    assert (second.version, second.rows_added, second.rows_total, second.previous_version) == (2, 5, 15, 1)
    third = ok(
        ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(3)), mode="replace")
    )
    assert (third.version, third.rows_total) == (3, 3)
    current = storage.current(SIREN, "comptages-velo")
    assert current is not None and current.version == 3 and current.rows == 3
    assert [v.slug for v in storage.list_datasets(SIREN)] == ["comptages-velo"]
    assert storage.list_datasets(OTHER_SIREN) == []


def test_primary_key_duplicates_in_the_file_and_against_existing_rows(storage: Storage) -> None:
    header = "meter_id,commune_insee,month,volume_m3,household_size\n"
    rows = "M1,21231,2024-01-01,1,1\nM1,21231,2024-02-01,1,1\nM2,21231,2024-01-01,1,1\n"
    report = ingest(storage, SIREN, "eau", water_schema(), csv_bytes(header + rows + "M1,21231,2024-02-01,9,9\n"))
    assert [(e.row, e.field, e.code) for e in report.errors] == [(5, "meter_id, month", "primary-key")]
    assert "repeats row 3" in report.errors[0].message

    ok(ingest(storage, SIREN, "eau", water_schema(), csv_bytes(header + rows)))
    report = ingest(
        storage, SIREN, "eau", water_schema(), csv_bytes(header + "M3,21231,2024-01-01,1,1\nM2,21231,2024-01-01,2,2\n")
    )
    assert [(e.row, e.code) for e in report.errors] == [(3, "primary-key")]
    assert "already present in version 1" in report.errors[0].message
    # The same rows replace the dataset without clashing with themselves.
    ok(ingest(storage, SIREN, "eau", water_schema(), csv_bytes(header + rows), mode="replace"))
    # Or are skipped as duplicates when asked (what streaming does).
    skipped = ok(
        ingest(
            storage,
            SIREN,
            "eau",
            water_schema(),
            csv_bytes(header + rows + "M3,21231,2024-01-01,1,1\nM3,21231,2024-01-01,5,5\n"),
            duplicates="skip",
        )
    )
    assert (skipped.rows_added, skipped.rows_skipped, skipped.rows_total) == (1, 4, 4)


def test_append_refuses_a_changed_schema(storage: Storage, measure_schema: TableSchema) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(2))))
    changed = measure_schema.model_copy(
        update={
            "fields": [
                f.model_copy(update={"type": "string"}) if f.name == "count" else f for f in measure_schema.fields
            ]
        }
    )
    with pytest.raises(Conflict) as raised:
        ingest(storage, SIREN, "comptages-velo", changed, csv_bytes(HEADER + measure_rows(2, 2)))
    assert raised.value.code == "ingest.schema_changed"
    # A new description does not change what a valid row is.
    described = measure_schema.model_copy(
        update={"fields": [f.model_copy(update={"description": "autre"}) for f in measure_schema.fields]}
    )
    ok(ingest(storage, SIREN, "comptages-velo", described, csv_bytes(HEADER + measure_rows(2, 2))))


def test_parquet_in_and_csv_out_round_trip(storage: Storage, measure_schema: TableSchema, tmp_path: Path) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, MEASURE / "exemple-valide-eco-compteur.csv"))
    original = storage.current(SIREN, "comptages-velo")
    assert original is not None

    exported = b"".join(export_csv(original, chunk_size=4096))
    assert exported.startswith(HEADER.encode()) and b"2021-12-31T23:00:00Z" in exported
    assert b",0.0\n" not in exported  # integral counts are written as integers
    ok(ingest(storage, SIREN, "copie-csv", measure_schema, io.BytesIO(exported), mode="replace"))
    ok(ingest(storage, SIREN, "copie-parquet", measure_schema, original.parquet_path, file_format="parquet"))
    for slug in ("copie-csv", "copie-parquet"):
        copy = storage.current(SIREN, slug)
        assert copy is not None
        assert table_rows(copy.duckdb_path, "ALL") == table_rows(original.duckdb_path, "ALL")

    # Parquet columns of another type are parsed as text and checked like CSV cells, rows counted from 1.
    bad = tmp_path / "bad.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'C1' AS channel_id, NULL::VARCHAR AS counter_id, '2022-01-01T00:00:00Z' AS start_datetime, "
        f"NULL::VARCHAR AS end_datetime, CASE WHEN i = 2 THEN 'x' ELSE i::VARCHAR END AS count FROM range(4) t(i)) "
        f"TO '{bad}' (FORMAT parquet)"
    )
    con.close()
    report = ingest(storage, SIREN, "copie-parquet", measure_schema, bad, file_format="parquet")
    assert [(e.row, e.field, e.code) for e in report.errors] == [(3, "count", "type-error")]
    garbage = ingest(storage, SIREN, "x", measure_schema, io.BytesIO(b"not parquet"), file_format="parquet")
    assert [e.code for e in garbage.errors] == ["source-error"]


def test_csv_export_round_trip_of_every_type(storage: Storage) -> None:
    schema = TableSchema.model_validate(
        {
            "fields": [
                {"name": "label", "type": "string"},
                {"name": "n", "type": "integer"},
                {"name": "x", "type": "number"},
                {"name": "flag", "type": "boolean"},
                {"name": "day", "type": "date"},
                {"name": "at", "type": "datetime"},
                {"name": "t", "type": "time"},
                {"name": "y", "type": "year"},
            ]
        }
    )
    text = (
        "label,n,x,flag,day,at,t,y\n"
        '"a, ""quoted""\nlabel",-3,0.1,true,2024-02-29,2024-03-31T01:30:00.250+02:00,23:59:59,2024\n'
        ",,NaN,false,,2024-01-01T00:00:00Z,,\n"
        "plain,9007199254740993,1e+20,,1970-01-01,2024-01-01 12:00,00:00,1999\n"
    )
    ok(ingest(storage, SIREN, "types", schema, csv_bytes(text)))
    first = storage.current(SIREN, "types")
    assert first is not None
    exported = b"".join(export_csv(first))
    ok(ingest(storage, SIREN, "types-copie", schema, io.BytesIO(exported)))
    copy = storage.current(SIREN, "types-copie")
    assert copy is not None
    con = duckdb.connect()
    differences = con.execute(
        f"SELECT count(*) FROM ((SELECT * FROM read_parquet('{first.parquet_path}') EXCEPT "
        f"SELECT * FROM read_parquet('{copy.parquet_path}')) UNION ALL (SELECT * FROM "
        f"read_parquet('{copy.parquet_path}') EXCEPT SELECT * FROM read_parquet('{first.parquet_path}')))"
    ).fetchone()
    con.close()
    assert differences == (0,)


# -- atomicity, concurrency, cleanup ----------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["write", "rename", "publish"])
def test_a_failure_at_any_step_leaves_the_previous_version(
    storage: Storage, measure_schema: TableSchema, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(4))))
    before = storage.current(SIREN, "comptages-velo")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    target: Any = {"write": ingest_module._Checker, "rename": VersionWriter, "publish": VersionWriter}[step]
    with monkeypatch.context() as patch:
        patch.setattr(target, {"write": "write", "rename": "_rename", "publish": "_publish"}[step], boom)
        with pytest.raises(OSError, match="disk full"):
            ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(4, 4)))
    assert storage.current(SIREN, "comptages-velo") == before
    assert before is not None and len(table_rows(before.duckdb_path)) == 4

    report = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(4, 4))))
    assert (report.version, report.rows_total) == (2, 8)
    directory = storage.dataset_dir(SIREN, "comptages-velo")
    assert sorted(p.name for p in directory.iterdir()) == [".lock", POINTER_FILE, "v1", "v2"]


_KILLED_INGEST = """
import io, sys, time
from pathlib import Path
from contracts.datasets import TableSchema
from exchange.ingest import ingest
from exchange.storage import Storage, VersionWriter

step, marker = sys.argv[1], Path(sys.argv[2])

def stall(self, *args):
    # _rename: every file written and fsynced, not renamed yet; _publish: renamed to v<N>, pointer not replaced.
    marker.write_text("ready")
    time.sleep(600)

setattr(VersionWriter, step, stall)
schema = TableSchema.model_validate_json(sys.stdin.readline())
rows = "".join(f"C9,X,2023-01-01T{i % 24:02d}:00:00Z,,{i}\\n" for i in range(24))
data = io.BytesIO(("channel_id,counter_id,start_datetime,end_datetime,count\\n" + rows).encode())
ingest(Storage(Path(sys.argv[3])), "242100410", "comptages-velo", schema, data)
"""


@pytest.mark.parametrize("step", ["_rename", "_rename-after"])
def test_kill_9_mid_ingest_leaves_the_previous_version(
    storage: Storage, measure_schema: TableSchema, tmp_path: Path, step: str
) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(4))))
    before = storage.current(SIREN, "comptages-velo")
    marker = tmp_path / "marker"
    stage = "_rename" if step == "_rename" else "_publish"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_INGEST, stage, str(marker), str(storage.root)],
        stdin=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdin is not None
    process.stdin.write(measure_schema.model_dump_json(by_alias=True).encode() + b"\n")
    process.stdin.close()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, "the ingest process ended before reaching the step"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)

    directory = storage.dataset_dir(SIREN, "comptages-velo")
    leftovers = sorted(p.name for p in directory.iterdir())
    assert any(name.startswith(".tmp-") for name in leftovers) or "v2" in leftovers  # the dead writer's work
    assert storage.current(SIREN, "comptages-velo") == before  # readers still see version 1, whole
    assert before is not None and len(table_rows(before.duckdb_path)) == 4

    # The lock died with the process; cleaning at start (or the next ingest) removes the dead writer's work.
    assert storage.remove_leftovers() and not storage.remove_leftovers()
    assert sorted(p.name for p in directory.iterdir()) == [".lock", POINTER_FILE, "v1"]
    report = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(2, 4))))
    assert (report.version, report.rows_total) == (2, 6)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", POINTER_FILE, "v1", "v2"]


def test_concurrent_ingests_of_a_dataset_are_serialised(storage: Storage, measure_schema: TableSchema) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(24))))
    reports: list[IngestReport] = []

    def append(channel: str) -> None:
        rows = HEADER + measure_rows(500, channel=channel)
        reports.append(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(rows)))

    threads = [threading.Thread(target=append, args=(f"T{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.valid for r in reports)
    assert sorted(r.version or 0 for r in reports) == [2, 3, 4]
    current = storage.current(SIREN, "comptages-velo")
    assert current is not None and current.rows == 24 + 3 * 500

    with storage.writer(SIREN, "comptages-velo"):
        with pytest.raises(Conflict) as raised:
            ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER), lock_timeout=0.2)
    assert raised.value.code == "ingest.busy"


def test_old_versions_are_removed_but_never_the_current_or_the_previous(
    tmp_path: Path, measure_schema: TableSchema
) -> None:
    storage = Storage(tmp_path / "data", keep_versions=None)
    for start in range(0, 40, 10):
        ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(10, start))))
    ok(ingest(storage, OTHER_SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(1))))
    assert storage.versions(SIREN, "comptages-velo") == [1, 2, 3, 4]
    oldest = Storage(tmp_path / "data").dataset_dir(SIREN, "comptages-velo") / "v1" / "data.duckdb"
    reader = duckdb.connect(str(oldest), read_only=True)  # a query still running on version 1

    removed = storage.remove_old_versions(keep=2)
    assert sorted(p.name for p in removed) == ["v1", "v2"]
    assert storage.versions(SIREN, "comptages-velo") == [3, 4]
    assert storage.versions(OTHER_SIREN, "comptages-velo") == [1]
    assert reader.execute("SELECT count(*) FROM rows").fetchone() == (10,)  # its open file survives
    reader.close()
    with pytest.raises(ValueError):
        storage.remove_old_versions(keep=1)

    # By default a storage keeps two versions after every commit.
    pruning = Storage(tmp_path / "data")
    ok(ingest(pruning, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(1, 99))))
    assert pruning.versions(SIREN, "comptages-velo") == [4, 5]


@pytest.mark.parametrize(
    ("siren", "slug"),
    [
        ("../../etc", "comptages-velo"),
        ("242100411", "comptages-velo"),  # Luhn key wrong
        ("24210041", "comptages-velo"),
        (SIREN, "../comptages-velo"),
        (SIREN, "comptages/velo"),
        (SIREN, "Comptages-Velo"),
        (SIREN, ".."),
        (SIREN, "a" * 65),
    ],
)
def test_paths_are_built_from_validated_identifiers_only(
    storage: Storage, measure_schema: TableSchema, siren: str, slug: str
) -> None:
    with pytest.raises(BadRequest):
        storage.dataset_dir(siren, slug)
    with pytest.raises(BadRequest):
        storage.current(siren, slug)
    with pytest.raises(BadRequest):
        ingest(storage, siren, slug, measure_schema, csv_bytes(HEADER + measure_rows(1)))
    assert not storage.root.exists() or not any(p.is_file() for p in storage.root.rglob("*"))


def test_ingesting_a_large_file_stays_vectorised(tmp_path: Path, measure_schema: TableSchema) -> None:
    """200,000 rows: a per-cell Python loop would take many seconds; checks over whole columns take well under."""
    path = tmp_path / "big.csv"
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT 'C' || (i % 50) AS channel_id, 'CPT' AS counter_id, "
        "strftime(TIMESTAMP '2022-01-01' + INTERVAL (i // 50) HOUR, '%Y-%m-%dT%H:%M:%S+01:00') AS start_datetime, "
        "NULL AS end_datetime, i % 300 AS count FROM range(200000) t(i)) "
        f"TO '{path}' (HEADER, DELIMITER ';')"
    )
    con.close()
    storage = Storage(tmp_path / "data")
    started = time.perf_counter()
    report = ok(ingest(storage, SIREN, "comptages-velo", measure_schema, path))
    assert report.rows_total == 200_000
    assert time.perf_counter() - started < 10


# -- the `maillage ingest` command --------------------------------------------------------------------------------


def _cli() -> Any:
    import typer

    from maillage import ingest_cli

    app = typer.Typer()
    app.callback()(lambda: None)  # keep "ingest" a sub-command, as in the real `maillage` app
    app.command("ingest")(ingest_cli.ingest)
    return app


def test_cli_ingests_locally_with_the_schema_of_the_current_version(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    data_dir = tmp_path / "exchange"
    example = MEASURE / "exemple-valide-eco-compteur.csv"
    base = ["ingest", "--local", "--data-dir", str(data_dir), "--territory", SIREN, "--dataset", "comptages-velo"]
    result = runner.invoke(_cli(), [*base, "--file", str(example)])
    assert result.exit_code == 1 and "give its --schema" in result.output

    result = runner.invoke(_cli(), [*base, "--file", str(example), "--schema", str(MEASURE / "schema.json")])
    assert result.exit_code == 0, result.output
    assert "version 1 with 3,650 row(s)" in result.output

    broken = tmp_path / "broken.csv"
    broken.write_text(HEADER + "C1,X,2022-01-01T00:00:00Z,,beaucoup\n", encoding="utf-8")
    result = runner.invoke(_cli(), [*base, "--file", str(broken), "--mode", "replace"])
    assert result.exit_code == 1
    assert (
        "refused" in result.output and "count" in result.output and "'beaucoup' is not a valid number" in result.output
    )
    current = Storage(data_dir).current(SIREN, "comptages-velo")
    assert current is not None and current.version == 1

    result = runner.invoke(_cli(), [*base[:-2], "--dataset", "../x", "--file", str(broken)])
    assert result.exit_code == 2


def test_cli_streams_the_file_to_the_exchange_and_prints_the_errors(tmp_path: Path) -> None:
    import http.server

    from typer.testing import CliRunner

    received: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's naming
            received["path"] = self.path
            received["headers"] = dict(self.headers)
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            valid = b"beaucoup" not in received["body"]
            report = {"valid": valid, "territory": SIREN, "dataset": "comptages-velo", "mode": "append"}
            if valid:
                body: dict[str, Any] = {**report, "rows_added": 1, "rows_total": 11, "version": 3}
                status = 201
            else:
                error = {"row": 2, "field": "count", "code": "type-error", "message": "row 2, field count: bad"}
                report |= {"errors": [error], "error_count": 101}
                body, status = {"error": "ingest.invalid", "detail": "refused", "report": report}, 422
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        good = tmp_path / "measures.csv"
        good.write_bytes((HEADER + measure_rows(1)).encode())
        runner = CliRunner()
        args = ["ingest", "--url", url, "--territory", SIREN, "--dataset", "comptages-velo", "--file", str(good)]
        result = runner.invoke(_cli(), args, env={"MAILLAGE_KEY": "mlg_steward_secret"})
        assert result.exit_code == 0, result.output
        assert "version 3 with 11 row(s)" in result.output
        assert received["path"] == f"/v1/territories/{SIREN}/datasets/comptages-velo/data?mode=append"
        assert received["headers"]["Authorization"] == "Bearer mlg_steward_secret"
        assert received["headers"]["Content-Type"] == "text/csv"
        assert received["body"] == good.read_bytes()

        bad = tmp_path / "bad.csv"
        bad.write_text(HEADER + "C1,X,2022-01-01T00:00:00Z,,beaucoup\n", encoding="utf-8")
        result = runner.invoke(_cli(), [*args[:-1], str(bad), "--mode", "replace", "--key", "k"])
        assert result.exit_code == 1
        assert "row 2, field count: bad" in result.output and "and 100 more" in result.output
        assert received["path"].endswith("?mode=replace")

        result = runner.invoke(_cli(), args, env={"MAILLAGE_KEY": ""})
        assert result.exit_code == 2 and "steward key" in result.output
    finally:
        server.shutdown()
        server.server_close()
    result = CliRunner().invoke(_cli(), [*args], env={"MAILLAGE_KEY": "k"})
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_a_subject_key_gets_a_hidden_hash_in_duckdb_only(storage: Storage) -> None:
    from exchange.policy.scans import SUBJECT_HASH_COLUMN, SUBJECT_HASH_VERSION

    header = "meter_id,commune_insee,month,volume_m3,household_size\n"
    first = "M-1,21231,2024-01-01,1,1\nM-2,21231,2024-01-01,2,2\n"
    ok(ingest(storage, SIREN, "consommation-eau-menages", water_schema(), csv_bytes(header + first)))
    ok(
        ingest(
            storage, SIREN, "consommation-eau-menages", water_schema(), csv_bytes(header + "M-1,21231,2024-02-01,3,1\n")
        )
    )
    version = storage.current(SIREN, "consommation-eau-menages")
    assert version is not None and version.version == 2 and version.subject_hash == SUBJECT_HASH_VERSION
    pointer = json.loads((version.directory.parent / POINTER_FILE).read_text())
    assert pointer["subject_hash"] == SUBJECT_HASH_VERSION
    # The statistics of the k check's row-count bound, over the whole appended table: M-1 holds two rows of three.
    assert (pointer["subject_rows_max"], pointer["subjects"]) == (2, 2)
    assert (version.subject_rows_max, version.subjects) == (2, 2)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{version.duckdb_path}' AS d (READ_ONLY)")
        rows = con.execute(f'SELECT meter_id, "{SUBJECT_HASH_COLUMN}" FROM d.rows ORDER BY month, meter_id').fetchall()
        hashes = {meter: h for meter, h in rows}
        assert len(rows) == 3 and len(hashes) == 2 and all(isinstance(h, int) for h in hashes.values())
        assert rows[0][1] == rows[2][1]  # the same subject, in the appended version's rows too
        parquet = [
            r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{version.parquet_path}')").fetchall()
        ]
        assert parquet == ["meter_id", "commune_insee", "month", "volume_m3", "household_size"]
    finally:
        con.close()


def test_a_dataset_without_subject_key_has_no_hash(storage: Storage, measure_schema: TableSchema) -> None:
    ok(ingest(storage, SIREN, "comptages-velo", measure_schema, csv_bytes(HEADER + measure_rows(3))))
    version = storage.current(SIREN, "comptages-velo")
    assert version is not None and version.subject_hash is None
    pointer = json.loads((version.directory.parent / POINTER_FILE).read_text())
    assert "subject_hash" not in pointer and "subject_rows_max" not in pointer and version.subject_rows_max is None
