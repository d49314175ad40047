"""The allow-lists: which sqlglot expression classes a query may contain, by role.

Everything is listed by sqlglot class (what the DuckDB dialect parses a function name into), so that aliases of one
function (``substr``/``substring``, ``ceil``/``ceiling``) are allowed or refused together, and every function that
sqlglot does not know (``exp.Anonymous``: ``getenv``, ``current_setting``, ``read_text``, ``pragma_*``, macros…)
is refused unless its lower-cased name is in :data:`ANONYMOUS_FUNCTIONS`.

Deliberately absent: table functions and file readers (``read_*``, ``glob``, ``query``, ``range``,
``generate_series``, ``unnest``), allocation bombs (``repeat``, ``lpad``/``rpad``, list/array/map/struct
constructors, ``string_agg``/``list``), regular expressions and ``SIMILAR TO``/``GLOB`` (LIKE covers matching),
JSON, hashing and random functions, session and catalog functions (``current_user``, ``version``, ``typeof``...),
and lambdas.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp
from sqlglot.expressions.datatypes import DType

__all__ = [
    "BOOLEAN_OPERATORS",
    "AGGREGATES",
    "ANONYMOUS_FUNCTIONS",
    "CAST_TYPES",
    "PREDICATES",
    "SCALARS",
    "UNIT_PARENTS",
    "WINDOW_FUNCTIONS",
]

# Comparisons and logical operators: their result is already a BOOLEAN.
BOOLEAN_OPERATORS: Final[frozenset[type[exp.Expr]]] = frozenset(
    {
        exp.EQ,
        exp.NEQ,
        exp.GT,
        exp.GTE,
        exp.LT,
        exp.LTE,
        exp.NullSafeEQ,
        exp.NullSafeNEQ,
        exp.Is,
        exp.In,
        exp.Between,
        exp.Like,
        exp.ILike,
        exp.Not,
        exp.And,
        exp.Or,
    }
)

# Operators and comparisons; their operands are "in a predicate" for the identifier rules.
PREDICATES: Final[frozenset[type[exp.Expr]]] = BOOLEAN_OPERATORS | {exp.Case, exp.If, exp.Nullif}

SCALARS: Final[frozenset[type[exp.Expr]]] = frozenset(
    {
        # arithmetic
        exp.Add,
        exp.Sub,
        exp.Mul,
        exp.Div,
        exp.IntDiv,
        exp.Mod,
        exp.Neg,
        exp.Round,
        exp.Floor,
        exp.Ceil,
        exp.Abs,
        exp.Sign,
        exp.Sqrt,
        exp.Pow,
        exp.Ln,
        exp.Log,
        exp.Exp,
        exp.Trunc,
        # conditionals (Case, If, Nullif are PREDICATES)
        exp.Coalesce,
        exp.Greatest,
        exp.Least,
        # strings: each result is at most as long as the inputs put together (no repeat/lpad)
        exp.Lower,
        exp.Upper,
        exp.Length,
        exp.Substring,
        exp.Trim,
        exp.Concat,
        exp.DPipe,
        exp.Replace,
        exp.StartsWith,
        exp.EndsWith,
        exp.Contains,
        exp.Left,
        exp.Right,
        exp.StrPosition,
        exp.SplitPart,
        # dates and times
        exp.TimestampTrunc,
        exp.DateTrunc,
        exp.Extract,
        exp.TimeToStr,
        exp.StrToTime,
        exp.Year,
        exp.Month,
        exp.Day,
        exp.Hour,
        exp.Minute,
        exp.Second,
        exp.DayOfWeek,
        exp.DayOfWeekIso,
        exp.Week,
        exp.Quarter,
        exp.DateDiff,
        exp.DateAdd,
        exp.DateFromParts,
        exp.CurrentDate,
        exp.CurrentTimestamp,
        exp.LastDay,
        exp.Dayname,
        exp.Monthname,
        exp.Interval,
    }
)

# sqlglot does not model these DuckDB functions; they are harmless and common.
ANONYMOUS_FUNCTIONS: Final[frozenset[str]] = frozenset({"date_part", "datepart"})

# Aggregate classes and the name agreements use for them (contracts.terms.AGGREGATE_FUNCTIONS).
AGGREGATES: Final[dict[type[exp.Expr], str]] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
    exp.Median: "median",
    exp.Stddev: "stddev",
    exp.StddevSamp: "stddev",
    exp.StddevPop: "stddev",
}

# Window-only functions (row-level queries on unprotected data only).
WINDOW_FUNCTIONS: Final[frozenset[type[exp.Expr]]] = frozenset(
    {exp.RowNumber, exp.Rank, exp.DenseRank, exp.Lag, exp.Lead, exp.Ntile, exp.FirstValue, exp.LastValue}
)

# Scalar types a value may be cast to (no nested, enum, blob or bit types).
_T = DType
CAST_TYPES: Final[frozenset[DType]] = frozenset(
    {
        _T.BOOLEAN,
        _T.TINYINT,
        _T.SMALLINT,
        _T.INT,
        _T.BIGINT,
        _T.INT128,
        _T.UTINYINT,
        _T.USMALLINT,
        _T.UINT,
        _T.UBIGINT,
        _T.FLOAT,
        _T.DOUBLE,
        _T.DECIMAL,
        _T.TEXT,
        _T.VARCHAR,
        _T.CHAR,
        _T.DATE,
        _T.TIME,
        _T.TIMESTAMP,
        _T.TIMESTAMPTZ,
        _T.INTERVAL,
    }
)

# A keyword (exp.Var) is only accepted as the unit argument of these, or as the part of EXTRACT(part FROM x).
UNIT_PARENTS: Final[frozenset[type[exp.Expr]]] = frozenset(
    {exp.TimestampTrunc, exp.DateTrunc, exp.DateDiff, exp.DateAdd, exp.LastDay, exp.Interval}
)
