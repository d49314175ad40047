"""Dataset metadata, aligned with DCAT-AP 3, and the dataset's Table Schema with privacy flags.

Shared by the catalog (which stores and advertises it), the exchange (which enforces policies on the columns it
declares) and every federated index. Validation is strict: unknown fields are refused, and so are incoherent
combinations (personal data with open access, a personal dataset without a legal basis or a ``subject_key``, ...).
Every refusal carries a reason a steward can act on.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    StringConstraints,
    field_validator,
    model_validator,
)

from contracts.identifiers import NodeId, Siren, Slug, validate_siren, validate_slug
from contracts.vocabularies import LICENCES, DataTheme, Frequency, LegalBasis

__all__ = [
    "AccessLevel",
    "ContactPoint",
    "DataStatus",
    "DatasetMetadata",
    "FieldConstraints",
    "Granularity",
    "Hosting",
    "PublishedDataset",
    "Retention",
    "SchemaField",
    "SpatialCoverage",
    "TableSchema",
    "TemporalCoverage",
    "dataset_id",
    "distribution_formats",
    "parse_dataset_id",
    "parse_iso_duration",
    "parse_wkt_polygon",
]


class DataStatus(StrEnum):
    """The four statuses of the territories' data guide; each sets a default policy."""

    PERSONAL = "personal"
    PUBLIC = "public"
    GENERAL_INTEREST = "general-interest"
    PRIVATE_TERRITORIAL_INTEREST = "private-territorial-interest"


class AccessLevel(StrEnum):
    """open: anyone downloads; restricted: under an agreement; protected: aggregates only, under an agreement."""

    OPEN = "open"
    RESTRICTED = "restricted"
    PROTECTED = "protected"


def dataset_id(siren: str, slug: str) -> str:
    """``<SIREN>/<slug>``, both validated."""
    return f"{validate_siren(siren)}/{validate_slug(slug)}"


def parse_dataset_id(value: str) -> tuple[str, str]:
    """Split and validate ``<SIREN>/<slug>``; ValueError otherwise."""
    siren, sep, slug = value.partition("/")
    if not sep:
        raise ValueError("a dataset id reads <SIREN>/<slug>")
    return validate_siren(siren), validate_slug(slug)


_DURATION_RE = re.compile(r"^P(?:(\d{1,3})Y)?(?:(\d{1,4})M)?(?:(\d{1,3})W)?(?:(\d{1,5})D)?$")


def parse_iso_duration(value: str) -> tuple[int, int, int]:
    """An ISO 8601 date duration (``P5Y``, ``P18M``, ``P2W``, ``P30D``) as (years, months, days), else ValueError."""
    match = _DURATION_RE.match(value)
    if match is None or value == "P" or not any(match.groups()):
        raise ValueError(f"{value!r} is not an ISO 8601 duration such as P5Y, P18M or P30D")
    years, months, weeks, days = (int(part) if part else 0 for part in match.groups())
    if years == months == weeks == days == 0:
        raise ValueError("the duration must not be zero")
    return years, months, weeks * 7 + days


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_POLYGON_RE = re.compile(r"^\s*POLYGON\s*\(\s*\((?P<ring>[^()]*)\)\s*\)\s*$", re.IGNORECASE)
_POINT_RE = re.compile(rf"^\s*({_NUMBER})\s+({_NUMBER})\s*$")


def parse_wkt_polygon(value: str) -> list[tuple[float, float]]:
    """The ring of a WKT ``POLYGON ((lon lat, ...))`` in WGS 84 (CRS84 axis order); ValueError with the reason."""
    if len(value) > 10_000:
        raise ValueError("WKT too long (10,000 characters at most)")
    match = _POLYGON_RE.match(value)
    if match is None:
        raise ValueError("WKT must be a single POLYGON ((lon lat, lon lat, ...)) with one ring")
    points = []
    for raw in match.group("ring").split(","):
        point = _POINT_RE.match(raw)
        if point is None:
            raise ValueError(f"WKT point {raw.strip()!r} is not 'longitude latitude'")
        lon, lat = float(point.group(1)), float(point.group(2))
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"WKT point ({lon} {lat}) is outside WGS 84 longitude/latitude ranges")
        points.append((lon, lat))
    if len(points) < 4:
        raise ValueError("a WKT polygon ring needs at least four points (the last repeating the first)")
    if points[0] != points[-1]:
        raise ValueError("the WKT polygon ring is not closed (its last point must repeat the first)")
    # Shoelace area: a ring whose points are all aligned covers nothing.
    area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False)) / 2
    if area == 0:
        raise ValueError("the WKT polygon has no area")
    return points


def _wkt(value: str) -> str:
    parse_wkt_polygon(value)
    return value.strip()


ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000)]
Keyword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=64)]
InseeCode = Annotated[str, StringConstraints(pattern=r"^(?:[013-9]\d|2[AB1-9])\d{3}$")]
FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
WktPolygon = Annotated[str, AfterValidator(_wkt)]

