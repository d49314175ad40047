"""The federated query: one SQL text, several territories, one merged answer.

1. **Plan** (sqlglot, DuckDB dialect): an aggregate query is rewritten for the nodes so that its parts merge
   exactly: ``sum``, ``count``, ``min``, ``max`` travel as themselves, ``avg(x)`` as ``sum(x)`` and ``count(x)``;
   group keys keep their aliases; ``ORDER BY``, ``LIMIT`` are applied after the merge. Aggregates that do not
   decompose (``count(DISTINCT ...)``, ``median``, arithmetic over aggregates) and ``HAVING`` are refused with 422
   when more than one territory is asked, and sent unchanged to a single one. A query without aggregates returns
   the rows of every territory, each with its ``territory``.
2. **Fan out** over NATS request-reply (``exchange.<siren>.query``), all territories at once, each with its own
   deadline; a node that does not answer is a ``timeout``, a subject without responders is ``unavailable``.
3. **Merge** the Arrow answers in an in-memory DuckDB (no external access) by group key.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
import sqlglot
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace
from sqlglot import exp

from contracts import subjects
from contracts.requests import QueryRequestV1
from kit.errors import Unprocessable
from kit.telemetry import inject_context

__all__ = ["Plan", "TerritoryAnswer", "fan_out", "merge", "plan_query"]

tracer = trace.get_tracer(__name__)

ARROW = "application/vnd.apache.arrow.stream"


@dataclass
class Plan:
    """How to ask each territory and how to merge what they answer."""

    node_sql: str
    kind: str  # "aggregate" (merged by group key), "rows" (concatenated), "single" (one territory, unchanged)
    merge_sql: str | None = None
    outputs: list[str] = field(default_factory=list)


@dataclass
class TerritoryAnswer:
    status: str  # ok, refused, timeout, unavailable
    table: pa.Table | None = None
    error: str | None = None
    detail: str | None = None
    suppressed_groups: str | None = None
    audit_id: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.table is not None:
            out["rows"] = self.table.num_rows
        for name in ("error", "detail", "suppressed_groups", "audit_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class _NotDecomposable(Exception):
    pass


def _quoted(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _split(index: int, alias: str, inner: exp.Expr) -> tuple[list[exp.Expr], exp.Expr]:
    """Node projections and the merge expression of one aggregate output."""

    def part(suffix: str, node: exp.Expr) -> tuple[exp.Expr, exp.Expr]:
        name = f"m{index}_{suffix}"
        return exp.alias_(node, _quoted(name)), exp.column(_quoted(name))

    if isinstance(inner, exp.Count):
        if isinstance(inner.this, exp.Distinct):
            raise _NotDecomposable("count(DISTINCT ...)")
        projection, column = part("count", inner.copy())
        return [projection], exp.Cast(this=exp.Sum(this=column), to=exp.DataType.build("BIGINT"))
    if isinstance(inner, exp.Sum | exp.Min | exp.Max):
        projection, column = part(type(inner).__name__.lower(), inner.copy())
        return [projection], type(inner)(this=column)
    if isinstance(inner, exp.Avg):
        total, total_column = part("sum", exp.Sum(this=inner.this.copy()))
        count, count_column = part("count", exp.Count(this=inner.this.copy()))
        merged = exp.Div(
            this=exp.Cast(this=exp.Sum(this=total_column), to=exp.DataType.build("DOUBLE")),
            expression=exp.Sum(this=count_column),
        )
        return [total, count], merged
    raise _NotDecomposable(inner.sql(dialect="duckdb")[:80])


def plan_query(sql: str, *, territories: int) -> Plan:
    """The plan of ``sql`` over ``territories`` territories; 422 ``query.*`` when it cannot be merged."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise Unprocessable("the SQL does not parse (DuckDB dialect)", code="query.invalid_sql") from exc
    if territories == 1:
        return Plan(node_sql=sql, kind="single")
    if not isinstance(tree, exp.Select):
        raise Unprocessable("only one SELECT can be asked of several territories", code="query.not_mergeable")
    aggregated = bool(tree.args.get("group")) or any(p.find(exp.AggFunc) for p in tree.expressions)
    if not aggregated:
        return Plan(node_sql=sql, kind="rows")
    if tree.args.get("having") is not None:
        raise Unprocessable(
            "HAVING cannot be merged across territories; filter the merged answer instead",
            code="query.not_mergeable",
        )
    node = tree.copy()
    for clause in ("order", "limit", "offset"):
        node.set(clause, None)
    projections: list[exp.Expr] = []
    merged: list[exp.Expr] = []
    keys: list[str] = []
    outputs: list[str] = []
    by_sql: dict[str, str] = {}
    for index, projection in enumerate(tree.expressions):
        inner = projection.unalias()
        alias = projection.alias_or_name or f"col{index}"
        if isinstance(inner, exp.Star) or alias in outputs:
            raise Unprocessable(
                "name every output column once (no *) to query several territories", code="query.not_mergeable"
            )
        outputs.append(alias)
        by_sql[inner.sql(dialect="duckdb")] = alias
        if not inner.find(exp.AggFunc):
            projections.append(exp.alias_(inner.copy(), _quoted(alias)))
            merged.append(exp.column(_quoted(alias)))
            keys.append(alias)
            continue
        try:
            parts, expression = _split(index, alias, inner)
        except _NotDecomposable as exc:
            raise Unprocessable(
                f"{exc} does not merge across territories (sum, count, min, max and avg do)",
                code="query.not_decomposable",
            ) from exc
        projections.extend(parts)
        merged.append(exp.alias_(expression, _quoted(alias)))
    node.set("expressions", projections)
    group = node.args.get("group")
    if group is not None:
        # Positions refer to the caller's projections, which the node query has rearranged.
        fixed = []
        for item in group.expressions:
            if isinstance(item, exp.Literal) and item.is_int:
                fixed.append(tree.expressions[int(item.this) - 1].unalias().copy())
            else:
                fixed.append(item)
        group.set("expressions", fixed)
    select = exp.select(*merged).from_("parts")
    if keys:
        select = select.group_by(*[exp.column(_quoted(k)) for k in keys])
    order = tree.args.get("order")
    if order is not None:
        ordered = []
        for item in order.expressions:
            target = item.this
            if isinstance(target, exp.Literal) and target.is_int:
                name = outputs[int(target.this) - 1]
            elif isinstance(target, exp.Column) and target.name in outputs:
                name = target.name
            elif target.sql(dialect="duckdb") in by_sql:
                name = by_sql[target.sql(dialect="duckdb")]
            else:
                raise Unprocessable("ORDER BY must name output columns", code="query.not_mergeable")
            ordered.append(exp.Ordered(this=exp.column(_quoted(name)), desc=item.args.get("desc")))
        select = select.order_by(*ordered)
    limit = tree.args.get("limit")
    if limit is not None:
        select = select.limit(limit.expression.copy())
    return Plan(
        node_sql=node.sql(dialect="duckdb"), kind="aggregate", merge_sql=select.sql(dialect="duckdb"), outputs=outputs
    )


