"""``maillage ingest``: send a CSV or Parquet file to a territory's dataset, with a progress bar and the report.

By default the file is uploaded to the exchange's ingestion endpoint
(``POST /v1/territories/{siren}/datasets/{slug}/data?mode=append|replace``, the file as the raw body) with a
steward key. ``--local --data-dir DIR`` ingests straight into an exchange's data directory instead (offline, on
the node itself; the exchange should not be writing the same dataset meanwhile, the dataset lock makes it wait).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from contracts.identifiers import SubjectTokenError, validate_siren, validate_slug
from kit.pseudonyms import DEVELOPMENT_SECRET

__all__ = ["ingest"]

_CHUNK = 256 * 1024
_CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class IngestMode(StrEnum):
    APPEND = "append"
    REPLACE = "replace"  # upper case: a member named ``replace`` would shadow str.replace


class FileFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


def _console() -> Console:
    return Console(log_path=False, highlight=False)


def _fail(console: Console, message: str, code: int = 1) -> typer.Exit:
    console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)
    return typer.Exit(code)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def ingest(
    territory: Annotated[str, typer.Option("--territory", help="SIREN of the territory, e.g. 242100410.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Slug of the dataset, e.g. comptages-velo.")],
    file: Annotated[
        Path, typer.Option("--file", exists=True, dir_okay=False, readable=True, help="The CSV or Parquet file.")
    ],
    url: Annotated[str, typer.Option("--url", help="Base URL of the territory's exchange.")] = "http://127.0.0.1:8102",
    mode: Annotated[
        IngestMode, typer.Option("--mode", help="append: add to the current rows; replace: only these rows.")
    ] = IngestMode.APPEND,
    key: Annotated[
        str | None, typer.Option("--key", envvar="MAILLAGE_KEY", help="Steward key (or MAILLAGE_KEY).")
    ] = None,
    file_format: Annotated[
        FileFormat | None, typer.Option("--format", help="Default: from the file's extension (.parquet or CSV).")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Ingest into --data-dir directly, without a server.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="With --local: the exchange's data directory.")
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option("--schema", help="With --local: the Table Schema (JSON); default: the current version's."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for the server's report.")] = 600.0,
) -> None:
    """Ingest a CSV (UTF-8 or Latin-1, ',' or ';') or Parquet file into a dataset; every row is validated first."""
    console = _console()
    try:
        siren, slug = validate_siren(territory), validate_slug(dataset)
    except SubjectTokenError as exc:
        raise _fail(console, str(exc), 2) from None
    chosen = (file_format or (FileFormat.PARQUET if file.suffix.lower() == ".parquet" else FileFormat.CSV)).value
    if local:
        if data_dir is None:
            raise _fail(console, "--local needs --data-dir (the exchange's data directory)", 2)
        report = _ingest_locally(console, data_dir, siren, slug, file, chosen, mode.value, schema)
    else:
        if not key:
            raise _fail(console, "a steward key is needed: --key or MAILLAGE_KEY", 2)
        report = _upload(console, url, key, siren, slug, file, chosen, mode.value, timeout)
    _print_report(console, report)
    if not report.get("valid"):
        raise typer.Exit(1)


def _upload(
    console: Console, url: str, key: str, siren: str, slug: str, file: Path, file_format: str, mode: str, timeout: float
) -> dict[str, Any]:
    endpoint = f"{url.rstrip('/')}/v1/territories/{siren}/datasets/{slug}/data"
    size = file.stat().st_size
    with _progress(console) as progress:
        task = progress.add_task(f"uploading {file.name}", total=size)

        def body() -> Iterator[bytes]:
            with file.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    progress.update(task, advance=len(chunk))
                    yield chunk
            # Every byte is sent: what remains is the server validating and writing.
            progress.update(task, description="validating on the exchange")

        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": _CONTENT_TYPES[file_format],
            # With the length known, httpx streams the body without chunked encoding.
            "Content-Length": str(size),
        }
        try:
            with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), trust_env=False) as client:
                response = client.post(endpoint, params={"mode": mode}, content=body(), headers=headers)
        except httpx.ConnectError:
            raise _fail(console, f"cannot reach the exchange at {url}") from None
        except httpx.TimeoutException:
            raise _fail(console, f"the exchange did not answer within {timeout:.0f} s") from None
        except httpx.HTTPError as exc:
            raise _fail(console, f"the upload failed: {type(exc).__name__}") from None
    return _report_of(console, response)


def _report_of(console: Console, response: httpx.Response) -> dict[str, Any]:
    """The ingestion report in the answer: the body itself on success, ``report`` in an error body on refusal."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        report = body.get("report") if isinstance(body.get("report"), dict) else body
        if isinstance(report, dict) and "valid" in report:
            return report
        detail = body.get("detail") or body.get("error")
        if detail:
            raise _fail(console, f"{response.status_code}: {detail}")
    raise _fail(console, f"the exchange answered {response.status_code} without an ingestion report")