_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ContactPoint(BaseModel):
    """A functional contact (a service mailbox, not a person's)."""

    model_config = _STRICT

    name: ShortText
    email: EmailStr


class SpatialCoverage(BaseModel):
    model_config = _STRICT

    communes: list[InseeCode] = Field(default_factory=list, max_length=3000, description="INSEE commune codes")
    bbox: WktPolygon | None = Field(default=None, description="WKT POLYGON in WGS 84, longitude first")

    @model_validator(mode="after")
    def _something(self) -> SpatialCoverage:
        if not self.communes and self.bbox is None:
            raise ValueError("spatial coverage needs INSEE commune codes, a WKT bounding box, or both")
        if len(set(self.communes)) != len(self.communes):
            raise ValueError("spatial coverage lists a commune twice")
        return self


class TemporalCoverage(BaseModel):
    model_config = _STRICT

    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TemporalCoverage:
        if self.start is None and self.end is None:
            raise ValueError("temporal coverage needs a start, an end, or both")
        if self.start and self.end and self.start > self.end:
            raise ValueError("temporal coverage ends before it starts")
        return self


class Granularity(BaseModel):
    """What one row describes, in space and in time."""

    model_config = _STRICT

    spatial: ShortText | None = Field(default=None, description="e.g. 'compteur', 'arrêt', 'compteur d'eau'")
    temporal: str | None = Field(default=None, description="ISO 8601 duration of one row, e.g. PT1H, P1D, P1M")

    @field_validator("temporal")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value in ("P", "PT") or not re.fullmatch(r"P(?:\d+[YMWD])*(?:T(?:\d+[HMS])+)?", value):
            raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT1H, P1D or P1M")
        return value


class Retention(BaseModel):
    """How long rows are kept, counted on ``time_column``; expired rows are purged."""

    model_config = _STRICT

    period: str = Field(description="ISO 8601 duration, e.g. P5Y")
    time_column: FieldName

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        parse_iso_duration(value)
        return value


class Hosting(BaseModel):
    """Where the data physically lives (sovereignty)."""

    model_config = _STRICT

    node: NodeId
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    provider: ShortText | None = None


FieldType = Literal[
    "string",
    "number",
    "integer",
    "boolean",
    "date",
    "datetime",
    "time",
    "year",
    "yearmonth",
    "duration",
    "geopoint",
    "geojson",
    "object",
    "array",
    "any",
]


class FieldConstraints(BaseModel):
    """Table Schema field constraints."""

    model_config = _STRICT

    required: bool | None = None
    unique: bool | None = None
    minimum: float | int | str | None = None
    maximum: float | int | str | None = None
    min_length: int | None = Field(default=None, alias="minLength", ge=0)
    max_length: int | None = Field(default=None, alias="maxLength", ge=0)
    pattern: str | None = Field(default=None, max_length=1000)
    enum: list[Any] | None = Field(default=None, max_length=1000)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from exc
        return value


class SchemaField(BaseModel):
    """A Table Schema field with Maillage's privacy flags.

    ``personal``: the column holds personal data. ``identifier``: the column identifies a row or a person (never a
    group key nor a filter under aggregation). ``subject_key``: the column identifying the data subject, on which
    k-anonymity counts distinct subjects and data-subject requests find their rows.
    """

    model_config = _STRICT

    name: FieldName
    type: FieldType = "string"
    format: str | None = Field(default=None, max_length=64)
    title: ShortText | None = None
    description: LongText | None = None
    example: Any = None
    constraints: FieldConstraints | None = None
    personal: bool = False
    identifier: bool = False
    subject_key: bool = False

    @model_validator(mode="after")
    def _subject_key_is_personal_identifier(self) -> SchemaField:
        if self.subject_key and not (self.personal and self.identifier):
            raise ValueError(f"field {self.name}: a subject_key is also personal and an identifier")
        return self


_TABLE_SCHEMA_KEYS = {"fields", "primaryKey", "missingValues"}


class TableSchema(BaseModel):
    """The dataset's Table Schema (frictionless), restricted to what Maillage checks and enforces."""

    model_config = _STRICT

    fields: list[SchemaField] = Field(min_length=1, max_length=500)
    primary_key: list[FieldName] | None = Field(default=None, alias="primaryKey")
    missing_values: list[str] | None = Field(default=None, alias="missingValues", max_length=20)

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _coherent(self) -> TableSchema:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("the schema declares a field name twice")
        for key in self.primary_key or []:
            if key not in names:
                raise ValueError(f"primaryKey names {key}, which is not a field")
        if sum(f.subject_key for f in self.fields) > 1:
            raise ValueError("at most one field is the subject_key")
        return self

    @classmethod
    def from_standard(cls, document: dict[str, Any], flags: dict[str, dict[str, bool]] | None = None) -> TableSchema:
        """A published standard schema (e.g. schema.data.gouv.fr) used as is, plus Maillage flags per field.

        Schema-level descriptive keys (name, title, homepage, contributors...) are described by ``conforms_to``.
        """
        flags = flags or {}
        fields = [{**field, **flags.get(field["name"], {})} for field in document["fields"]]
        return cls.model_validate({**{k: v for k, v in document.items() if k in _TABLE_SCHEMA_KEYS}, "fields": fields})

    def field(self, name: str) -> SchemaField | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def subject_key(self) -> SchemaField | None:
        return next((f for f in self.fields if f.subject_key), None)


