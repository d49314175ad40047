"""The terms of a sharing agreement: the policy the exchange enforces (shared by the registry and the exchange).

Terms are immutable per version and identified by the SHA-256 of their canonical JSON. Unknown fields make them
invalid (fail closed). :func:`check_against_dataset` adds the checks that need the dataset's published metadata.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from contracts.datasets import AccessLevel, DatasetMetadata, DataStatus, parse_dataset_id, parse_iso_duration
from contracts.identifiers import validate_siren, validate_siret
from contracts.vocabularies import DPV_PURPOSES, LegalBasis

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "Aggregation",
    "NoiseBudget",
    "Purpose",
    "Quota",
    "RowPredicate",
    "Terms",
    "TermsError",
    "check_against_dataset",
    "terms_hash",
    "validate_organisation_id",
]

AggregateFunction = Literal["count", "count_distinct", "sum", "avg", "min", "max", "median", "stddev"]
AGGREGATE_FUNCTIONS: tuple[AggregateFunction, ...] = (
    "count",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "median",
    "stddev",
)


def _default_functions() -> list[AggregateFunction]:
    return ["count", "sum", "avg"]


_STRICT = ConfigDict(extra="forbid", frozen=True)
ColumnName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
Scalar = str | int | float | bool


class TermsError(ValueError):
    """Terms that cannot be enforced on the dataset they name; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def validate_organisation_id(value: str) -> str:
    """A consumer is a territory (SIREN) or a partner organisation (SIRET)."""
    return validate_siret(value) if len(value) == 14 else validate_siren(value)


def _dataset(value: str) -> str:
    parse_dataset_id(value)
    return value


class Purpose(BaseModel):
    """Why the data is processed: a W3C DPV purpose and the concrete purpose in words."""

    model_config = _STRICT

    iri: str = Field(description="a W3C DPV purpose IRI")
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=1000)]

    @field_validator("iri")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DPV_PURPOSES:
            raise ValueError(f"unknown purpose {value!r}; accepted DPV purposes: {', '.join(sorted(DPV_PURPOSES))}")
        return value