def merge(plan: Plan, answers: dict[str, TerritoryAnswer]) -> pa.Table:
    """The merged table of the territories that answered."""
    tables = {siren: a.table for siren, a in sorted(answers.items()) if a.status == "ok" and a.table is not None}
    if not tables:
        return pa.table({})
    if plan.kind == "single":
        return next(iter(tables.values()))
    if plan.kind == "rows":
        parts = [
            table.add_column(0, "territory", pa.array([siren] * table.num_rows, pa.string()))
            for siren, table in tables.items()
        ]
        return pa.concat_tables(parts, promote_options="permissive")
    combined = pa.concat_tables(list(tables.values()), promote_options="permissive")
    assert plan.merge_sql is not None
    connection = duckdb.connect(config={"enable_external_access": False, "threads": 1})
    try:
        connection.register("parts", combined)
        return connection.sql(plan.merge_sql).to_arrow_table()
    finally:
        connection.close()


async def _ask(
    nc: NatsClient, siren: str, request: QueryRequestV1, authorization: str, timeout: float
) -> TerritoryAnswer:
    with tracer.start_as_current_span("gateway.query.territory") as span:
        span.set_attribute("maillage.territory", siren)
        headers = {"Authorization": authorization, "Accept": ARROW}
        inject_context(headers)
        try:
            reply = await nc.request(
                subjects.exchange_query(siren), request.model_dump_json().encode(), timeout=timeout, headers=headers
            )
        except NatsTimeoutError:
            span.set_attribute("maillage.status", "timeout")
            return TerritoryAnswer(status="timeout", detail=f"no answer within {timeout:g} s")
        except NoRespondersError:
            span.set_attribute("maillage.status", "unavailable")
            return TerritoryAnswer(status="unavailable", detail="no exchange serves this territory right now")
        reply_headers = reply.headers or {}
        status = reply_headers.get("Maillage-Status", "500")
        span.set_attribute("maillage.reply_status", status)
        if status != "200":
            try:
                body = json.loads(reply.data)
            except ValueError:
                body = {}
            return TerritoryAnswer(
                status="refused",
                error=str(body.get("error", f"http.{status}")),
                detail=str(body.get("detail", "")),
                audit_id=body.get("audit_id"),
            )
        try:
            table = pa.ipc.open_stream(reply.data).read_all()
        except (pa.ArrowInvalid, OSError):
            return TerritoryAnswer(status="refused", error="gateway.bad_reply", detail="the node's answer is not Arrow")
        return TerritoryAnswer(
            status="ok",
            table=table,
            suppressed_groups=reply_headers.get("Maillage-Suppressed-Groups"),
            audit_id=reply_headers.get("Maillage-Audit-Id"),
        )


async def fan_out(
    nc: NatsClient,
    requests: dict[str, QueryRequestV1],
    *,
    authorization: str,
    timeout: float,
) -> dict[str, TerritoryAnswer]:
    """Ask every territory at once; each answer, refusal or timeout by SIREN. Never waits past ``timeout``."""
    sirens = sorted(requests)
    answers = await asyncio.gather(*[_ask(nc, s, requests[s], authorization, timeout) for s in sirens])
    return dict(zip(sirens, answers, strict=True))
