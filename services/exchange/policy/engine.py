"""The analyser: resolves every name of a parsed query, checks it against the grants and rewrites it in place.

Each query (SELECT, set operation, CTE, derived table, expression subquery) produces a :class:`_Relation` whose kind
says what its rows are:

* ``OPEN``: no protected data (open datasets, row-level agreements, constants).
* ``RAW``: rows of a dataset under ``aggregation: required``; they carry hidden subject columns
  (``__maillage_s<n>``) so that an enclosing aggregation can count distinct subjects. RAW rows never leave the
  query: the final output, expression subqueries and windows may not be RAW.
* ``RELEASED``: groups aggregated from RAW rows, each of at least k distinct subjects (a HAVING clause is injected
  where the aggregation happens), carrying their subject count in ``__maillage_k``.

Column lineage records which protected base columns a value derives from, and whether it is still the base value
itself ("clean"); the identifier and aggregate-argument rules are checked on lineage, so renaming a column in a CTE
does not launder it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from . import errors as E
from .errors import PolicyError
from .functions import (
    AGGREGATES,
    ANONYMOUS_FUNCTIONS,
    BOOLEAN_OPERATORS,
    CAST_TYPES,
    PREDICATES,
    SCALARS,
    UNIT_PARENTS,
    WINDOW_FUNCTIONS,
)
from .model import DEFAULT_MAX_ROWS, DatasetInfo, Permission, Plan
from .scans import SUBJECT_COLUMN, Source, source

__all__ = ["K_COLUMN", "SUPPRESSED_COLUMN", "MAX_NODES", "MAX_SCANS", "MAX_SQL_LENGTH", "RESERVED_PREFIX", "plan"]

RESERVED_PREFIX = "__maillage"
K_COLUMN = "__maillage_k"
SUPPRESSED_COLUMN = "__maillage_suppressed"
MAX_SQL_LENGTH = 20_000
MAX_NODES = 5_000
MAX_SCANS = 16

_WHERE, _JOIN, _GROUP, _HAVING, _SELECT, _ORDER, _QUALIFY = (
    "where",
    "join",
    "group",
    "having",
    "select",
    "order",
    "qualify",
)
_CONDITIONS = frozenset({_WHERE, _JOIN, _HAVING, _QUALIFY})
_SELECT_ARGS = frozenset(
    {
        "with_",
        "expressions",
        "distinct",
        "from_",
        "joins",
        "where",
        "group",
        "having",
        "qualify",
        "order",
        "limit",
        "offset",
    }
)
_SETOP_ARGS = frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"})


class _Kind(enum.Enum):
    OPEN = "open"
    RAW = "raw"
    RELEASED = "released"


class _Role(enum.Enum):
    FINAL = "final"  # the statement's output
    FROM = "from"  # a CTE, a derived table or a set-operation branch of one
    EXPR = "expr"  # a scalar, IN or EXISTS subquery


@dataclass(frozen=True)
class _Lineage:
    """Protected base columns (dataset, column) a value derives from; ``clean``: it is one of them unchanged."""

    bases: frozenset[tuple[str, str]] = frozenset()
    clean: bool = True


_NONE = _Lineage()


def _derived(lineages: Iterable[_Lineage]) -> _Lineage:
    bases: frozenset[tuple[str, str]] = frozenset().union(*(lin.bases for lin in lineages))
    return _Lineage(bases, clean=not bases)


def _merged(lineages: Iterable[_Lineage]) -> _Lineage:
    """Lineage of a column that is one of several columns (set operations, USING)."""
    items = list(lineages)
    bases: frozenset[tuple[str, str]] = frozenset().union(*(lin.bases for lin in items))
    return _Lineage(bases, clean=all(lin.clean for lin in items))


@dataclass
class _Relation:
    columns: list[tuple[str | None, _Lineage]]
    kind: _Kind
    subjects: list[frozenset[str]] = field(default_factory=list)  # RAW: datasets behind each __maillage_s<i>
    has_k: bool = False  # RELEASED: the relation carries K_COLUMN
    subject_names: list[str] = field(default_factory=list)


@dataclass
class _Bound:
    name: str
    ident: str
    rel: _Relation
    by_name: dict[str, list[int]]
    uid: int = 0


@dataclass
class _Scope:
    parent: _Scope | None
    bound: list[_Bound] = field(default_factory=list)
    using: dict[str, list[_Bound]] = field(default_factory=dict)
    aliases: dict[str, exp.Expr] = field(default_factory=dict)
    group_identifiers: list[tuple[exp.Column, _Lineage]] = field(default_factory=list)  # decided by the aggregation
    released: bool = False
    subqueries: bool = False  # an expression subquery outside WHERE/JOIN/GROUP BY (only over released groups)


@dataclass(frozen=True)
class _Cte:
    rel: _Relation
    sql_name: str


@dataclass(frozen=True)
class _Ctx:
    scope: _Scope
    env: Mapping[str, _Cte]
    clause: str
    raw: bool
    agg: str | None = None
    top: bool = False
    predicate: bool = False
    resolving: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Info:
    lineage: _Lineage = _NONE
    agg: bool = False
    window: bool = False
    column: bool = False


def _norm(name: str) -> str:
    # DuckDB compares identifiers case-insensitively (quoted or not); non-ASCII names are compared exactly, which
    # can only refuse more than DuckDB would accept.
    return name.lower() if name.isascii() else name


def _fail(code: str, detail: str) -> PolicyError:
    return PolicyError(code, detail)


def _check_args(node: exp.Expr, allowed: frozenset[str] | set[str], what: str) -> None:
    for key, value in node.args.items():
        if key not in allowed and value not in (None, False, [], ""):
            raise _fail(E.UNSUPPORTED_SYNTAX, f"{what}: {key.rstrip('_').upper()} is not supported")


def _quoted(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _int_literal(node: exp.Expr | None) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    return None


class _Analyzer:
    def __init__(self, datasets: Mapping[str, DatasetInfo], permissions: Mapping[str, Permission]) -> None:
        self.datasets = datasets
        self.permissions = permissions
        # Subjects are counted by their stored hash only when every dataset with a subject_key that the query could
        # name has it: the same subject must never be a hash in one table and a value in another (UNION ALL, joins),
        # which would count it twice.
        self.hashed = all(info.has_subject_hash for info in datasets.values() if info.schema.subject_key is not None)
        self.sources: dict[str, Source] = {}
        self.used: set[str] = set()
        self.k = 0
        self.suppressed = False  # the final aggregation counts its groups below k
        self.scans = 0
        self.counter = 0
        self.resolved: dict[int, str | exp.Expr] = {}
        self.scan_nodes: set[int] = set()
        self.pins: list[exp.Expr] = []
        self.cte_names: set[str] = set()
        self.two_phased: set[int] = set()  # ids of the selects built by two_phase (pinned)

    # ---- names -------------------------------------------------------------------------------------------------

    def resolve(self, node: exp.Expr, target: str | exp.Expr) -> None:
        """Record what a column reference means (a column of a FROM table, or an aliased select item)."""
        self.resolved[id(node)] = target
        self.pins.append(node)  # ids are only unique while the node lives

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{RESERVED_PREFIX}_{stem}{self.counter}"

    def source(self, name: str) -> Source | None:
        if not name.isascii():
            return None
        lowered = name.lower()
        for slug in (lowered, lowered.replace("_", "-")):
            info = self.datasets.get(slug)
            permission = self.permissions.get(slug)
            if info is not None and permission is not None and permission.dataset == slug:
                if slug not in self.sources:
                    self.sources[slug] = source(info, permission, hashed=self.hashed)
                return self.sources[slug]
        return None

    def is_identifier(self, base: tuple[str, str]) -> bool:
        src = self.sources.get(base[0])
        return src is not None and base[1] in src.identifiers

    # ---- queries -----------------------------------------------------------------------------------------------

    def query(self, node: exp.Expr, env: Mapping[str, _Cte], outer: _Scope | None, role: _Role) -> _Relation:
        """Analyse and rewrite a query (SELECT, set operation or parenthesised query) in place."""
        if isinstance(node, exp.Select):
            return self.select(node, env, outer, role)
        if isinstance(node, exp.SetOperation):
            return self.setop(node, env, outer, role)
        if isinstance(node, exp.Subquery):
            _check_args(node, {"this"}, "parenthesised query")
            return self.query(node.this, env, outer, role)
        raise _fail(E.UNSUPPORTED_SYNTAX, f"{node.key.upper()} is not a query")

    def ctes(self, node: exp.Expr, env: Mapping[str, _Cte]) -> Mapping[str, _Cte]:
        """Analyse the WITH clause of ``node``; CTEs are renamed so that DuckDB cannot bind them to anything else."""
        with_ = node.args.get("with_")
        if with_ is None:
            return env
        if with_.args.get("recursive"):
            raise _fail(E.RECURSIVE_QUERY, "WITH RECURSIVE is refused (unbounded iteration)")
        _check_args(with_, {"expressions"}, "WITH")
        scope_env = dict(env)
        for cte in with_.expressions:
            _check_args(cte, {"this", "alias", "materialized"}, "common table expression")
            alias = cte.args["alias"]
            rel = self.query(cte.this, scope_env, None, _Role.FROM)
            rel = _renamed(rel, alias.columns, f"common table expression {alias.name}")
            sql_name = self.fresh("cte")
            cte.set("alias", exp.TableAlias(this=_quoted(sql_name), columns=[c.copy() for c in alias.columns] or None))
            scope_env[_norm(alias.name)] = _Cte(rel, sql_name)
            self.cte_names.add(sql_name)
        return scope_env

    def setop(self, node: exp.SetOperation, env: Mapping[str, _Cte], outer: _Scope | None, role: _Role) -> _Relation:
        """UNION/INTERSECT/EXCEPT: both branches alike; on protected data, UNION ALL with aligned subjects only."""
        _check_args(node, _SETOP_ARGS, node.key.upper())
        env = self.ctes(node, env)
        left = self.query(node.this, env, outer, role)
        right = self.query(node.expression, env, outer, role)
        if len(left.columns) != len(right.columns):
            raise _fail(E.UNSUPPORTED_SHAPE, f"the branches of {node.key.upper()} have different column counts")
        if left.kind is not right.kind:
            raise _fail(E.UNSUPPORTED_SHAPE, f"{node.key.upper()} mixes protected and unprotected branches")
        if left.kind is not _Kind.OPEN and not (isinstance(node, exp.Union) and not node.args.get("distinct")):
            # Hidden subject and k columns would change what DISTINCT, INTERSECT and EXCEPT compare.
            raise _fail(E.UNSUPPORTED_SHAPE, "on protected data, combine queries with UNION ALL only")
        if left.kind is _Kind.RAW and len(left.subjects) != len(right.subjects):
            raise _fail(E.UNSUPPORTED_SHAPE, "UNION ALL branches read different numbers of protected tables")
        columns = [
            (lname, _merged([llin, rlin])) for (lname, llin), (_, rlin) in zip(left.columns, right.columns, strict=True)
        ]
        rel = _Relation(
            columns=columns,
            kind=left.kind,
            subjects=[a | b for a, b in zip(left.subjects, right.subjects, strict=True)],
            has_k=left.has_k and right.has_k,
            subject_names=left.subject_names,
        )
        if node.args.get("order"):
            if rel.kind is _Kind.RAW:
                # Ordering expressions would run on protected rows outside TRY (and order nothing useful).
                raise _fail(E.UNSUPPORTED_SHAPE, "ORDER BY on protected rows before aggregation is not supported")
            scope = _Scope(parent=None)
            scope.bound.append(_Bound("", "", rel, _by_name(rel)))
            ctx = _Ctx(scope, env, _ORDER, raw=rel.kind is _Kind.RAW)
            for ordered in node.args["order"].expressions:
                self.ordered(ordered, ctx, len(rel.columns))
        self.limits(node, rel.kind)
        return rel

    def select(self, sel: exp.Select, env: Mapping[str, _Cte], outer: _Scope | None, role: _Role) -> _Relation:
        """Bind FROM, expand stars, resolve every expression, then close the SELECT according to what it reads."""
        _check_args(sel, _SELECT_ARGS, "SELECT")
        env = self.ctes(sel, env)
        scope = _Scope(parent=outer)
        from_ = sel.args.get("from_")
        joins = sel.args.get("joins") or []
        if from_ is not None:
            self.bind(from_.this, env, scope, from_, "this")
        for join in joins:
            _check_args(join, {"this", "on", "using", "side", "kind"}, "JOIN")
            kind = (join.args.get("kind") or "").upper()
            if kind not in ("", "INNER", "OUTER", "CROSS"):
                raise _fail(E.UNSUPPORTED_SYNTAX, f"{kind} JOIN is not supported")
            self.bind(join.this, env, scope, join, "this")
            for ident in join.args.get("using") or []:
                name = _norm(ident.name)
                sides = [b for b in scope.bound if name in b.by_name]
                if len(sides) < 2:
                    raise _fail(E.UNKNOWN_COLUMN, f"column {ident.name} is not on both sides of USING")
                scope.using[name] = sides
        raw_bounds = [b for b in scope.bound if b.rel.kind is _Kind.RAW]
        released_bounds = [b for b in scope.bound if b.rel.kind is _Kind.RELEASED]
        if raw_bounds and released_bounds:
            raise _fail(E.UNSUPPORTED_SHAPE, "a query reads both protected rows and aggregated protected groups")
        raw = bool(raw_bounds)
        scope.released = bool(released_bounds)
        self.expand_stars(sel, scope)
        for item in sel.expressions:
            if isinstance(item, exp.Alias):
                scope.aliases.setdefault(_norm(item.alias), item.this)
        ctx = _Ctx(scope, env, _SELECT, raw=raw)
        functions = self.functions(raw_bounds)

        where = sel.args.get("where")
        if where is not None:
            self.condition(where.this, replace(ctx, clause=_WHERE), functions)
        for join in joins:
            if join.args.get("on") is not None:
                self.condition(join.args["on"], replace(ctx, clause=_JOIN), functions)

        infos = [self.expr(item, replace(ctx, top=True), functions) for item in sel.expressions]

        group_keys: list[tuple[exp.Expr, _Info]] = []
        group = sel.args.get("group")
        if group is not None:
            _check_args(group, {"expressions", "all"}, "GROUP BY")
            if group.args.get("all"):
                if group.expressions:
                    raise _fail(E.UNSUPPORTED_SYNTAX, "GROUP BY ALL takes no other group keys")
                keys = [
                    item.unalias().copy() for item, info in zip(sel.expressions, infos, strict=True) if not info.agg
                ]
                group.set("all", None)
            else:
                keys = [self.positional(key, sel) for key in group.expressions]
            group.set("expressions", keys)
            for key in keys:
                info = self.expr(key, replace(ctx, clause=_GROUP, top=True), functions)
                if info.agg or info.window:
                    raise _fail(E.UNSUPPORTED_SYNTAX, "GROUP BY cannot hold aggregates or window functions")
                group_keys.append((key, info))

        having = sel.args.get("having")
        having_info = self.expr(having.this, replace(ctx, clause=_HAVING), functions) if having is not None else None
        order_infos = []
        if sel.args.get("order"):
            for ordered in sel.args["order"].expressions:
                order_infos.append(self.ordered(ordered, replace(ctx, clause=_ORDER), len(sel.expressions), functions))
        qualify = sel.args.get("qualify")
        if qualify is not None:
            if raw or released_bounds:
                raise _fail(E.WINDOW_FUNCTION, "QUALIFY (window filtering) is refused on protected data")
            self.condition(qualify.this, replace(ctx, clause=_QUALIFY), functions)
        distinct = sel.args.get("distinct")
        if distinct is not None:
            _check_args(distinct, set(), "DISTINCT")

        aggregating = bool(group_keys) or having is not None or any(i.agg for i in infos + order_infos)
        if having_info is not None and having_info.window:
            raise _fail(E.UNSUPPORTED_SYNTAX, "window functions are not allowed in HAVING")

        names = [self.output_name(item, role) for item in sel.expressions]

        if raw:
            return self.finish_raw(sel, scope, raw_bounds, infos, names, group_keys, aggregating, role)
        if released_bounds:
            if distinct is not None and role is not _Role.EXPR:
                raise _fail(E.UNSUPPORTED_SHAPE, "SELECT DISTINCT over aggregated protected data is not supported")
            self.limits(sel, _Kind.RELEASED)
            has_k = role is not _Role.EXPR and all(b.rel.has_k for b in released_bounds)
            if has_k:
                refs = [_hidden(b, K_COLUMN) for b in released_bounds]
                k_expr: exp.Expr = refs[0] if len(refs) == 1 else _least(refs)
                if aggregating:
                    k_expr = exp.Min(this=k_expr)
                sel.append("expressions", exp.alias_(k_expr, K_COLUMN, quoted=True))
            return _Relation([(n, _NONE) for n in names], _Kind.RELEASED, has_k=has_k)
        self.limits(sel, _Kind.OPEN)
        return _Relation([(n, info.lineage) for n, info in zip(names, infos, strict=True)], _Kind.OPEN)

    def finish_raw(
        self,
        sel: exp.Select,
        scope: _Scope,
        raw_bounds: list[_Bound],
        infos: list[_Info],
        names: list[str | None],
        group_keys: list[tuple[exp.Expr, _Info]],
        aggregating: bool,
        role: _Role,
    ) -> _Relation:
        """Close a SELECT that reads protected rows: carry their subjects, or aggregate them under the k rule.

        Whatever is computed per protected row (WHERE, JOIN ON, group keys, projections) is wrapped in DuckDB's
        TRY(): a runtime error (a failed cast, an overflow, a division by zero) that only some rows trigger would
        otherwise tell the caller that such a row exists, whatever k says.
        """
        subjects = [(b, n, ds) for b in raw_bounds for n, ds in zip(b.rel.subject_names, b.rel.subjects, strict=True)]
        if sel.args.get("distinct") is not None:
            raise _fail(E.UNSUPPORTED_SHAPE, "SELECT DISTINCT on protected rows is not supported")
        self.check_using(scope)
        if not aggregating:
            if role is _Role.FINAL:
                raise _fail(
                    E.AGGREGATION_REQUIRED, "this dataset is shared as aggregates only: use GROUP BY and aggregates"
                )
            if role is _Role.EXPR:
                raise _fail(E.UNSUPPORTED_SHAPE, "a subquery in an expression cannot read protected rows unaggregated")
            self.limits(sel, _Kind.RAW)
            if sel.args.get("order") is not None:
                raise _fail(E.UNSUPPORTED_SHAPE, "ORDER BY on protected rows before aggregation is not supported")
            if scope.subqueries:
                raise _fail(E.UNSUPPORTED_SHAPE, "subqueries over protected rows before aggregation are not supported")
            self.try_conditions(sel)
            for item in sel.expressions:
                target = item.this if isinstance(item, exp.Alias) else item
                if not isinstance(_unparen(target), _TRIVIAL):
                    # Wrapped in place: the item's nodes stay those whose names were resolved.
                    wrapper = exp.Anonymous(this="TRY", expressions=[])
                    target.replace(wrapper)
                    wrapper.set("expressions", [target])
            subject_names = []
            for index, (bound, name, _datasets) in enumerate(subjects):
                alias = f"{SUBJECT_COLUMN}{index}"
                sel.append("expressions", exp.alias_(_hidden(bound, name), alias, quoted=True))
                subject_names.append(alias)
            columns = [(n, info.lineage) for n, info in zip(names, infos, strict=True)]
            return _Relation(columns, _Kind.RAW, [d for _, _, d in subjects], subject_names=subject_names)

        subject_keys = {(ds, self.sources[ds].subject[0]) for _, _, datasets in subjects for ds in datasets}
        per_subject = (
            role is _Role.FROM
            and len(subjects) == 1
            and any(
                info.column and info.lineage.clean and info.lineage.bases and info.lineage.bases <= subject_keys
                for _, info in group_keys
            )
        )
        for column, lineage in scope.group_identifiers:
            if not (per_subject and lineage.clean and lineage.bases <= subject_keys):
                raise _fail(E.IDENTIFIER_GROUP_KEY, f"identifier column {column.sql('duckdb')} cannot be a group key")
        self.check_covered(sel, infos, group_keys)
        if per_subject:
            # One row per subject (and other keys): an enclosing aggregation counts the subject it carries.
            self.limits(sel, _Kind.RAW)
            if sel.args.get("order") is not None:
                raise _fail(E.UNSUPPORTED_SHAPE, "ORDER BY on per-subject rows before aggregation is not supported")
            if scope.subqueries:
                raise _fail(E.UNSUPPORTED_SHAPE, "subqueries over per-subject rows are not supported")
            bound, name, datasets = subjects[0]
            alias = f"{SUBJECT_COLUMN}0"
            result = self.split(sel, group_keys, names, [_hidden(bound, name)], [alias], None, per_row=True)
            sel.append(
                "expressions", exp.alias_(exp.Column(this=_quoted(alias), table=_quoted(result)), alias, quoted=True)
            )
            columns = [(n, info.lineage) for n, info in zip(names, infos, strict=True)]
            return _Relation(columns, _Kind.RAW, [datasets], subject_names=[alias])
        # Released: every group must cover at least k distinct subjects of every protected table read.
        counts: list[exp.Expr] = [
            exp.Count(this=exp.Distinct(expressions=[_hidden(bound, name)]), big_int=True)
            for bound, name, _ in subjects
        ]
        k_expr = counts[0] if len(counts) == 1 else _least(counts)
        k = max(self.sources[ds].k or 0 for _, _, datasets in subjects for ds in datasets)
        self.k = max(self.k, k)
        self.limits(sel, _Kind.RELEASED)
        tiers: list[Callable[[], exp.Expr]] = []
        if all(self.sources[ds].subject_hash for _, _, datasets in subjects for ds in datasets):
            # Every subject column holds the stored 64-bit subject hash: cheap lower bounds of the distinct count
            # decide most groups, the exact count is computed for the others only (see two_phase).
            if len(subjects) == 1 and not sel.args.get("joins") and len(subjects[0][2]) == 1:
                bound, name, datasets = subjects[0]
                most = self.sources[next(iter(datasets))].subject_rows_max
                if most is not None:
                    tiers.append(partial(_rows_bound, _hidden(bound, name), most))

            def buckets() -> exp.Expr:
                bounds = [_bucket_bound(_hidden(b, n)) for b, n, _ in subjects]
                return bounds[0] if len(bounds) == 1 else _least(bounds)

            tiers.append(buckets)
        result = self.split(sel, group_keys, names, [k_expr], [K_COLUMN], k, per_row=False, tiers=tiers)
        if role is _Role.FINAL:
            self.count_suppressed(sel, k)
            sel.append(
                "expressions",
                exp.alias_(
                    exp.Column(this=_quoted(SUPPRESSED_COLUMN), table=_quoted(result)), SUPPRESSED_COLUMN, quoted=True
                ),
            )
            self.suppressed = True
        if role is not _Role.EXPR:
            sel.append(
                "expressions",
                exp.alias_(exp.Column(this=_quoted(K_COLUMN), table=_quoted(result)), K_COLUMN, quoted=True),
            )
        return _Relation([(n, _NONE) for n in names], _Kind.RELEASED, has_k=role is not _Role.EXPR)

    def count_suppressed(self, sel: exp.Select, k: int) -> None:
        """Count the released aggregation's groups below k before dropping them (the executor reports the count).

        The derived table built by :meth:`split` drops them with HAVING; it becomes ``SELECT * FROM (SELECT *,
        <groups below k> OVER () FROM (<aggregation without HAVING>)) WHERE k >= K``, so the count is taken on every
        group, before the caller's HAVING or ORDER BY could make it depend on the groups' values.
        """
        derived = sel.args["from_"].this
        inner = derived.this
        inner.set("where" if id(inner) in self.two_phased else "having", None)
        counting = sqlglot.parse_one(f'SUM(CASE WHEN "{K_COLUMN}" < {int(k)} THEN 1 ELSE 0 END) OVER ()', read="duckdb")
        counted = exp.Select(expressions=[exp.Star(), exp.alias_(counting, SUPPRESSED_COLUMN, quoted=True)])
        counted.set(
            "from_", exp.From(this=exp.Subquery(this=inner, alias=exp.TableAlias(this=_quoted(self.fresh("c")))))
        )
        released = exp.Select(expressions=[exp.Star()])
        released.set(
            "from_", exp.From(this=exp.Subquery(this=counted, alias=exp.TableAlias(this=_quoted(self.fresh("s")))))
        )
        released.set(
            "where",
            exp.Where(this=exp.GTE(this=exp.Column(this=_quoted(K_COLUMN)), expression=exp.Literal.number(int(k)))),
        )
        derived.set("this", released)

    def split(
        self,
        sel: exp.Select,
        group_keys: list[tuple[exp.Expr, _Info]],
        names: list[str | None],
        extra: list[exp.Expr],
        extra_names: list[str],
        k: int | None,
        per_row: bool,
        tiers: Sequence[Callable[[], exp.Expr]] = (),
    ) -> str:
        """Aggregate in a derived table, then compute the caller's expressions on its rows.

        ``SELECT f(key, agg) FROM t WHERE w GROUP BY key HAVING h ORDER BY o`` becomes
        ``SELECT f(g0, a0) FROM (SELECT TRY(key) AS g0, agg AS a0, <extra> FROM t WHERE TRY(w) GROUP BY 1
        [HAVING k >= K]) AS r WHERE h(g0, a0) ORDER BY o(g0, a0)``: with a k, HAVING, projections and ordering
        only ever see groups that are released, so they cannot fail (or succeed) because of a small group. With
        ``per_row`` (groups of one subject), they are TRY-wrapped instead. Returns the derived table's alias.
        """
        result = self.fresh("r")
        table = _quoted(result)
        key_names = {self.signature(key): f"{RESERVED_PREFIX}_g{i}" for i, (key, _) in enumerate(group_keys)}
        inner_items: list[exp.Expr] = [
            exp.alias_(_try(self.materialize(key)), f"{RESERVED_PREFIX}_g{i}", quoted=True, copy=False)
            for i, (key, _) in enumerate(group_keys)
        ]
        aggregates: dict[int, str] = {}
        by_signature: dict[str, str] = {}
        lifted_roots: list[exp.Expr] = list(sel.expressions)
        having = sel.args.get("having")
        if having is not None:
            lifted_roots.append(having.this)
        order = sel.args.get("order")
        if order is not None:
            lifted_roots.extend(o.this for o in order.expressions)
        for root in lifted_roots:
            for node in _outer_nodes(root):
                if type(node) in AGGREGATES and id(node) not in aggregates:
                    signature = self.signature(node)
                    if signature not in by_signature:
                        by_signature[signature] = f"{RESERVED_PREFIX}_a{len(by_signature)}"
                        inner_items.append(
                            exp.alias_(
                                _try_argument(self.materialize(node)), by_signature[signature], quoted=True, copy=False
                            )
                        )
                    aggregates[id(node)] = by_signature[signature]
        inner_items.extend(exp.alias_(e, n, quoted=True) for e, n in zip(extra, extra_names, strict=True))
        inner = exp.Select(expressions=inner_items)
        inner.set("from_", sel.args.get("from_"))
        inner.set("joins", sel.args.get("joins"))
        where = sel.args.get("where")
        if where is not None:
            inner.set("where", exp.Where(this=_try_condition(self.materialize(where.this))))
        for join in inner.args.get("joins") or []:
            if join.args.get("on") is not None:
                join.set("on", _try_condition(join.args["on"]))
        positions = [exp.Literal.number(i + 1) for i in range(len(group_keys))]
        if per_row:
            positions.extend(exp.Literal.number(len(inner_items) - len(extra) + i + 1) for i in range(len(extra)))
        if positions:
            inner.set("group", exp.Group(expressions=positions))
        if k is not None and tiers and self.scans_only(inner):
            inner = self.two_phase(inner, len(group_keys), tiers, k)
        elif k is not None:
            inner.set("having", exp.Having(this=exp.GTE(this=extra[0].copy(), expression=exp.Literal.number(k))))

        def lift(node: exp.Expr) -> exp.Expr:
            if id(node) in aggregates:
                return exp.Column(this=_quoted(aggregates[id(node)]), table=table.copy())
            if isinstance(node, (exp.Subquery, exp.Exists)):
                return node
            if not isinstance(node, (exp.Literal, exp.Boolean, exp.Null)):
                name = key_names.get(self.signature(node))
                if name is not None:
                    return exp.Column(this=_quoted(name), table=table.copy())
            for child in list(node.iter_expressions()):
                replacement = lift(child)
                if replacement is not child:
                    child.replace(replacement)
            return node

        items: list[exp.Expr] = []
        for item, name in zip(sel.expressions, names, strict=True):
            if isinstance(item, exp.Alias):
                body = lift(item.this)
                item.set("this", _try(body) if per_row else body)
                items.append(item)
                continue
            # Keep the output name the caller would have had without the rewrite.
            label = name if name is not None else item.sql("duckdb", comments=False)
            body = lift(item)
            items.append(exp.alias_(_try(body) if per_row else body, label, quoted=True, copy=False))
        sel.set("expressions", items)
        sel.set("from_", exp.From(this=exp.Subquery(this=inner, alias=exp.TableAlias(this=table))))
        sel.set("joins", None)
        sel.set("group", None)
        sel.set("where", None)
        sel.set("having", None)
        if having is not None:
            condition = lift(having.this)
            sel.set("where", exp.Where(this=_try_condition(condition) if per_row else condition))
        if order is not None:
            for ordered in order.expressions:
                ordered.set("this", lift(ordered.this))
        return result

    def duplicate(self, node: exp.Expr) -> exp.Expr:
        """A copy of ``node`` that :func:`_verify` accepts as the original: resolved columns and scans carried over."""
        copy = node.copy()
        for original, duplicate in zip(list(node.walk()), list(copy.walk()), strict=True):
            target = self.resolved.get(id(original))
            if target is not None:
                self.resolve(duplicate, target)
            if id(original) in self.scan_nodes:
                self.scan_nodes.add(id(duplicate))
                self.pins.append(duplicate)
        return copy

    def scans_only(self, inner: exp.Select) -> bool:
        """``inner`` reads dataset scans only (joined, filtered): no CTE, derived table, set operation or subquery.

        Its rows are then the same multiset each time they are read, whatever the plan or the number of threads
        (scans of immutable tables, deterministic allow-listed functions, current_timestamp fixed per statement).
        :meth:`two_phase` reads them twice and needs that: a LIMIT without a total order, a window function or an
        order-dependent floating-point sum in a derived table could hand the exact count other rows than the
        released aggregates. Everything else keeps the single-pass exact count.
        """
        roots: list[exp.Expr] = [inner.args["from_"], *(inner.args.get("joins") or [])]
        if inner.args.get("where") is not None:
            roots.append(inner.args["where"])
        stack = roots
        while stack:
            node = stack.pop()
            if id(node) in self.scan_nodes:
                continue
            if isinstance(node, (exp.Query, exp.Subquery, exp.Table, exp.Exists, exp.Window, exp.Lateral, exp.Unnest)):
                return False
            stack.extend(node.iter_expressions())
        return True

    def two_phase(self, inner: exp.Select, width: int, tiers: Sequence[Callable[[], exp.Expr]], k: int) -> exp.Select:
        """The released aggregation ``inner`` (its last item the exact subject count), decided in phases.

        Each tier builds a lower bound of the exact count (:func:`_rows_bound`, :func:`_bucket_bound`), cheapest first.
        ``inner`` computes the first one instead of the exact count and becomes the CTE ``q0``. A group whose bound is
        at least k is released on it; the next tier is computed only for the other groups, over the rows whose group
        keys are theirs (joined with ``IS NOT DISTINCT FROM``, grouped by the failing group's own key values), and so
        on; the exact count only for the groups that every tier left below k. All are joined back::

            WITH q0 AS MATERIALIZED (SELECT g.., a.., lower0 AS b FROM t WHERE w GROUP BY g..),
                 q1 AS MATERIALIZED (SELECT f.g.., lower1 AS b FROM t JOIN (SELECT g.. FROM q0 WHERE b < K) f
                                     ON <keys> IS NOT DISTINCT FROM f.g.. WHERE w GROUP BY f.g..)
            SELECT q0.g.., q0.a.., CASE WHEN q0.b >= K THEN q0.b WHEN q1.b >= K THEN q1.b
                                        ELSE coalesce(e.k, 0) END AS __maillage_k
            FROM q0 LEFT JOIN q1 ON q0.g.. IS NOT DISTINCT FROM q1.g..
                    LEFT JOIN (SELECT f.g.., <exact> AS k FROM t JOIN (SELECT g.. FROM q1 WHERE b < K) f
                               ON <keys> IS NOT DISTINCT FROM f.g.. WHERE w GROUP BY f.g..) e
                    ON q0.g.. IS NOT DISTINCT FROM e.g..
            WHERE <the same CASE> >= K

        The released k column is then a bound (at least k) or the exact count. A group whose rows a join would miss
        gets no bound and 0 and is suppressed: every error of this construction suppresses, none releases.
        """
        items = list(inner.expressions)
        keys = [item.alias for item in items[:width]]
        exact = items[-1].this
        bound_name = f"{RESERVED_PREFIX}_b"
        k_literal = exp.Literal.number(int(k))

        def col(table: str, name: str) -> exp.Column:
            return exp.Column(this=_quoted(name), table=_quoted(table))

        def on(left: list[exp.Expr], right: list[exp.Expr]) -> exp.Expr:
            pairs = [exp.NullSafeEQ(this=a, expression=b) for a, b in zip(left, right, strict=True)]
            return exp.and_(*pairs, copy=False) if pairs else exp.Boolean(this=True)

        def over_failing(previous: str, value: exp.Expr, name: str) -> exp.Select:
            """``value`` per group, over the rows of the groups that ``previous`` left below k."""
            f_name = self.fresh("f")
            # Without group keys (one group), the single failing row, if any.
            failing = exp.Select(expressions=[col(previous, key) for key in keys] or [exp.Literal.number(1)])
            failing.set("from_", exp.From(this=exp.Table(this=_quoted(previous))))
            failing.set("where", exp.Where(this=exp.LT(this=col(previous, bound_name), expression=k_literal.copy())))
            counted = exp.Select(
                expressions=[
                    *(exp.alias_(col(f_name, key), key, quoted=True) for key in keys),
                    exp.alias_(value, name, quoted=True, copy=False),
                ]
            )
            counted.set("from_", self.duplicate(inner.args["from_"]))
            joins = [self.duplicate(join) for join in inner.args.get("joins") or []]
            key_copies = [self.duplicate(item.this) for item in items[:width]]
            joins.append(
                exp.Join(
                    this=exp.Subquery(this=failing, alias=exp.TableAlias(this=_quoted(f_name))),
                    on=on(key_copies, [col(f_name, key) for key in keys]),
                )
            )
            counted.set("joins", joins)
            if inner.args.get("where") is not None:
                counted.set("where", self.duplicate(inner.args["where"]))
            if width:
                counted.set("group", exp.Group(expressions=[exp.Literal.number(i + 1) for i in range(width)]))
            return counted

        ctes: list[exp.CTE] = []
        names: list[str] = []
        for index, tier in enumerate(tiers):
            name = self.fresh("q")
            self.cte_names.add(name)
            if index == 0:
                body = inner
                body.set("expressions", [*items[:-1], exp.alias_(tier(), bound_name, quoted=True, copy=False)])
            else:
                body = over_failing(names[-1], tier(), bound_name)
            ctes.append(exp.CTE(this=body, alias=exp.TableAlias(this=_quoted(name)), materialized=True))
            names.append(name)
        e_name = self.fresh("e")
        counted = over_failing(names[-1], self.duplicate(exact), K_COLUMN)
        first = names[0]

        def decided() -> exp.Expr:
            return exp.Case(
                ifs=[
                    exp.If(
                        this=exp.GTE(this=col(name, bound_name), expression=k_literal.copy()),
                        true=col(name, bound_name),
                    )
                    for name in names
                ],
                default=exp.Coalesce(this=col(e_name, K_COLUMN), expressions=[exp.Literal.number(0)]),
            )

        wrapper = exp.Select(
            expressions=[
                *(exp.alias_(col(first, item.alias), item.alias, quoted=True) for item in items[:-1]),
                exp.alias_(decided(), K_COLUMN, quoted=True),
            ]
        )
        wrapper.set("from_", exp.From(this=exp.Table(this=_quoted(first))))
        later: list[tuple[exp.Expr, str]] = [(exp.Table(this=_quoted(name)), name) for name in names[1:]]
        later.append((exp.Subquery(this=counted, alias=exp.TableAlias(this=_quoted(e_name))), e_name))
        wrapper.set(
            "joins",
            [
                exp.Join(
                    this=source,
                    side="LEFT",
                    on=on([col(first, key) for key in keys], [col(alias, key) for key in keys]),
                )
                for source, alias in later
            ],
        )
        wrapper.set("where", exp.Where(this=exp.GTE(this=decided(), expression=k_literal.copy())))
        wrapper.set("with_", exp.With(expressions=ctes))
        self.two_phased.add(id(wrapper))
        self.pins.append(wrapper)
        return wrapper

    def materialize(self, node: exp.Expr) -> exp.Expr:
        """A copy of ``node`` where references to select-list aliases are replaced by the aliased expressions."""
        copy = node.copy()
        for original, duplicate in zip(list(node.walk()), list(copy.walk()), strict=True):
            if isinstance(original, exp.Column):
                target = self.resolved.get(id(original))
                if target is not None:
                    self.resolve(duplicate, target)
                if isinstance(target, exp.Expr):
                    replacement = self.materialize(target)
                    if duplicate is copy:
                        return replacement
                    duplicate.replace(replacement)
        return copy

    def try_conditions(self, sel: exp.Select) -> None:
        where = sel.args.get("where")
        if where is not None:
            where.set("this", _try_condition(where.this))
        for join in sel.args.get("joins") or []:
            if join.args.get("on") is not None:
                join.set("on", _try_condition(join.args["on"]))

    def check_using(self, scope: _Scope) -> None:
        for name, bounds in scope.using.items():
            lineages = {b.rel.columns[b.by_name[name][0]][1] for b in bounds}
            # Equal columns of one dataset compare without casts; others could fail on some rows only: use ON.
            if len(lineages) != 1 or not all(lin.clean and len(lin.bases) == 1 for lin in lineages):
                raise _fail(E.UNSUPPORTED_SHAPE, f"USING ({name}) on protected rows joins equal columns only: use ON")

    def functions(self, raw_bounds: list[_Bound]) -> frozenset[str]:
        datasets = {ds for b in raw_bounds for subject in b.rel.subjects for ds in subject}
        allowed: frozenset[str] | None = None
        for ds in datasets:
            functions = self.sources[ds].functions
            allowed = functions if allowed is None else allowed & functions
        return allowed or frozenset()

    def check_covered(self, sel: exp.Select, infos: list[_Info], group_keys: list[tuple[exp.Expr, _Info]]) -> None:
        """Every output of an aggregation is a group key, an aggregate or computed from them."""
        signatures = {self.signature(key) for key, _ in group_keys}
        for item in sel.expressions:
            if not self.covered(item.unalias(), signatures):
                raise _fail(
                    E.AGGREGATION_REQUIRED,
                    f"{item.sql('duckdb')} is neither a group key nor an aggregate: only aggregates are released",
                )

    def covered(self, node: exp.Expr, signatures: set[str]) -> bool:
        if isinstance(node, (exp.Subquery, exp.Exists, exp.Window, *AGGREGATES)):
            return True
        if isinstance(node, exp.Filter):
            return True
        if self.signature(node) in signatures:
            return True
        if isinstance(node, exp.Column):
            target = self.resolved.get(id(node))
            return isinstance(target, exp.Expr) and self.covered(target, signatures)
        return all(self.covered(child, signatures) for child in node.iter_expressions())

    def signature(self, node: exp.Expr) -> str:
        """A structural key of an expression with its columns resolved (to match select items to group keys)."""
        node = _unparen(node)
        if isinstance(node, exp.Alias):
            return self.signature(node.this)
        if isinstance(node, exp.Column):
            target = self.resolved.get(id(node))
            if isinstance(target, exp.Expr):
                return self.signature(target)
            return target or f"?{id(node)}"
        parts = []
        for key, value in sorted(node.args.items()):
            if value is None or key.startswith("_"):
                continue
            if isinstance(value, exp.Expr):
                parts.append(f"{key}={self.signature(value)}")
            elif isinstance(value, list):
                inner = ",".join(self.signature(v) if isinstance(v, exp.Expr) else repr(v) for v in value)
                parts.append(f"{key}=[{inner}]")
            else:
                parts.append(f"{key}={str(value).lower()!r}")
        return f"{type(node).__name__}({';'.join(parts)})"

    def positional(self, key: exp.Expr, sel: exp.Select) -> exp.Expr:
        if isinstance(key, exp.Literal):
            position = _int_literal(key)
            if position is None or not 1 <= position <= len(sel.expressions):
                raise _fail(E.UNSUPPORTED_SYNTAX, f"GROUP BY {key.sql('duckdb')} is not a select-list position")
            return sel.expressions[position - 1].unalias().copy()
        return key

    def limits(self, node: exp.Expr, kind: _Kind) -> None:
        for key in ("limit", "offset"):
            clause = node.args.get(key)
            if clause is None:
                continue
            if kind is _Kind.RAW:
                raise _fail(E.LIMIT_NOT_ALLOWED, "LIMIT/OFFSET on protected rows would let a query pick subjects")
            if not isinstance(clause, (exp.Limit, exp.Offset)):
                raise _fail(E.UNSUPPORTED_SYNTAX, f"{key.upper()} form is not supported")
            _check_args(clause, {"expression"}, key.upper())
            if _int_literal(clause.expression) is None:
                raise _fail(E.UNSUPPORTED_SYNTAX, f"{key.upper()} takes a non-negative integer literal")

    def ordered(self, ordered: exp.Expr, ctx: _Ctx, width: int, functions: frozenset[str] = frozenset()) -> _Info:
        if not isinstance(ordered, exp.Ordered):
            raise _fail(E.UNSUPPORTED_SYNTAX, "unsupported ORDER BY item")
        _check_args(ordered, {"this", "desc", "nulls_first"}, "ORDER BY")
        target = ordered.this
        if isinstance(target, exp.Literal):
            position = _int_literal(target)
            if position is None or not 1 <= position <= width:
                raise _fail(E.UNSUPPORTED_SYNTAX, f"ORDER BY {target.sql('duckdb')} is not a select-list position")
            return _Info()
        if isinstance(target, exp.Var) and target.name.upper() == "ALL":
            return _Info()
        return self.expr(target, ctx, functions)

    def output_name(self, item: exp.Expr, role: _Role) -> str | None:
        if isinstance(item, exp.Alias):
            return _norm(item.alias)
        inner = _unparen(item)
        if isinstance(inner, exp.Column) and not isinstance(inner.this, exp.Star):
            return _norm(inner.name)
        if role is _Role.FROM:
            # Named so that an enclosing query can reference and expand it; close to DuckDB's own naming. The item
            # node itself is kept (not copied): its columns' resolutions are keyed by node identity.
            name = item.sql("duckdb", comments=False)
            wrapper = exp.Alias(this=exp.Null(), alias=_quoted(name))
            item.replace(wrapper)
            wrapper.set("this", item)
            return _norm(name)
        return None

    # ---- FROM ----------------------------------------------------------------------------------------------------

    def bind(self, node: exp.Expr, env: Mapping[str, _Cte], scope: _Scope, parent: exp.Expr, key: str) -> None:
        """Add a FROM item to ``scope``: a dataset (replaced by its scan), a CTE or a derived table."""
        if isinstance(node, exp.Table):
            self.bind_table(node, env, scope, parent, key)
            return
        if isinstance(node, exp.Subquery):
            _check_args(node, {"this", "alias"}, "derived table")
            rel = self.query(node.this, env, None, _Role.FROM)
            alias = node.args.get("alias")
            columns = list(alias.columns) if alias is not None else []
            rel = _renamed(rel, columns, "derived table")
            name = alias.name if alias is not None and alias.name else self.fresh("q")
            node.set("alias", exp.TableAlias(this=_quoted(name), columns=[c.copy() for c in columns] or None))
            self.add_bound(scope, name, rel)
            return
        if isinstance(node, exp.Func):
            raise _fail(E.TABLE_NOT_ALLOWED, f"table function {node.sql('duckdb')[:60]} is not allowed")
        raise _fail(E.UNSUPPORTED_SYNTAX, f"{node.key.upper()} is not supported in FROM")

    def bind_table(self, node: exp.Table, env: Mapping[str, _Cte], scope: _Scope, parent: exp.Expr, key: str) -> None:
        if not isinstance(node.this, exp.Identifier):
            raise _fail(E.TABLE_NOT_ALLOWED, f"table function {node.sql('duckdb')[:60]} is not allowed")
        if node.args.get("db") is not None or node.args.get("catalog") is not None:
            raise _fail(E.TABLE_NOT_ALLOWED, f"table {node.sql('duckdb')[:60]} is not allowed (no schema names)")
        _check_args(node, {"this", "alias", "db", "catalog"}, "table")
        name = node.this.name
        alias = node.args.get("alias")
        columns = list(alias.columns) if alias is not None else []
        alias_name = alias.name if alias is not None and alias.name else name
        cte = env.get(_norm(name))
        if cte is not None:
            rel = _renamed(cte.rel, columns, f"table {name}")
            node.set("this", _quoted(cte.sql_name))
            node.set("alias", exp.TableAlias(this=_quoted(alias_name), columns=[c.copy() for c in columns] or None))
            self.add_bound(scope, alias_name, rel)
            return
        src = self.source(name)
        if src is None:
            # Same answer for unknown, ungranted, system and file names: do not reveal what exists.
            raise _fail(E.TABLE_NOT_ALLOWED, f"table {name[:60]} is not available")
        self.scans += 1
        if self.scans > MAX_SCANS:
            raise _fail(E.TOO_COMPLEX, f"a query reads at most {MAX_SCANS} tables")
        self.used.add(src.slug)
        lineage = (lambda c: _Lineage(frozenset({(src.slug, c)}))) if src.required else (lambda c: _NONE)
        rel = _Relation(
            columns=[(c, lineage(c)) for c in src.visible],
            kind=_Kind.RAW if src.required else _Kind.OPEN,
            subjects=[frozenset({src.slug})] if src.required else [],
            subject_names=[SUBJECT_COLUMN] if src.required else [],
        )
        rel = _renamed(rel, columns, f"table {name}")
        scan = src.scan(_quoted(alias_name), [c.copy() for c in columns])
        self.scan_nodes.add(id(scan))
        self.pins.append(scan)
        parent.set(key, scan)
        self.add_bound(scope, alias_name, rel)

    def add_bound(self, scope: _Scope, name: str, rel: _Relation) -> None:
        normalized = _norm(name)
        if any(b.name == normalized for b in scope.bound):
            raise _fail(E.AMBIGUOUS, f"table name {name} appears twice in FROM: give each an alias")
        self.counter += 1
        scope.bound.append(_Bound(normalized, name, rel, _by_name(rel), self.counter))

    def expand_stars(self, sel: exp.Select, scope: _Scope) -> None:
        items: list[exp.Expr] = []
        changed = False
        for item in sel.expressions:
            if isinstance(item, exp.Star):
                _check_args(item, {"except_"}, "*")
                items.extend(self.star(scope.bound, scope, item.args.get("except_") or []))
                changed = True
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                _check_args(item.this, {"except_"}, "*")
                if item.args.get("db") is not None or item.args.get("catalog") is not None:
                    raise _fail(E.UNKNOWN_COLUMN, f"{item.sql('duckdb')} names no table of this query")
                table = _norm(item.table)
                bound = [b for b in scope.bound if b.name == table]
                if not bound:
                    raise _fail(E.UNKNOWN_COLUMN, f"{item.sql('duckdb')} names no table of this query")
                items.extend(self.star(bound, None, item.this.args.get("except_") or []))
                changed = True
            elif isinstance(item, exp.Columns):
                raise _fail(E.UNSUPPORTED_SYNTAX, "COLUMNS(...) is not supported: name the columns")
            else:
                items.append(item)
        if changed:
            if not items:
                raise _fail(E.UNKNOWN_COLUMN, "* expands to no column")
            sel.set("expressions", items)

    def star(self, bounds: list[_Bound], scope: _Scope | None, excluded: list[exp.Expr]) -> list[exp.Expr]:
        if not bounds:
            raise _fail(E.UNSUPPORTED_SYNTAX, "SELECT * needs a FROM clause")
        drop = set()
        for column in excluded:
            if not isinstance(column, exp.Column):
                raise _fail(E.UNSUPPORTED_SYNTAX, "EXCLUDE takes column names")
            drop.add(_norm(column.name))
        found: set[str] = set()
        out: list[exp.Expr] = []
        seen_using: set[str] = set()
        for bound in bounds:
            for name, _lineage in bound.rel.columns:
                if name is None:
                    raise _fail(E.UNSUPPORTED_SHAPE, f"table {bound.ident} has an unnamed column: alias it")
                if name in drop:
                    found.add(name)
                    continue
                if scope is not None and name in scope.using:
                    if name in seen_using:
                        continue
                    seen_using.add(name)
                    out.append(exp.column(_quoted(name)))
                    continue
                out.append(exp.Column(this=_quoted(name), table=_quoted(bound.ident)))
        missing = drop - found
        if missing:
            raise _fail(E.UNKNOWN_COLUMN, f"EXCLUDE names unknown column(s) {', '.join(sorted(missing))}")
        return out

    # ---- expressions -------------------------------------------------------------------------------------------

    def condition(self, node: exp.Expr, ctx: _Ctx, functions: frozenset[str]) -> None:
        info = self.expr(node, ctx, functions)
        if info.agg and ctx.clause in (_WHERE, _JOIN):
            raise _fail(E.UNSUPPORTED_SYNTAX, f"aggregates are not allowed in {ctx.clause.upper()}")
        if info.window and ctx.clause != _QUALIFY:
            raise _fail(E.UNSUPPORTED_SYNTAX, f"window functions are not allowed in {ctx.clause.upper()}")

    def expr(self, node: exp.Expr, ctx: _Ctx, functions: frozenset[str]) -> _Info:
        """Check an expression against the allow-lists and resolve its columns; returns its lineage and kind."""
        kind = type(node)
        if isinstance(node, exp.Column):
            return self.column(node, ctx)
        if kind in (exp.Literal, exp.Boolean, exp.Null):
            return _Info()
        if kind is exp.Paren or kind is exp.Alias:
            return self.expr(node.this, ctx, functions)
        if kind is exp.Var:
            parent = node.parent
            allowed = (type(parent) in UNIT_PARENTS and node.arg_key == "unit") or (
                isinstance(parent, exp.Extract) and node.arg_key == "this"
            )
            if not allowed or not node.name.replace("_", "").isalpha():
                raise _fail(E.UNSUPPORTED_SYNTAX, f"unexpected keyword {node.name[:40]}")
            return _Info()
        if kind in AGGREGATES:
            return self.aggregate(node, ctx, functions)
        if kind is exp.Filter:
            return self.filtered(node, ctx, functions)
        if kind is exp.Window:
            return self.window(node, ctx, functions)
        if kind is exp.Subquery:
            _check_args(node, {"this"}, "subquery")
            return self.subquery(node.this, ctx)
        if kind is exp.Exists:
            return self.subquery(node.this, ctx)
        if kind in (exp.Cast, exp.TryCast):
            _check_args(node, {"this", "to", "safe"}, "CAST")
            _check_type(node.args["to"])
            return self.children([node.this], ctx, functions)
        if kind is exp.In:
            _check_args(node, {"this", "expressions", "query"}, "IN")
            child = replace(ctx, top=False, predicate=True)
            infos = [self.expr(node.this, child, functions)]
            infos += [self.expr(e, child, functions) for e in node.expressions]
            if node.args.get("query") is not None:
                query = node.args["query"]
                infos.append(self.subquery(query.this if isinstance(query, exp.Subquery) else query, ctx))
            return _combine(infos)
        if kind in PREDICATES:
            return self.children(node.iter_expressions(), replace(ctx, predicate=True), functions)
        if kind in SCALARS or (kind is exp.Anonymous and node.name.lower() in ANONYMOUS_FUNCTIONS):
            return self.children(node.iter_expressions(), ctx, functions)
        if kind is exp.Star:
            raise _fail(E.UNSUPPORTED_SYNTAX, "* is only allowed alone in the select list or in count(*)")
        if isinstance(node, exp.Func):
            name = node.name if kind is exp.Anonymous else node.sql_name()
            raise _fail(E.FUNCTION_NOT_ALLOWED, f"function {name.lower()[:60]} is not allowed")
        raise _fail(E.UNSUPPORTED_SYNTAX, f"{node.key.upper()} is not supported")

    def children(self, nodes: Iterable[exp.Expr], ctx: _Ctx, functions: frozenset[str]) -> _Info:
        child = replace(ctx, top=False)
        return _combine([self.expr(n, child, functions) for n in nodes])

    def column(self, node: exp.Column, ctx: _Ctx) -> _Info:
        if isinstance(node.this, exp.Star):
            raise _fail(E.UNSUPPORTED_SYNTAX, "t.* is only allowed alone in the select list")
        if node.args.get("db") is not None or node.args.get("catalog") is not None:
            raise _fail(E.UNKNOWN_COLUMN, f"column {node.sql('duckdb')[:60]} does not exist")
        name = _norm(node.name)
        table = _norm(node.table) if node.table else None
        scope: _Scope | None = ctx.scope
        depth = 0
        info: _Info | None = None
        while scope is not None:
            info = self.lookup(node, scope, table, name, ctx if depth == 0 else None)
            if info is not None:
                break
            scope = scope.parent
            depth += 1
        if info is None:
            raise _fail(E.UNKNOWN_COLUMN, f"column {node.sql('duckdb')[:60]} does not exist")
        if depth and info.lineage.bases:
            raise _fail(E.UNSUPPORTED_SHAPE, "a correlated subquery cannot reference protected rows of the outer query")
        identifiers = [base for base in info.lineage.bases if self.is_identifier(base)]
        if identifiers:
            self.identifier_use(node, ctx, identifiers[0][1], info.lineage)
        return info

    def identifier_use(self, node: exp.Column, ctx: _Ctx, name: str, lineage: _Lineage) -> None:
        """Where an identifier column may appear: carried by a select item, counted, or a per-subject group key."""
        if ctx.agg == "count" and not ctx.predicate:
            return  # counting identifiers (even in HAVING) says nothing about one subject
        if ctx.clause in _CONDITIONS or ctx.predicate:
            raise _fail(E.IDENTIFIER_FILTER, f"identifier column {name} cannot be used to select rows")
        if ctx.agg is not None:
            raise _fail(E.IDENTIFIER_COLUMN, f"identifier column {name} can only be counted")
        if ctx.clause == _GROUP:
            if not ctx.top:
                raise _fail(E.IDENTIFIER_GROUP_KEY, f"identifier column {name} cannot be a group key")
            ctx.scope.group_identifiers.append((node, lineage))
            return
        if ctx.clause == _SELECT and ctx.top:
            return  # carried as is; an aggregation above decides (group key or not)
        raise _fail(E.IDENTIFIER_COLUMN, f"identifier column {name} can only be carried or counted")

    def lookup(self, node: exp.Column, scope: _Scope, table: str | None, name: str, ctx: _Ctx | None) -> _Info | None:
        """Resolve a column in one scope (None: not here, try the enclosing query)."""
        if table is not None:
            bounds = [b for b in scope.bound if b.name == table]
            if not bounds:
                return None
            bound = bounds[0]
            indexes = bound.by_name.get(name, [])
            if not indexes:
                raise _fail(E.UNKNOWN_COLUMN, f"column {node.sql('duckdb')[:60]} does not exist")
            if len(indexes) > 1:
                raise _fail(E.AMBIGUOUS, f"column {node.sql('duckdb')[:60]} is ambiguous")
            self.resolve(node, f"{bound.uid}.{name}")
            return _Info(bound.rel.columns[indexes[0]][1], column=True)
        column: _Info | None = None
        if name in scope.using:
            lineage = _merged(b.rel.columns[b.by_name[name][0]][1] for b in scope.using[name])
            column = _Info(lineage, column=True)
            self.resolve(node, f"using{scope.using[name][0].uid}.{name}")
        else:
            matches = [(b, i) for b in scope.bound for i in b.by_name.get(name, [])]
            if len(matches) > 1:
                raise _fail(E.AMBIGUOUS, f"column {node.name[:60]} is ambiguous: qualify it with its table")
            if matches:
                bound, index = matches[0]
                column = _Info(bound.rel.columns[index][1], column=True)
                self.resolve(node, f"{bound.uid}.{name}")
        alias = scope.aliases.get(name) if ctx is not None and ctx.clause != _JOIN else None
        if alias is not None and column is not None:
            same = isinstance(_unparen(alias), exp.Column) and _norm(_unparen(alias).name) == name
            # DuckDB prefers the table's column in SELECT, WHERE and GROUP BY, the alias in ORDER BY; elsewhere
            # refuse rather than guess which one it binds.
            if same or ctx is None or ctx.clause in (_SELECT, _WHERE, _GROUP):
                alias = None
            elif ctx.clause == _ORDER:
                column = None
            else:
                raise _fail(E.AMBIGUOUS, f"{node.name[:60]} is both a column and an alias: rename the alias")
        if alias is not None and ctx is not None:
            if name in ctx.resolving:
                raise _fail(E.UNKNOWN_COLUMN, f"alias {name[:60]} refers to itself")
            self.resolve(node, alias)
            return self.expr(alias, replace(ctx, resolving=ctx.resolving | {name}), self.functions_of(ctx))
        return column

    def functions_of(self, ctx: _Ctx) -> frozenset[str]:
        raw_bounds = [b for b in ctx.scope.bound if b.rel.kind is _Kind.RAW]
        return self.functions(raw_bounds)

    def aggregate(self, node: exp.Expr, ctx: _Ctx, functions: frozenset[str]) -> _Info:
        """An aggregate call: on protected rows, an allowed function of a plain column."""
        name = AGGREGATES[type(node)]
        if ctx.agg is not None:
            raise _fail(E.UNSUPPORTED_SYNTAX, "aggregates cannot be nested")
        if ctx.clause in (_WHERE, _JOIN, _GROUP):
            raise _fail(E.UNSUPPORTED_SYNTAX, f"aggregates are not allowed in {ctx.clause.upper()}")
        _check_args(node, {"this", "big_int"} if name == "count" else {"this"}, name)
        arg = node.this
        distinct = isinstance(arg, exp.Distinct)
        if distinct:
            _check_args(arg, {"expressions"}, "DISTINCT")
            if len(arg.expressions) != 1:
                raise _fail(E.UNSUPPORTED_SYNTAX, f"{name}(DISTINCT ...) takes one column")
            arg = arg.expressions[0]
        label = "count_distinct" if distinct and name == "count" else name
        inner = replace(ctx, agg=name, top=False, predicate=False)
        if name == "count" and (arg is None or isinstance(arg, exp.Star)):
            if distinct:
                raise _fail(E.UNSUPPORTED_SYNTAX, "count(DISTINCT *) is not supported")
            info = _Info()
        else:
            assert arg is not None
            info = self.expr(arg, inner, functions)
        if ctx.raw:
            if label not in functions:
                raise _fail(E.AGGREGATE_NOT_ALLOWED, f"aggregate {label} is not allowed by the agreement")
            if distinct and name != "count":
                raise _fail(E.AGGREGATE_NOT_ALLOWED, f"{name}(DISTINCT ...) is not allowed on protected data")
            if info.lineage.bases and not (isinstance(_unparen(arg), exp.Column) and info.lineage.clean):
                # An expression inside an aggregate (CASE, arithmetic on several columns...) can single out rows of
                # a group whose size the k check does not see: aggregate columns, compute on the aggregates.
                raise _fail(
                    E.AGGREGATE_ARGUMENT,
                    f"{name}() on protected data takes a column, not an expression: {arg.sql('duckdb')[:60]}",
                )
            if name in ("min", "max", "median"):
                for slug, column in info.lineage.bases:
                    src = self.sources[slug]
                    if name != "median" and column in src.personal and not src.min_max_on_personal:
                        raise _fail(E.MIN_MAX_PERSONAL, f"{name}({column}) would release one subject's value")
        if name == "count":
            return _Info(agg=True)
        return _Info(lineage=info.lineage, agg=True)

    def filtered(self, node: exp.Expr, ctx: _Ctx, functions: frozenset[str]) -> _Info:
        if ctx.raw:
            raise _fail(E.AGGREGATE_ARGUMENT, "FILTER (WHERE ...) on protected data selects rows the k check misses")
        _check_args(node, {"this", "expression"}, "FILTER")
        info = self.expr(node.this, ctx, functions)
        where = node.expression
        self.expr(where.this, replace(ctx, predicate=True, top=False), functions)
        return info

    def window(self, node: exp.Expr, ctx: _Ctx, functions: frozenset[str]) -> _Info:
        """A window function: unprotected data only."""
        if ctx.raw or ctx.scope.released:
            raise _fail(E.WINDOW_FUNCTION, "window functions are refused on protected data")
        if ctx.clause not in (_SELECT, _ORDER, _QUALIFY):
            raise _fail(E.UNSUPPORTED_SYNTAX, f"window functions are not allowed in {ctx.clause.upper()}")
        _check_args(node, {"this", "partition_by", "order", "spec", "over"}, "window")
        function = node.this
        child = replace(ctx, top=False)
        infos: list[_Info] = []
        if type(function) in AGGREGATES:
            _check_args(function, {"this", "big_int"}, "window aggregate")
            arg = function.this
            if isinstance(arg, exp.Distinct):
                raise _fail(E.UNSUPPORTED_SYNTAX, "DISTINCT in a window aggregate is not supported")
            if arg is not None and not isinstance(arg, exp.Star):
                infos.append(self.expr(arg, child, functions))
        elif type(function) in WINDOW_FUNCTIONS:
            infos.append(self.children(function.iter_expressions(), child, functions))
        else:
            raise _fail(E.FUNCTION_NOT_ALLOWED, f"window function {function.sql('duckdb')[:60]} is not allowed")
        for part in node.args.get("partition_by") or []:
            infos.append(self.expr(part, child, functions))
        order = node.args.get("order")
        if order is not None:
            for ordered in order.expressions:
                _check_args(ordered, {"this", "desc", "nulls_first"}, "window ORDER BY")
                infos.append(self.expr(ordered.this, child, functions))
        spec = node.args.get("spec")
        if spec is not None:
            for value in spec.iter_expressions():
                if not isinstance(value, exp.Literal):
                    raise _fail(E.UNSUPPORTED_SYNTAX, "window frames take literal offsets")
        combined = _combine(infos)
        # An aggregate inside (sum(sum(x)) OVER ..., ORDER BY count(*)) makes the enclosing query aggregating.
        return _Info(lineage=combined.lineage, agg=combined.agg, window=True)

    def subquery(self, node: exp.Expr, ctx: _Ctx) -> _Info:
        """A scalar, IN or EXISTS subquery: never over protected rows, never in a condition on them."""
        if ctx.raw:
            if ctx.clause in (_WHERE, _JOIN, _GROUP) or ctx.agg is not None:
                # It could not be wrapped in TRY (see finish_raw); use a JOIN instead.
                raise _fail(E.UNSUPPORTED_SHAPE, "subqueries in conditions on protected rows are not supported: JOIN")
            ctx.scope.subqueries = True
        rel = self.query(node, ctx.env, ctx.scope, _Role.EXPR)
        if rel.kind is _Kind.RAW:
            raise _fail(E.UNSUPPORTED_SHAPE, "a subquery in an expression cannot read protected rows unaggregated")
        return _Info()


def _check_type(node: exp.Expr) -> None:
    if not isinstance(node, exp.DataType) or node.this not in CAST_TYPES:
        raise _fail(E.UNSUPPORTED_SYNTAX, f"cast to {node.sql('duckdb')[:40]} is not supported")
    for param in node.expressions:
        if not (isinstance(param, exp.DataTypeParam) and isinstance(param.this, exp.Literal)):
            raise _fail(E.UNSUPPORTED_SYNTAX, f"cast to {node.sql('duckdb')[:40]} is not supported")


def _combine(infos: list[_Info]) -> _Info:
    return _Info(
        lineage=_derived(i.lineage for i in infos),
        agg=any(i.agg for i in infos),
        window=any(i.window for i in infos),
    )


def _by_name(rel: _Relation) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(rel.columns):
        if name is not None:
            out.setdefault(name, []).append(index)
    return out


def _renamed(rel: _Relation, aliases: list[exp.Expr], what: str) -> _Relation:
    if not aliases:
        return rel
    if len(aliases) > len(rel.columns):
        # More aliases than visible columns would rename the hidden subject column.
        raise _fail(E.UNSUPPORTED_SHAPE, f"{what} has {len(rel.columns)} columns, {len(aliases)} aliases given")
    columns = list(rel.columns)
    for index, alias in enumerate(aliases):
        columns[index] = (_norm(alias.name), columns[index][1])
    return replace(rel, columns=columns)


_TRIVIAL = (exp.Column, exp.Literal, exp.Boolean, exp.Null)


def _try(node: exp.Expr) -> exp.Expr:
    """``TRY(node)``: NULL instead of a runtime error, for anything computed on protected rows."""
    if isinstance(_unparen(node), _TRIVIAL):
        return node
    return exp.Anonymous(this="TRY", expressions=[node])


_BOOLEAN_RESULT = (*BOOLEAN_OPERATORS, exp.Boolean)


def _try_condition(node: exp.Expr) -> exp.Expr:
    """A WHERE/ON condition that yields NULL (row dropped) where it would fail, including its cast to BOOLEAN."""
    if not isinstance(_unparen(node), _BOOLEAN_RESULT):
        # WHERE commune_insee casts a string to BOOLEAN outside any TRY: it fails on some values only.
        node = exp.Cast(this=node, to=exp.DataType.build("BOOLEAN"))
    return exp.Anonymous(this="TRY", expressions=[node])


def _try_argument(aggregate: exp.Expr) -> exp.Expr:
    """The aggregate with its argument TRY-wrapped: min(CAST('x' AS INT)) fails as soon as one row is aggregated."""
    argument = aggregate.this
    if isinstance(argument, exp.Distinct):
        argument.set("expressions", [_try(e) for e in argument.expressions])
    elif argument is not None and not isinstance(argument, exp.Star):
        aggregate.set("this", _try(argument))
    return aggregate


def _outer_nodes(root: exp.Expr) -> Iterable[exp.Expr]:
    """The nodes of ``root`` outside subqueries and aggregates (aggregates themselves included)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if type(node) in AGGREGATES or isinstance(node, (exp.Subquery, exp.Exists)):
            continue
        stack.extend(reversed(list(node.iter_expressions())))


def _least(values: Sequence[exp.Expr]) -> exp.Expr:
    # DuckDB's LEAST skips NULLs (a side of an outer join without protected rows); ignore_nulls keeps sqlglot from
    # rewriting it into a NULL-propagating CASE.
    return exp.Least(this=values[0], expressions=values[1:], ignore_nulls=True)


def _bucket_bound(subject: exp.Expr) -> exp.Expr:
    """A lower bound of ``count(DISTINCT subject)`` for a column of 64-bit subject hashes: the number of distinct
    buckets ``hash % 64`` (bits set in the OR of ``1 << bucket``). Equal subjects share a bucket, so there are never
    more buckets than subjects; NULL subjects set no bit, as count(DISTINCT) skips them; no row gives 0."""
    bit = exp.BitwiseLeftShift(
        this=exp.Cast(this=exp.Literal.number(1), to=exp.DataType.build("UBIGINT", dialect="duckdb")),
        expression=exp.Paren(this=exp.Mod(this=subject, expression=exp.Literal.number(64))),
    )
    return exp.Coalesce(
        this=exp.Anonymous(this="BIT_COUNT", expressions=[exp.Anonymous(this="BIT_OR", expressions=[bit])]),
        expressions=[exp.Literal.number(0)],
    )


def _rows_bound(subject: exp.Expr, most: int) -> exp.Expr:
    """A lower bound of ``count(DISTINCT subject)`` over rows of one stored table where no subject hash value holds
    more than ``most`` rows (:attr:`DatasetInfo.subject_rows_max`): the group's rows with a subject, divided by
    ``most``. Costs a count, which the caller's query often computes anyway."""
    return exp.IntDiv(this=exp.Count(this=subject.copy(), big_int=True), expression=exp.Literal.number(int(most)))


def _hidden(bound: _Bound, name: str) -> exp.Column:
    return exp.Column(this=_quoted(name), table=_quoted(bound.ident))


def _prewalk(tree: exp.Expr) -> None:
    """Refusals that do not need name resolution: size, reserved names, table functions."""
    count = 0
    for node in tree.walk():
        count += 1
        if count > MAX_NODES:
            raise _fail(E.TOO_COMPLEX, f"the query is too large ({MAX_NODES} syntax nodes at most)")
        if isinstance(node, exp.Identifier) and node.name.lower().startswith(RESERVED_PREFIX):
            raise _fail(E.RESERVED_NAME, f"names starting with {RESERVED_PREFIX} are reserved")
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise _fail(E.TABLE_NOT_ALLOWED, f"table function {node.sql('duckdb')[:60]} is not allowed")
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            raise _fail(E.UNSUPPORTED_SYNTAX, "parameters are not supported: write literal values")


def _verify(root: exp.Expr, analyzer: _Analyzer) -> None:
    """Fail closed if the rewritten tree holds a table or a column that the analysis did not vouch for."""
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in analyzer.scan_nodes:
            continue  # a dataset scan, built by the engine (row filter, consent filter)
        if isinstance(node, exp.Table) and node.name not in analyzer.cte_names:
            raise _fail(E.TABLE_NOT_ALLOWED, f"table {node.sql('duckdb')[:60]} was not checked")
        if isinstance(node, exp.Column):
            if id(node) not in analyzer.resolved and not node.name.startswith(RESERVED_PREFIX):
                raise _fail(E.UNSUPPORTED_SYNTAX, f"column {node.sql('duckdb')[:60]} was not checked")
        stack.extend(node.iter_expressions())


def _parse(sql: str) -> exp.Expr:
    if len(sql) > MAX_SQL_LENGTH:
        raise _fail(E.TOO_LONG, f"the query is longer than {MAX_SQL_LENGTH} characters")
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except RecursionError:
        raise _fail(E.TOO_COMPLEX, "the query is nested too deeply") from None
    except SqlglotError as error:
        raise _fail(E.SYNTAX, str(error).splitlines()[0][:200]) from None
    except Exception as error:  # noqa: BLE001 - whatever breaks the parser, the query is not understood
        raise _fail(E.SYNTAX, f"unparseable query ({type(error).__name__})") from None
    # A comment between semicolons parses as an empty Semicolon statement.
    found = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not found:
        raise _fail(E.SYNTAX, "empty query")
    if len(found) > 1:
        raise _fail(E.MULTIPLE_STATEMENTS, "send exactly one SELECT statement")
    tree = found[0]
    if not isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
        raise _fail(E.NOT_A_SELECT, f"only SELECT queries are accepted, not {tree.key.upper()}")
    return tree


def plan(
    sql: str,
    *,
    datasets: Mapping[str, DatasetInfo],
    permissions: Mapping[str, Permission],
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Plan:
    """Check ``sql`` against the caller's ``permissions`` and rewrite it for execution; PolicyError otherwise."""
    tree = _parse(sql)
    normalized = tree.sql(dialect="duckdb", comments=False)
    _prewalk(tree)
    analyzer = _Analyzer(datasets, permissions)
    try:
        rel = analyzer.query(tree, {}, None, _Role.FINAL)
    except RecursionError:
        raise _fail(E.TOO_COMPLEX, "the query is nested too deeply") from None
    if isinstance(tree, exp.Subquery):
        # A parenthesised statement: its inner query carries the limit.
        tree = tree.this
        while isinstance(tree, exp.Subquery):
            tree = tree.this
    limit = tree.args.get("limit")
    current = _int_literal(limit.expression) if limit is not None else None
    if current is None or current > max_rows:
        tree.set("limit", exp.Limit(expression=exp.Literal.number(max_rows)))
    root = tree.root()
    _verify(root, analyzer)
    aggregated = any(analyzer.sources[slug].required for slug in analyzer.used)
    return Plan(
        sql=root.sql(dialect="duckdb", comments=False),
        normalized=normalized,
        sql_hash=hashlib.sha256(normalized.encode("utf-8")).hexdigest(),
        datasets=tuple(sorted(analyzer.used)),
        aggregated=aggregated,
        k=(analyzer.k or None) if aggregated else None,
        k_column=K_COLUMN if rel.kind is _Kind.RELEASED and rel.has_k else None,
        max_rows=max_rows,
        suppressed_column=SUPPRESSED_COLUMN if analyzer.suppressed else None,
    )
