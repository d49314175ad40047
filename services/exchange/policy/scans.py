"""What one dataset looks like to a caller: its granted columns, the rows it may see, how subjects are counted.

:func:`source` turns a (dataset, permission) pair into a :class:`Source`; :meth:`Source.scan` builds the subquery
that replaces every mention of the dataset in a query::

    (SELECT <granted columns>[, <subject> AS __maillage_s] FROM <physical> WHERE <row filter> AND <consent>) AS t

so columns outside the grant and rows outside the filter do not exist for anything the caller writes around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp

from contracts.datasets import AccessLevel
from contracts.terms import Operator, RowPredicate
from kit.pseudonyms import pseudonym_sql

from .errors import TABLE_NOT_ALLOWED, UNSUPPORTED_SHAPE, PolicyError
from .model import DatasetInfo, Permission

__all__ = ["SUBJECT_COLUMN", "SUBJECT_HASH_COLUMN", "SUBJECT_HASH_VERSION", "Source", "source", "subject_hash_sql"]

SUBJECT_COLUMN = "__maillage_s"
# Hidden column of the stored DuckDB table (never of the Parquet export): a 64-bit hash of the subject_key, written
# at ingestion with :func:`subject_hash_sql`. Counting distinct hashes instead of distinct subjects is cheaper (a
# fixed-width integer) and can only count fewer: equal subjects have equal hashes, and a collision merges two
# subjects into one. So a group whose hash count is at least k has at least k distinct subjects.
SUBJECT_HASH_COLUMN = "__maillage_sh"
# The hash's definition, recorded with each stored version (current.json): hashes are only compared (UNION ALL, joins
# of datasets sharing subjects) when every version was written with this same definition (and the same territory
# key). A keyed HMAC rather than DuckDB's hash() (whose values may change between releases) or a plain digest (which
# anyone could recompute from a candidate identifier); the earlier "md5-64-v1" versions count by value until
# re-ingested.
SUBJECT_HASH_VERSION = "hmac-sha256-64-v1"


def subject_hash_sql(column: str, key: bytes) -> str:
    """SQL computing the subject hash of ``column`` (a quoted identifier) with the territory's pseudonymisation key:
    the first 64 bits of HMAC-SHA256 of its text (kit.pseudonyms), the same value consent events name; NULL stays
    NULL (not counted, as count(DISTINCT subject) does not count NULL)."""
    return pseudonym_sql(column, key)


@dataclass(frozen=True)
class Source:
    """A dataset as the policy sees it for one caller."""

    slug: str
    physical: str
    visible: tuple[str, ...]
    required: bool
    k: int | None
    functions: frozenset[str]
    min_max_on_personal: bool
    identifiers: frozenset[str]
    personal: frozenset[str]
    subject: tuple[str, ...]
    row_filter: tuple[RowPredicate, ...]
    consent_filter: str | None
    subject_hash: bool = False  # count the hidden hash column instead of the subject itself
    # With subject_hash, when contributions are even: no hash value holds more rows (DatasetInfo).
    subject_rows_max: int | None = None

    def scan(self, alias: exp.Identifier, columns: list[exp.Identifier]) -> exp.Subquery:
        """The subquery standing for the dataset, aliased ``alias`` (with optional column aliases)."""
        items: list[exp.Expr] = [exp.column(name, quoted=True) for name in self.visible]
        if self.required:
            counted = exp.column(SUBJECT_HASH_COLUMN, quoted=True) if self.subject_hash else None
            items.append(exp.alias_(counted or _subject_expression(self.subject), SUBJECT_COLUMN, quoted=True))
        select = exp.Select(expressions=items).from_(_physical(self.physical).copy(), copy=False)
        conditions = [_predicate(predicate) for predicate in self.row_filter]
        if self.consent_filter is not None:
            conditions.append(exp.Paren(this=_consent(self.consent_filter).copy()))
        if conditions:
            select.where(exp.and_(*conditions, copy=False), copy=False)
        table_alias = exp.TableAlias(this=alias, columns=columns or None)
        return exp.Subquery(this=select, alias=table_alias)


def source(info: DatasetInfo, permission: Permission, *, hashed: bool = False) -> Source:
    """The :class:`Source` for ``info`` under ``permission``; refuses permissions the engine cannot enforce.

    ``hashed``: the query may count subjects by their stored hash (every dataset with a subject_key the query could
    read has it); used only when ``info`` has the hash column and its subject is its subject_key.
    """
    schema = info.schema
    names = [field.name for field in schema.fields]
    terms = permission.terms
    if terms is None:
        # No agreement: only an open dataset, read as it is published.
        if info.access is not AccessLevel.OPEN:
            raise PolicyError(TABLE_NOT_ALLOWED, f"table {info.slug} is not available to this caller")
        return Source(
            slug=info.slug,
            physical=info.physical,
            visible=tuple(names),
            required=False,
            k=None,
            functions=frozenset(),
            min_max_on_personal=False,
            identifiers=frozenset(),
            personal=frozenset(),
            subject=(),
            row_filter=(),
            consent_filter=permission.consent_filter,
        )
    granted = set(terms.columns)
    visible = tuple(name for name in names if name in granted)
    aggregation = terms.aggregation
    required = aggregation.mode == "required"
    personal = frozenset(field.name for field in schema.fields if field.personal)
    if not required and (info.access is AccessLevel.PROTECTED or personal):
        # The registry refuses such terms (check_against_dataset); never serve rows of personal data anyway.
        raise PolicyError(TABLE_NOT_ALLOWED, f"table {info.slug} is not available to this caller")
    subject: tuple[str, ...] = ()
    identifiers: frozenset[str] = frozenset()
    subject_hash = False
    if required:
        key = schema.subject_key
        if key is not None:
            subject = (key.name,)
            subject_hash = hashed and info.has_subject_hash
        elif schema.primary_key:
            # Non-personal protected data: a "subject" is a row, identified by the primary key.
            subject = tuple(schema.primary_key)
        else:
            raise PolicyError(
                UNSUPPORTED_SHAPE, f"dataset {info.slug} declares neither a subject_key nor a primary key to count on"
            )
        identifiers = frozenset(
            {field.name for field in schema.fields if field.identifier or field.subject_key}
            | set(aggregation.forbidden_group_keys)
            | ({subject[0]} if len(subject) == 1 else set())
        )
    return Source(
        slug=info.slug,
        physical=info.physical,
        visible=visible,
        required=required,
        k=aggregation.min_group_size if required else None,
        functions=frozenset(aggregation.functions),
        min_max_on_personal=aggregation.min_max_on_personal,
        identifiers=identifiers,
        personal=personal,
        subject=subject,
        row_filter=tuple(terms.row_filter),
        consent_filter=permission.consent_filter,
        subject_hash=subject_hash,
        subject_rows_max=info.subject_rows_max if subject_hash and _even(info) else None,
    )


def _even(info: DatasetInfo) -> bool:
    """Subjects contribute evenly: the most rows of one is at most twice the mean (see DatasetInfo)."""
    if info.subject_rows_max is None or not info.subjects or info.rows is None:
        return False
    return info.subject_rows_max * info.subjects <= 2 * info.rows


def _subject_expression(columns: tuple[str, ...]) -> exp.Expr:
    if len(columns) == 1:
        return exp.column(columns[0], quoted=True)
    # count(DISTINCT (a, b)) counts distinct rows of a composite key in DuckDB.
    return exp.Tuple(expressions=[exp.column(name, quoted=True) for name in columns])


def _predicate(predicate: RowPredicate) -> exp.Expr:
    column = exp.column(predicate.column, quoted=True)
    values = [exp.convert(value) for value in predicate.values]
    op = predicate.op
    result: exp.Expr
    if op is Operator.EQ:
        result = exp.EQ(this=column, expression=values[0])
    elif op is Operator.NE:
        result = exp.NEQ(this=column, expression=values[0])
    elif op is Operator.LT:
        result = exp.LT(this=column, expression=values[0])
    elif op is Operator.LE:
        result = exp.LTE(this=column, expression=values[0])
    elif op is Operator.GT:
        result = exp.GT(this=column, expression=values[0])
    elif op is Operator.GE:
        result = exp.GTE(this=column, expression=values[0])
    elif op is Operator.IN:
        result = exp.In(this=column, expressions=values)
    elif op is Operator.NOT_IN:
        result = exp.Not(this=exp.In(this=column, expressions=values))
    elif op is Operator.BETWEEN:
        result = exp.Between(this=column, low=values[0], high=values[1])
    elif op is Operator.IS_NULL:
        result = exp.Is(this=column, expression=exp.Null())
    elif op is Operator.IS_NOT_NULL:
        result = exp.Not(this=exp.Is(this=column, expression=exp.Null()))
    else:  # pragma: no cover - a new operator must be mapped here before it is enforced
        raise PolicyError(UNSUPPORTED_SHAPE, f"row filter operator {op} is not supported")
    # Parenthesised so that NULL comparisons and NOTs combine as written, whatever surrounds them.
    return exp.Paren(this=result)


@lru_cache(maxsize=256)
def _physical(name: str) -> exp.Table:
    return exp.to_table(name, dialect="duckdb")


@lru_cache(maxsize=256)
def _consent(sql: str) -> exp.Expr:
    return sqlglot.parse_one(sql, read="duckdb")
