"""How the gateway splits a query for several territories and merges their answers (no server needed)."""

from __future__ import annotations

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from gateway.federated import Plan, TerritoryAnswer, merge, plan_query
from kit.errors import Unprocessable

SQL = (
    'SELECT commune, count(*) AS n, sum(v) AS total, avg(v) AS mean, min(v) AS low, max(v) AS high FROM "t" GROUP BY 1'
)


def _answer(table: pa.Table) -> TerritoryAnswer:
    return TerritoryAnswer(status="ok", table=table)


def test_avg_travels_as_sum_and_count_and_merges_exactly() -> None:
    plan = plan_query(SQL + " ORDER BY total DESC LIMIT 1", territories=2)
    assert plan.kind == "aggregate"
    assert "AVG" not in plan.node_sql.upper() and "ORDER BY" not in plan.node_sql and "LIMIT" not in plan.node_sql
    assert plan.outputs == ["commune", "n", "total", "mean", "low", "high"]
    # What two nodes would answer for the rows a: [1, 2, 3] | [10], b: [4] | [20, 30].
    first = pa.table(
        {
            "commune": ["a", "b"],
            "m1_count": [3, 1],
            "m2_sum": [6.0, 4.0],
            "m3_sum": [6.0, 4.0],
            "m3_count": [3, 1],
            "m4_min": [1.0, 4.0],
            "m5_max": [3.0, 4.0],
        }
    )
    second = pa.table(
        {
            "commune": ["a", "b"],
            "m1_count": [1, 2],
            "m2_sum": [10.0, 50.0],
            "m3_sum": [10.0, 50.0],
            "m3_count": [1, 2],
            "m4_min": [10.0, 20.0],
            "m5_max": [10.0, 30.0],
        }
    )
    merged = merge(plan, {"242100410": _answer(first), "242500361": _answer(second)})
    assert merged.to_pylist() == [{"commune": "b", "n": 3, "total": 54.0, "mean": 18.0, "low": 4.0, "high": 30.0}]


def test_global_aggregate_without_group_keys() -> None:
    plan = plan_query('SELECT avg(v) AS mean FROM "t"', territories=3)
    parts = {
        str(i): _answer(pa.table({"m0_sum": [s], "m0_count": [c]})) for i, (s, c) in enumerate([(10.0, 2), (2.0, 2)])
    }
    assert merge(plan, parts).to_pylist() == [{"mean": 3.0}]


def test_rows_are_concatenated_with_their_territory() -> None:
    plan = plan_query('SELECT channel_id, count FROM "comptages-velo"', territories=2)
    assert plan.kind == "rows"
    merged = merge(
        plan,
        {
            "242100410": _answer(pa.table({"channel_id": ["x"], "count": [3]})),
            "242500361": _answer(pa.table({"channel_id": ["y"], "count": [4]})),
            "200069540": TerritoryAnswer(status="timeout"),
        },
    )
    assert merged.to_pylist() == [
        {"territory": "242100410", "channel_id": "x", "count": 3},
        {"territory": "242500361", "channel_id": "y", "count": 4},
    ]


def test_one_territory_gets_the_query_unchanged() -> None:
    sql = 'SELECT count(DISTINCT meter) FROM "t" HAVING count(*) > 1'
    assert plan_query(sql, territories=1) == Plan(node_sql=sql, kind="single")


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ('SELECT count(DISTINCT m) FROM "t"', "query.not_decomposable"),
        ('SELECT median(v) FROM "t"', "query.not_decomposable"),
        ('SELECT sum(a) / count(*) FROM "t"', "query.not_decomposable"),
        ('SELECT c, sum(v) FROM "t" GROUP BY c HAVING sum(v) > 2', "query.not_mergeable"),
        ('SELECT c, sum(v) AS s FROM "t" GROUP BY c ORDER BY length(c)', "query.not_mergeable"),
        ('SELECT a FROM "t" UNION SELECT b FROM "u"', "query.not_mergeable"),
        ("SELECT FROM WHERE", "query.invalid_sql"),
    ],
)
def test_what_cannot_be_merged_is_refused(sql: str, code: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        plan_query(sql, territories=2)
    assert refused.value.code == code
