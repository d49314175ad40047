"""The exchange's policy engine: parse, check and rewrite a caller's SQL (pure Python, no I/O).

:func:`plan` takes untrusted DuckDB SQL, the datasets the caller may name and what each agreement permits, and
returns a :class:`Plan` (the SQL to run in the sandboxed worker) or raises :class:`PolicyError` with a
``policy.<reason>`` code.

Rules
-----
* One statement, a query: SELECT, FROM-first, CTEs, derived tables, expression subqueries, UNION/INTERSECT/EXCEPT.
  Anything else (INSERT, COPY, ATTACH, PRAGMA, SET, INSTALL, LOAD, CALL, EXPLAIN, DESCRIBE, ...) is
  ``policy.not_a_select``; several statements ``policy.multiple_statements``. Comments are dropped.
* Tables are dataset slugs (``"consommation-eau-menages"`` or ``consommation_eau_menages``, any case) of the
  permissions, and CTE names. Everything else is ``policy.table_not_allowed`` with the same message whether it
  exists or not: other datasets, schema-qualified and catalog names (``main.x``, ``information_schema.tables``,
  ``duckdb_settings()``), table functions (``read_csv``, ``query``, ``range``...) and paths (``FROM '/etc/passwd'``).
* Every scan of a dataset becomes ``(SELECT <granted columns> FROM <physical> WHERE <row filter> AND <consent>)``:
  other columns and rows do not exist, in CTEs, subqueries, self-joins and set operations alike. ``*`` is expanded
  by the engine into granted columns; a reference to any other column is ``policy.unknown_column``, whether the
  column is not granted or does not exist.
* Functions and syntax are allow-listed (:mod:`exchange.policy.functions`); anything else is
  ``policy.function_not_allowed`` or ``policy.unsupported_syntax``. ``WITH RECURSIVE`` is
  ``policy.recursive_query``. Identifiers starting with ``__maillage`` are reserved for the rewrite.
* Agreements with ``aggregation: required`` (protected data): the output is aggregated
  (``policy.aggregation_required``), with the agreement's aggregate functions only
  (``policy.aggregate_not_allowed``) applied to plain columns (``policy.aggregate_argument``: an expression or a
  FILTER inside an aggregate could single out rows of a group that the k check sees as large; aggregate the column
  and compute on the aggregate), no MIN/MAX on personal columns unless the agreement allows it
  (``policy.min_max_personal``). Identifier columns (schema ``identifier``, the ``subject_key`` and
  ``forbidden_group_keys``) may only be carried through CTEs and counted: not filtered on (WHERE, JOIN ON, HAVING,
  CASE, comparisons: ``policy.identifier_filter``), not grouped on (``policy.identifier_group_key``), not otherwise
  computed on (``policy.identifier_column``). No window functions or QUALIFY (``policy.window_function``), no
  LIMIT/OFFSET on rows before aggregation (``policy.limit_not_allowed``). ROLLUP, CUBE and GROUPING SETS are refused
  everywhere (``policy.unsupported_syntax``): they release a total next to its subtotals.
* k: every aggregation over protected rows is split in two. A derived table computes the group keys, the aggregates
  and ``count(DISTINCT subject)`` with ``HAVING count(DISTINCT subject) >= k``; the caller's HAVING, ORDER BY and
  expressions over aggregates run outside it, on released groups only. The count is the last output column,
  ``__maillage_k`` (:attr:`Plan.k_column`), for the executor's second check. A query without GROUP BY is one group.
  The subject is carried through CTEs, derived tables, joins (the least count of every protected table read) and
  UNION ALL in hidden columns; an inner ``GROUP BY <subject_key>`` (one row per subject, re-aggregated outside) is
  understood. Shapes where the subject cannot be carried for sure are ``policy.unsupported_shape``: DISTINCT,
  ORDER BY, INTERSECT/EXCEPT or UNION without ALL on protected rows, protected rows in an expression subquery or
  referenced from a correlated one, subqueries in conditions on protected rows, USING between different columns,
  a query mixing protected rows and released groups.
* Subject hashes: a stored version whose DuckDB table holds the hidden ``__maillage_sh`` column (the first 64 bits
  of md5 of the subject_key, written at ingestion; :attr:`DatasetInfo.has_subject_hash`) is counted by it, when
  every dataset with a subject_key that the caller may name has it (a subject is never a hash in one table and a
  value in another). Equal subjects have equal hashes and a collision merges two subjects, so the distinct count can
  only be lower than the subjects': never a release below k (a collision, about k²/2⁶⁵ per group, could only
  suppress). When the aggregation reads dataset scans only (no CTE, derived table or subquery: rows that are the
  same multiset on every read), it runs in tiers of lower bounds, cheapest first, each computed only for the groups
  the previous one left below k (their rows, joined on the group keys with ``IS NOT DISTINCT FROM``): (1) when one
  stored table is read without joins and its subjects contribute evenly (:attr:`DatasetInfo.subject_rows_max`, the
  most rows one hash holds, at most twice the mean), the group's rows with a subject divided by that maximum —
  free, since no subject can put more rows in a group; (2) the number of distinct hash buckets
  (``bit_count(bit_or(1 << hash % 64))``, never more than the distinct subjects); (3) the exact distinct count. A
  group released by a bound carries it as its ``__maillage_k`` value; exactly the same groups are released and
  counted as suppressed as with the single-pass count. Other shapes keep the single-pass count.
* Error oracles: a runtime error (failed cast, overflow, division by zero) raised by some rows only would tell the
  caller those rows exist, whatever k says. Everything computed per protected row (WHERE, JOIN ON and their cast to
  BOOLEAN, group keys, projections, aggregate arguments) is wrapped in DuckDB's ``TRY()``, which yields NULL
  instead; expressions over aggregates run after suppression (above).
* ``aggregation: none`` (restricted, non-personal) and open datasets: row-level queries over the granted columns
  and rows, with window functions.
* The output is bounded: a ``LIMIT max_rows`` is added, or lowered to ``max_rows``. At most
  :data:`MAX_SQL_LENGTH` characters, :data:`MAX_NODES` syntax nodes and :data:`MAX_SCANS` table scans.
* The rewritten tree is checked once more before it is printed: every table is a dataset scan or a CTE of the
  query, every column one the analysis resolved (fail closed on an engine bug).

Not stopped by syntax (documented; noise budgets come later): differencing (two released aggregates whose
difference isolates a small group, within one query or across queries), complementary suppression (a total minus
released subtotals reveals a suppressed group), the dominance of one subject in a sum over k subjects, MEDIAN
releasing one subject's value when the agreement allows MEDIAN, timing side channels, and resource exhaustion by
joins or long strings that only the worker's memory, time and process limits bound.
"""

from __future__ import annotations

from .cache import PlanCache
from .engine import K_COLUMN, MAX_NODES, MAX_SCANS, MAX_SQL_LENGTH, RESERVED_PREFIX, plan
from .errors import CODES, PolicyError
from .model import DEFAULT_MAX_ROWS, DatasetInfo, Permission, Plan

__all__ = [
    "CODES",
    "DEFAULT_MAX_ROWS",
    "K_COLUMN",
    "MAX_NODES",
    "MAX_SCANS",
    "MAX_SQL_LENGTH",
    "RESERVED_PREFIX",
    "DatasetInfo",
    "Permission",
    "Plan",
    "PlanCache",
    "PolicyError",
    "plan",
]
