"""Validate a sample data file against a dataset's Table Schema (frictionless), reporting row and field."""

from __future__ import annotations

from typing import Any

from frictionless import Resource, Schema

from catalog.schemas import SampleError, SampleReport
from contracts.datasets import TableSchema
from kit.errors import Unprocessable

__all__ = ["MAX_ERRORS", "frictionless_schema", "validate_sample"]

MAX_ERRORS = 100
_MAILLAGE_FLAGS = {"personal", "identifier", "subject_key"}


def frictionless_schema(schema: TableSchema) -> dict[str, Any]:
    """The Table Schema descriptor frictionless reads (Maillage's privacy flags left out)."""
    descriptor = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
    descriptor["fields"] = [
        {key: value for key, value in field.items() if key not in _MAILLAGE_FLAGS} for field in descriptor["fields"]
    ]
    return descriptor


def validate_sample(schema: TableSchema, data: bytes, *, file_format: str = "csv") -> SampleReport:
    """Check ``data`` (CSV: UTF-8 or Latin-1, ``,`` or ``;``) against ``schema``; every error with row and field.

    Cell values are never copied into the report: a sample may hold personal data.
    """
    if not data.strip():
        raise Unprocessable("the sample file is empty", code="sample.empty")
    try:
        resource = Resource(data=data, format=file_format, schema=Schema.from_descriptor(frictionless_schema(schema)))
        report = resource.validate(limit_errors=MAX_ERRORS + 1)
    except Exception as exc:  # noqa: BLE001 - frictionless raises many types on unreadable input
        raise Unprocessable(
            f"the sample could not be read as {file_format}: {type(exc).__name__}", code="sample.unreadable"
        ) from exc
    errors = []
    for row_number, field_name, code, note in report.flatten(["rowNumber", "fieldName", "type", "note"]):
        errors.append(
            SampleError(
                row=row_number,
                field=field_name or None,
                code=code,
                message=_message(code, row_number, field_name, note),
            )
        )
    task = report.tasks[0] if report.tasks else None
    rows = int(task.stats.get("rows", 0) or 0) if task is not None else 0
    return SampleReport(
        valid=report.valid,
        rows_checked=rows,
        errors=errors[:MAX_ERRORS],
        truncated=len(errors) > MAX_ERRORS,
        schema_fields=[field.name for field in schema.fields],
    )


def _message(code: str, row: int | None, field: str | None, note: str | None) -> str:
    where = ", ".join(part for part in (f"row {row}" if row else "", f"field {field}" if field else "") if part)
    text = code.replace("-", " ")
    if note:
        text = f"{text}: {note}"
    return f"{where}: {text}" if where else text
