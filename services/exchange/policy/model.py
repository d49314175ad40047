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

    ``subject_rows_max`` (with ``has_subject_hash``): no hash value holds more rows of the relation than this. A group
    of n rows read from the relation alone then covers at least n // subject_rows_max distinct hashes, a free lower
    bound that releases most groups without counting distinct subjects. An overestimate only weakens the bound; an
    underestimate would be unsound, so the exchange records it at ingestion over the whole stored table, with
    ``subjects``, the number of distinct hash values: the bound is used only when contributions are even (the most
    rows of one subject at most twice the mean), where it tends to release whole queries; on skewed data it would
    leave most groups to a second scan, and the distinct-bucket bound is cheaper.
    """

    slug: str
    physical: str
    schema: TableSchema
    access: AccessLevel
    has_subject_hash: bool = False
    subject_rows_max: int | None = None
    subjects: int | None = None
    rows: int | None = None  # the relation's row count, for the mean


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