def _ingest_locally(
    console: Console,
    data_dir: Path,
    siren: str,
    slug: str,
    file: Path,
    file_format: str,
    mode: str,
    schema_file: Path | None,
) -> dict[str, Any]:
    # Imported here: the rest of the CLI does not need DuckDB, and only this offline path uses the exchange's code.
    from contracts.datasets import TableSchema
    from exchange.ingest import ingest as ingest_file
    from exchange.storage import Storage
    from kit.errors import MaillageError

    # The node's pseudonymisation secret, as the exchange reads it (subjects are hashed with the territory's key).
    storage = Storage(
        data_dir.expanduser(), pseudonym_secret=os.environ.get("MAILLAGE_PSEUDONYM_SECRET", DEVELOPMENT_SECRET)
    )
    if schema_file is not None:
        try:
            document = json.loads(schema_file.read_text(encoding="utf-8"))
            table_schema = TableSchema.from_standard(document)
        except (OSError, ValueError, KeyError) as exc:
            raise _fail(console, f"{schema_file} is not a Table Schema: {exc}") from None
    else:
        current = storage.current(siren, slug)
        if current is None:
            raise _fail(console, f"{siren}/{slug} has no data yet in {data_dir}: give its --schema")
        table_schema = current.schema()
    with _progress(console) as progress:
        task = progress.add_task(f"reading {file.name}", total=file.stat().st_size)

        def advance(count: int) -> None:
            progress.update(task, advance=count)
            if progress.tasks[0].completed >= (progress.tasks[0].total or 0):
                progress.update(task, description="validating and writing")

        try:
            report = ingest_file(
                storage,
                siren,
                slug,
                table_schema,
                file,
                file_format="parquet" if file_format == "parquet" else "csv",
                mode="replace" if mode == "replace" else "append",
                progress=advance,
            )
        except MaillageError as exc:
            raise _fail(console, exc.detail) from None
    return report.model_dump(mode="json")


def _print_report(console: Console, report: dict[str, Any]) -> None:
    where = f"{report.get('territory')}/{report.get('dataset')}"
    if report.get("valid"):
        added, total, version = report.get("rows_added", 0), report.get("rows_total"), report.get("version")
        skipped = report.get("rows_skipped") or 0
        verb = "replaced by" if report.get("mode") == "replace" else "appended:"
        line = f"[green]✔[/] {where} {verb} {added:,} row(s); now version {version}"
        if total is not None:
            line += f" with {total:,} row(s)"
        if skipped:
            line += f" ({skipped:,} duplicate(s) skipped)"
        console.print(line, soft_wrap=True)
        details = [f"{report.get('bytes_read', 0):,} bytes", f"{report.get('duration_seconds', 0):.2f} s"]
        if report.get("encoding"):
            details.append(f"encoding {report['encoding']}, delimiter {report.get('delimiter')!r}")
        console.print("  " + ", ".join(details), soft_wrap=True, markup=False)
        return
    errors = report.get("errors") or []
    count = report.get("error_count", len(errors))
    console.print(f"[red]✘[/] {where}: the data was refused, nothing changed ({count:,} problem(s))", soft_wrap=True)
    table = Table(show_edge=False)
    table.add_column("row", justify="right", no_wrap=True)
    table.add_column("field", no_wrap=True)
    table.add_column("problem")
    for error in errors:
        row = error.get("row")
        table.add_row("" if row is None else str(row), error.get("field") or "", Text(str(error.get("message", ""))))
    console.print(table)
    if count > len(errors):
        console.print(f"… and {count - len(errors):,} more", soft_wrap=True)
