"""What the policy engine is given (datasets, permissions) and what it returns (a plan)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.datasets import AccessLevel, TableSchema
from contracts.terms import Terms

__all__ = ["DEFAULT_MAX_ROWS", "DatasetInfo", "Permission", "Plan"]

DEFAULT_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class DatasetInfo:
    """One table the caller may name: a dataset of the territory, by its slug.

    In SQL the slug is written quoted (``"consommation-eau-menages"``) or with hyphens turned into underscores
    (``consommation_eau_menages``). ``physical`` is the DuckDB relation holding the rows; only the rewritten SQL
    names it.

    ``has_subject_hash``: the relation also holds the hidden column ``__maillage_sh`` (UBIGINT), the 64-bit hash of
    the ``subject_key`` written at ingestion (see :data:`exchange.policy.scans.SUBJECT_HASH_COLUMN`); the k count then
    counts distinct hashes instead of distinct subject values (faster, never more than the distinct subjects).
    """

    slug: str
    physical: str
    schema: TableSchema
    access: AccessLevel
    has_subject_hash: bool = False


@dataclass(frozen=True)
class Permission:
    """What the caller may compute on one dataset.

    ``terms`` is None for an open dataset read without an agreement (every column, row level).
    ``consent_filter`` is a trusted SQL predicate over the dataset's own columns (built by the exchange, e.g.
    ``meter_id IN (SELECT subject FROM consent_x)``), applied with the row filter.
    """

    dataset: str
    terms: Terms | None = None
    consent_filter: str | None = None


@dataclass(frozen=True)
class Plan:
    """A checked and rewritten query.

    ``sql`` is what the sandboxed worker runs. ``normalized`` is the caller's SQL as parsed (comments dropped,
    keywords and spacing canonical) and ``sql_hash`` its SHA-256, for the audit trail. ``aggregated``: a dataset
    under ``aggregation: required`` is read; ``k`` is then the largest k of those datasets. When ``k_column`` is
    set, it is the last column of the result: the number of distinct data subjects behind each row; the executor
    drops rows whose value is below ``k`` (groups below k are already removed inside the SQL, so this is a second
    line of defence) and then drops the column. A NULL value means no protected group contributes to the row (the
    unmatched side of an outer join with open data). ``k_column`` is None for row-level results, and when protected
    data only appears in expression subqueries (suppressed inside the SQL).
    """

    sql: str
    normalized: str
    sql_hash: str
    datasets: tuple[str, ...]
    aggregated: bool
    k: int | None
    k_column: str | None
    max_rows: int
    suppressed_column: str | None = None