class Operator(StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not_in"
    BETWEEN = "between"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"


class RowPredicate(BaseModel):
    """One condition every released row satisfies (predicates of a row filter are ANDed)."""

    model_config = _STRICT

    column: ColumnName
    op: Operator
    values: list[Scalar] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _arity(self) -> RowPredicate:
        expected = {Operator.IS_NULL: 0, Operator.IS_NOT_NULL: 0, Operator.BETWEEN: 2}
        if self.op in expected and len(self.values) != expected[self.op]:
            raise ValueError(f"operator {self.op.value} takes {expected[self.op]} value(s)")
        if self.op in (Operator.IN, Operator.NOT_IN) and not self.values:
            raise ValueError(f"operator {self.op.value} takes at least one value")
        if self.op not in expected and self.op not in (Operator.IN, Operator.NOT_IN) and len(self.values) != 1:
            raise ValueError(f"operator {self.op.value} takes exactly one value")
        return self


class Aggregation(BaseModel):
    """``none``: row-level results (never on personal data). ``required``: only aggregates of groups covering at
    least ``min_group_size`` distinct data subjects are released."""

    model_config = _STRICT

    mode: Literal["none", "required"]
    min_group_size: int | None = Field(default=None, description="k, counted on distinct data subjects")
    functions: list[AggregateFunction] = Field(default_factory=_default_functions)
    forbidden_group_keys: list[ColumnName] = Field(default_factory=list, max_length=500)
    min_max_on_personal: bool = Field(default=False, description="allow MIN/MAX on personal columns")

    @model_validator(mode="after")
    def _coherent(self) -> Aggregation:
        if self.mode == "required":
            if self.min_group_size is None:
                raise ValueError("aggregation 'required' needs min_group_size")
            if self.min_group_size < 2:
                raise ValueError("min_group_size must be at least 2")
            if not self.functions:
                raise ValueError("aggregation 'required' needs at least one allowed aggregate function")
        elif self.min_group_size is not None:
            raise ValueError("min_group_size applies to aggregation 'required' only")
        return self


class NoiseBudget(BaseModel):
    """Differential privacy: Laplace noise of ``epsilon_per_query``, within ``epsilon_per_period`` per ``period``."""

    model_config = _STRICT

    mechanism: Literal["laplace"] = "laplace"
    epsilon_per_query: float = Field(gt=0, le=10)
    epsilon_per_period: float = Field(gt=0, le=100)
    period: str = Field(default="P1D", description="ISO 8601 duration")

    @model_validator(mode="after")
    def _coherent(self) -> NoiseBudget:
        parse_iso_duration(self.period)
        if self.epsilon_per_query > self.epsilon_per_period:
            raise ValueError("epsilon_per_query exceeds the period's budget")
        return self


class Quota(BaseModel):
    """Limits per agreement and per day (UTC)."""

    model_config = _STRICT

    queries_per_day: int = Field(default=1000, ge=1, le=1_000_000)
    rows_out_per_day: int = Field(default=1_000_000, ge=1)
    bytes_out_per_day: int = Field(default=1_000_000_000, ge=1)


class Terms(BaseModel):
    """What the consumer may compute on the dataset, for which purpose, until when."""

    model_config = _STRICT

    dataset: Annotated[str, AfterValidator(_dataset)] = Field(description="<SIREN>/<slug>")
    consumer: Annotated[str, AfterValidator(validate_organisation_id)] = Field(
        description="SIRET of a partner organisation or SIREN of a territory"
    )
    purpose: Purpose
    legal_basis: LegalBasis
    columns: list[ColumnName] = Field(min_length=1, max_length=500, description="the only columns that exist")
    row_filter: list[RowPredicate] = Field(default_factory=list, max_length=50)
    aggregation: Aggregation
    noise: NoiseBudget | None = None
    quota: Quota = Field(default_factory=Quota)
    valid_from: datetime
    valid_until: datetime
    consent_purpose: str | None = Field(default=None, description="DPV purpose IRI of the consents computed on")

    @field_validator("columns")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a column is listed twice")
        return value

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("validity dates need a time zone (e.g. 2027-01-01T00:00:00Z)")
        return value

    @field_validator("consent_purpose")
    @classmethod
    def _known_consent_purpose(cls, value: str | None) -> str | None:
        if value is not None and value not in DPV_PURPOSES:
            raise ValueError(f"unknown consent purpose {value!r}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Terms:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        if self.legal_basis is LegalBasis.CONSENT and self.consent_purpose is None:
            raise ValueError("a consent-based agreement names the consent_purpose it computes on")
        if self.legal_basis is not LegalBasis.CONSENT and self.consent_purpose is not None:
            raise ValueError("consent_purpose applies to consent-based agreements only")
        if self.noise is not None and self.aggregation.mode != "required":
            raise ValueError("noise applies to aggregated results only")
        return self

    @property
    def provider(self) -> str:
        """SIREN of the territory that holds the dataset."""
        return parse_dataset_id(self.dataset)[0]


def terms_hash(terms: Terms) -> str:
    """SHA-256 of the canonical JSON of ``terms`` (sorted keys, no whitespace)."""
    canonical = json.dumps(terms.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_against_dataset(terms: Terms, metadata: DatasetMetadata, *, now: datetime) -> None:
    """Raise :class:`TermsError` when the terms cannot be enforced on this dataset as published."""
    schema = metadata.table_schema
    names = {field.name for field in schema.fields}
    for column in terms.columns:
        if column not in names:
            raise TermsError("terms.unknown_column", f"column {column} does not exist in {terms.dataset}")
    for predicate in terms.row_filter:
        if predicate.column not in names:
            raise TermsError("terms.unknown_column", f"row filter column {predicate.column} does not exist")
    for column in terms.aggregation.forbidden_group_keys:
        if column not in names:
            raise TermsError("terms.unknown_column", f"forbidden group key {column} does not exist")
    personal = metadata.status is DataStatus.PERSONAL
    if personal and terms.aggregation.mode != "required":
        raise TermsError("terms.row_level_personal", "row-level access to personal data is refused: aggregate")
    if metadata.access is AccessLevel.PROTECTED and terms.aggregation.mode != "required":
        raise TermsError("terms.row_level_protected", "a protected dataset is shared as aggregates only")
    if personal and terms.legal_basis is not metadata.legal_basis and terms.legal_basis is not LegalBasis.CONSENT:
        raise TermsError(
            "terms.legal_basis_mismatch",
            f"the dataset is processed under {metadata.legal_basis}; an agreement rests on it or on consent",
        )
    if terms.valid_until <= now:
        raise TermsError("terms.validity_in_past", "valid_until is in the past")
    if terms.aggregation.mode == "required":
        identifiers = [f.name for f in schema.fields if f.identifier]
        missing = [name for name in identifiers if name not in terms.aggregation.forbidden_group_keys]
        if missing:
            raise TermsError(
                "terms.identifier_group_key",
                f"identifier columns {', '.join(missing)} must be forbidden group keys",
            )
        if personal and schema.subject_key is None:
            raise TermsError("terms.no_subject_key", "the dataset declares no subject_key to count subjects on")