_TIME_TYPES = {"date", "datetime", "year", "yearmonth"}


class DatasetMetadata(BaseModel):
    """What a steward describes about a dataset (the server adds ids, versions, dates and publisher)."""

    model_config = _STRICT

    title: ShortText
    description: LongText
    language: Literal["fr"] = "fr"
    theme: list[DataTheme] = Field(min_length=1, max_length=5)
    keywords: list[Keyword] = Field(default_factory=list, max_length=30)
    status: DataStatus
    access: AccessLevel
    licence: str | None = Field(default=None, description="licence URI; required when access is open")
    contact_point: ContactPoint
    spatial: SpatialCoverage
    temporal: TemporalCoverage | None = None
    frequency: Frequency
    granularity: Granularity | None = None
    conforms_to: HttpUrl | None = Field(default=None, description="URL of the standard schema the data follows")
    table_schema: TableSchema
    retention: Retention | None = None
    hosting: Hosting
    legal_basis: LegalBasis | None = Field(default=None, description="GDPR art. 6 basis, for personal data")
    version: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")] = "1.0.0"
    external_csv_url: HttpUrl | None = Field(
        default=None,
        description="open data served elsewhere than by the node's exchange (e.g. the registry's public register): "
        "its only distribution is this CSV",
    )

    @field_validator("licence")
    @classmethod
    def _known_licence(cls, value: str | None) -> str | None:
        if value is not None and value not in LICENCES:
            raise ValueError(f"unknown licence URI; accepted: {', '.join(sorted(LICENCES))}")
        return value

    @field_validator("keywords")
    @classmethod
    def _distinct_keywords(cls, value: list[str]) -> list[str]:
        if len({k.casefold() for k in value}) != len(value):
            raise ValueError("a keyword is listed twice")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> DatasetMetadata:
        schema = self.table_schema
        personal_fields = [f.name for f in schema.fields if f.personal]
        if self.status is DataStatus.PERSONAL:
            if self.access is not AccessLevel.PROTECTED:
                raise ValueError("personal data must be protected: access 'open' or 'restricted' is refused")
            if self.legal_basis is None:
                raise ValueError("a personal dataset needs its GDPR legal basis (legal_basis)")
            if schema.subject_key is None:
                raise ValueError("a personal dataset needs one field flagged subject_key")
            if self.retention is None:
                raise ValueError("a personal dataset needs a retention period")
        elif personal_fields:
            raise ValueError(
                f"fields {', '.join(personal_fields)} are flagged personal, so the status must be 'personal'"
            )
        elif self.legal_basis is not None:
            raise ValueError("legal_basis applies to personal data only")
        if self.access is AccessLevel.OPEN and self.licence is None:
            raise ValueError("an open dataset needs a licence (licence URI)")
        if self.external_csv_url is not None and self.access is not AccessLevel.OPEN:
            raise ValueError("external_csv_url is for open data only")
        if self.retention is not None:
            column = schema.field(self.retention.time_column)
            if column is None:
                raise ValueError(f"retention.time_column {self.retention.time_column} is not a field of the schema")
            if column.type not in _TIME_TYPES:
                raise ValueError(f"retention.time_column {column.name} must be a date, datetime, year or yearmonth")
        return self


class PublishedDataset(BaseModel):
    """A published version of a dataset as advertised to the federation (the payload of catalog events)."""

    model_config = _STRICT

    id: str = Field(description="<SIREN>/<slug>")
    territory: Siren
    slug: Slug
    uri: HttpUrl = Field(description="stable dataset URI, also its dct:identifier")
    publisher_name: ShortText
    node: NodeId
    catalog_url: HttpUrl
    exchange_url: HttpUrl
    revision: int = Field(ge=1, description="catalog revision of this metadata (increases on every edit)")
    created: datetime
    modified: datetime
    published: datetime
    metadata: DatasetMetadata

    @model_validator(mode="after")
    def _id_matches(self) -> PublishedDataset:
        if self.id != dataset_id(self.territory, self.slug):
            raise ValueError("id must be <territory>/<slug>")
        return self


def distribution_formats(metadata: DatasetMetadata) -> tuple[str, ...]:
    """Formats a dataset is distributed in: files for open data, the query service otherwise."""
    if metadata.access is not AccessLevel.OPEN:
        return ("API",)
    return ("CSV",) if metadata.external_csv_url is not None else ("CSV", "Parquet")
