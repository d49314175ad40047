"""Every refusal code of the policy engine, and what the rewritten SQL does on real DuckDB tables.

The demo territory is described in conftest.py (k = 5; commune 21054 has 3 meters, 99999 is outside the row filter).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from contracts.terms import Terms
from exchange.policy import CODES, K_COLUMN, MAX_SQL_LENGTH, Permission, PolicyError
from kit.pseudonyms import pseudonym, pseudonym64, territory_key

WATER, BUS, LEAKS, BIKES = "consommation-eau-menages", "frequentation-bus", "fuites-reseau-eau", "comptages-velo"
K = 5


def refused(world: Any, sql: str, code: str, permissions: dict[str, Permission] | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        world.plan(sql, permissions)
    assert caught.value.code == code, f"{sql!r}: {caught.value.code} ({caught.value.detail}), expected {code}"
    assert caught.value.code in CODES
    return caught.value


def water(**aggregation: Any) -> dict[str, Permission]:
    terms = Terms.model_validate(
        {
            "dataset": f"242100410/{WATER}",
            "consumer": "24250036100019",
            "purpose": {"iri": "https://w3id.org/dpv#ServiceOptimisation", "text": "Optimiser le service de l'eau"},
            "legal_basis": "A6-1-e",
            "columns": ["meter_id", "commune_insee", "month", "volume_m3"],
            "row_filter": [{"column": "commune_insee", "op": "in", "values": ["21231", "21166", "21054"]}],
            "aggregation": {
                "mode": "required",
                "min_group_size": K,
                "functions": ["count", "count_distinct", "sum", "avg", "min", "max"],
                "forbidden_group_keys": ["meter_id"],
                **aggregation,
            },
            "valid_from": datetime(2024, 1, 1, tzinfo=UTC),
            "valid_until": datetime(2030, 1, 1, tzinfo=UTC),
        }
    )
    return {WATER: Permission(WATER, terms)}


def truth(rows: list[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any]) -> dict[Any, tuple[float, int]]:
    """(sum of volume, distinct meters) per key over the rows the agreement lets through."""
    volume: dict[Any, float] = defaultdict(float)
    meters: dict[Any, set[str]] = defaultdict(set)
    for row in rows:
        if row[1] in ("21231", "21166", "21054"):
            volume[key(row)] += row[3]
            meters[key(row)].add(row[0])
    return {k: (volume[k], len(meters[k])) for k in volume}


# ---- statements ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELEC 1", "policy.syntax"),
        ("", "policy.syntax"),
        (" ;; ", "policy.syntax"),
        ("SELECT 'unterminated", "policy.syntax"),
        ("SELECT 1; SELECT 2", "policy.multiple_statements"),
        ("SELECT 1; DROP TABLE x", "policy.multiple_statements"),
        ("INSERT INTO t VALUES (1)", "policy.not_a_select"),
        ("UPDATE t SET a = 1", "policy.not_a_select"),
        ("DELETE FROM t", "policy.not_a_select"),
        ("CREATE TABLE t (a INT)", "policy.not_a_select"),
        ("DROP TABLE t", "policy.not_a_select"),
        ("ATTACH 'x.db' AS x", "policy.not_a_select"),
        ("DETACH x", "policy.not_a_select"),
        ("COPY t TO '/tmp/x.csv'", "policy.not_a_select"),
        ("PRAGMA version", "policy.not_a_select"),
        ("SET threads = 1", "policy.not_a_select"),
        ("RESET threads", "policy.not_a_select"),
        ("INSTALL httpfs", "policy.not_a_select"),
        ("LOAD httpfs", "policy.not_a_select"),
        ("CALL pragma_version()", "policy.not_a_select"),
        ("USE x", "policy.not_a_select"),
        ("CHECKPOINT", "policy.not_a_select"),
        ("VACUUM", "policy.not_a_select"),
        ("EXPLAIN SELECT 1", "policy.not_a_select"),
        ("DESCRIBE frequentation_bus", "policy.not_a_select"),
        ("SUMMARIZE frequentation_bus", "policy.not_a_select"),
        ("SHOW TABLES", "policy.not_a_select"),
    ],
)
def test_statements(world: Any, sql: str, code: str) -> None:
    refused(world, sql, code)


def test_trailing_semicolons_and_comments_are_fine(world: Any) -> None:
    plan = world.plan(";; SELECT 1 -- a comment\n; /* another */ ;")
    assert "comment" not in plan.sql and "another" not in plan.sql


def test_size_limits(world: Any) -> None:
    refused(world, "SELECT " + "1 + " * MAX_SQL_LENGTH + "1", "policy.too_long")
    refused(world, "SELECT " + "(" * 3000 + "1" + ")" * 3000, "policy.too_complex")
    refused(world, "SELECT " + " + ".join(["1"] * 3000), "policy.too_complex")


def test_normalized_and_hash(world: Any) -> None:
    a = world.plan("select  commune_insee, count(*)  from  fuites_reseau_eau -- x\n group by 1")
    b = world.plan("SELECT commune_insee, COUNT(*) FROM fuites_reseau_eau /* y */ GROUP BY 1")
    assert a.normalized == b.normalized
    assert a.sql_hash == b.sql_hash == hashlib.sha256(a.normalized.encode()).hexdigest()
    assert a.datasets == (LEAKS,)


# ---- tables ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM nope",
        "SELECT * FROM main.consommation_eau_menages",
        'SELECT * FROM ds_consommation_eau_menages.main."rows"',
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "FROM 'data.parquet'",
        "SELECT * FROM range(10)",
        "SELECT * FROM generate_series(1, 10)",
        "SELECT * FROM query('SELECT 1')",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT * FROM glob('*')",
    ],
)
def test_tables_not_allowed(world: Any, sql: str) -> None:
    refused(world, sql, "policy.table_not_allowed")


def test_ungranted_and_unknown_tables_answer_alike(world: Any) -> None:
    without_bus = {k: v for k, v in world.permissions.items() if k != BUS}
    one = refused(
        world.__class__(world.datasets, without_bus), "SELECT * FROM frequentation_bus", "policy.table_not_allowed"
    )
    two = refused(world, "SELECT * FROM frequentation_bux", "policy.table_not_allowed")
    assert one.detail.replace("frequentation_bus", "X") == two.detail.replace("frequentation_bux", "X")


def test_restricted_dataset_without_agreement_is_not_available(world: Any) -> None:
    refused(world, "SELECT * FROM frequentation_bus", "policy.table_not_allowed", {BUS: Permission(BUS)})


@pytest.mark.parametrize(
    "name",
    [
        '"consommation-eau-menages"',
        "consommation_eau_menages",
        "CONSOMMATION_EAU_MENAGES",
        '"Consommation-Eau-Menages"',
    ],
)
def test_dataset_spellings(world: Any, name: str) -> None:
    assert world.plan(f"SELECT count(*) FROM {name}").datasets == (WATER,)


# ---- columns and rows ------------------------------------------------------------------------------------------


def test_row_level_sees_granted_columns_and_rows_only(run: Any) -> None:
    names, rows = run("SELECT * FROM frequentation_bus")
    assert names == ["stop_name", "line_id", "day", "hour", "boardings"]
    assert {row[1] for row in rows} == {"L1", "L2"}
    assert len(rows) == 2 * 4 * 3


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT stop_id FROM frequentation_bus",
        "SELECT nope FROM frequentation_bus",
        "SELECT b.alightings FROM frequentation_bus AS b",
        "SELECT count(*) FROM frequentation_bus WHERE alightings > 3",
        "SELECT * FROM frequentation_bus ORDER BY stop_id",
        "SELECT household_size, count(*) FROM consommation_eau_menages GROUP BY 1",
        "SELECT frequentation_bus FROM frequentation_bus",
        "SELECT x.stop_name FROM frequentation_bus",
        "SELECT * EXCLUDE (stop_id) FROM frequentation_bus",
        "SELECT a.b.c FROM frequentation_bus AS a",
        "SELECT rowid FROM frequentation_bus",
    ],
)
def test_unknown_columns(world: Any, sql: str) -> None:
    refused(world, sql, "policy.unknown_column")


def test_ungranted_and_unknown_columns_answer_alike(world: Any) -> None:
    one = refused(world, "SELECT stop_id FROM frequentation_bus", "policy.unknown_column")
    two = refused(world, "SELECT stop_ix FROM frequentation_bus", "policy.unknown_column")
    assert one.detail.replace("stop_id", "X") == two.detail.replace("stop_ix", "X")


def test_star_forms(run: Any) -> None:
    names, _ = run("SELECT b.*, 1 AS one FROM frequentation_bus AS b")
    assert names == ["stop_name", "line_id", "day", "hour", "boardings", "one"]
    names, _ = run("SELECT * EXCLUDE (day, hour) FROM frequentation_bus")
    assert names == ["stop_name", "line_id", "boardings"]
    names, rows = run("FROM frequentation_bus")
    assert len(names) == 5 and len(rows) == 24
    names, _ = run("SELECT * FROM (SELECT line_id, sum(boardings) FROM frequentation_bus GROUP BY 1)")
    assert names[0] == "line_id" and names[1].lower() == "sum(boardings)"


def test_row_filter_applies_in_every_scan(run: Any) -> None:
    sql = """
        WITH a AS (SELECT line_id FROM frequentation_bus), b AS (SELECT * FROM a UNION ALL SELECT line_id FROM
        (SELECT * FROM "frequentation-bus") x)
        SELECT DISTINCT line_id FROM b WHERE line_id IN (SELECT line_id FROM frequentation_bus f2)
        UNION SELECT line_id FROM frequentation_bus AS s1 JOIN frequentation_bus AS s2 USING (line_id)
    """
    _, rows = run(sql)
    assert {row[0] for row in rows} == {"L1", "L2"}


def test_open_datasets_read_as_published(run: Any) -> None:
    names, rows = run("SELECT channel_id, count FROM comptages_velo")
    assert names == ["channel_id", "count"] and rows == [("C1", 42.0)]
    _, rows = run("SELECT commune_insee, sum(volume_lost_m3) FROM fuites_reseau_eau GROUP BY ALL ORDER BY 1")
    assert rows[0][0] == "21054"


def test_window_functions_allowed_on_row_level_data(run: Any) -> None:
    _, rows = run(
        "SELECT line_id, hour, rank() OVER (PARTITION BY line_id ORDER BY sum(boardings) DESC) AS r "
        "FROM frequentation_bus GROUP BY 1, 2 QUALIFY r = 1 ORDER BY 1"
    )
    assert [row[0] for row in rows] == ["L1", "L2"]


def test_output_is_bounded(run: Any) -> None:
    assert len(run("SELECT * FROM frequentation_bus", max_rows=3)[1]) == 3
    assert len(run("SELECT * FROM frequentation_bus LIMIT 100", max_rows=3)[1]) == 3
    assert len(run("SELECT * FROM frequentation_bus LIMIT 2", max_rows=3)[1]) == 2
    assert len(run("SELECT * FROM frequentation_bus UNION ALL SELECT * FROM frequentation_bus", max_rows=30)[1]) == 30


def test_limit_forms(world: Any) -> None:
    refused(world, "SELECT * FROM frequentation_bus LIMIT 10%", "policy.unsupported_syntax")
    refused(world, "SELECT * FROM frequentation_bus LIMIT (SELECT 1)", "policy.unsupported_syntax")
    refused(world, "SELECT * FROM frequentation_bus LIMIT 1 + 1", "policy.unsupported_syntax")


# ---- functions and syntax --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT getenv('HOME')",
        "SELECT current_setting('threads')",
        "SELECT repeat('x', 100)",
        "SELECT lpad('x', 1000000, 'y')",
        "SELECT regexp_matches(stop_name, '(a+)+$') FROM frequentation_bus",
        "SELECT md5(stop_name) FROM frequentation_bus",
        "SELECT random()",
        "SELECT version()",
        "SELECT current_user",
        "SELECT list_value(1, 2)",
        "SELECT string_agg(stop_name, ',') FROM frequentation_bus",
        "SELECT list(stop_name) FROM frequentation_bus",
        "SELECT arg_max(stop_name, boardings) FROM frequentation_bus",
        "SELECT json_extract('{}', '$')",
        "SELECT read_text('/etc/passwd')",
        "SELECT nextval('s')",
        "SELECT unnest([1, 2])",
        "SELECT typeof(1)",
    ],
)
def test_functions_not_allowed(world: Any, sql: str) -> None:
    refused(world, sql, "policy.function_not_allowed")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT [1, 2]",
        "SELECT {'a': 1}",
        "SELECT COLUMNS('.*') FROM frequentation_bus",
        "SELECT * REPLACE (1 AS hour) FROM frequentation_bus",
        "SELECT #1 FROM frequentation_bus",
        "SELECT $1",
        "SELECT ?",
        "SELECT * FROM frequentation_bus USING SAMPLE 10%",
        "SELECT * FROM frequentation_bus a NATURAL JOIN frequentation_bus b",
        "SELECT * FROM frequentation_bus a POSITIONAL JOIN frequentation_bus b",
        "SELECT * FROM frequentation_bus a ASOF JOIN frequentation_bus b ON a.hour >= b.hour",
        "SELECT * FROM frequentation_bus a SEMI JOIN frequentation_bus b ON a.hour = b.hour",
        "SELECT * FROM frequentation_bus, LATERAL (SELECT 1)",
        "SELECT * FROM (VALUES (1)) v(a)",
        "SELECT * FROM frequentation_bus PIVOT (sum(boardings) FOR hour IN (7, 8))",
        "SELECT CAST(hour AS INT[]) FROM frequentation_bus",
        "SELECT CAST(hour AS STRUCT(a INT)) FROM frequentation_bus",
        "SELECT DISTINCT ON (line_id) line_id FROM frequentation_bus",
        "SELECT line_id FROM frequentation_bus GROUP BY ROLLUP (line_id)",
        "SELECT stop_name[1] FROM frequentation_bus",
        "SELECT x -> x + 1 FROM frequentation_bus",
        "SELECT hour = ANY (SELECT 1) FROM frequentation_bus",
        "SELECT (1, 2)",
    ],
)
def test_unsupported_syntax(world: Any, sql: str) -> None:
    with pytest.raises(PolicyError) as caught:
        world.plan(sql)
    assert caught.value.code in ("policy.unsupported_syntax", "policy.function_not_allowed"), caught.value


def test_allowed_scalar_functions_run(run: Any) -> None:
    sql = """
        SELECT lower(stop_name), upper(line_id), length(stop_name), substr(stop_name, 1, 3), trim(stop_name),
               concat(line_id, '-', hour), line_id || 'x', replace(stop_name, 'ê', 'e'), starts_with(stop_name, 'A'),
               date_trunc('month', day), date_part('year', day), extract(month FROM day), strftime(day, '%Y'),
               year(day), month(day), dayofweek(day), CAST(hour AS DOUBLE), TRY_CAST(stop_name AS INT), hour::VARCHAR,
               coalesce(NULL, hour), nullif(hour, 7), CASE WHEN hour > 12 THEN 'pm' ELSE 'am' END,
               greatest(hour, 10), least(hour, 10), round(boardings / 3, 2), floor(1.5), ceil(1.5), abs(-hour),
               day + INTERVAL 1 DAY, date_diff('day', day, DATE '2023-12-31'), hour BETWEEN 7 AND 8,
               stop_name LIKE 'A%', stop_name ILIKE 'a%', hour IS NOT DISTINCT FROM 7, hour % 2, hour // 2
        FROM frequentation_bus LIMIT 1
    """
    _, rows = run(sql)
    assert len(rows) == 1


def test_recursive_cte(world: Any) -> None:
    refused(
        world,
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
        "policy.recursive_query",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 AS __maillage_k",
        'SELECT "__MAILLAGE_S" FROM consommation_eau_menages',
        "SELECT w.__maillage_s FROM consommation_eau_menages w",
        "WITH __maillage_cte1 AS (SELECT 1) SELECT * FROM __maillage_cte1",
        "SELECT * FROM frequentation_bus AS __maillage_q1",
    ],
)
def test_reserved_names(world: Any, sql: str) -> None:
    refused(world, sql, "policy.reserved_name")


def test_ambiguous_names(world: Any) -> None:
    refused(world, "SELECT * FROM frequentation_bus, frequentation_bus", "policy.ambiguous")
    refused(world, "SELECT hour FROM frequentation_bus a, frequentation_bus b", "policy.ambiguous")
    refused(
        world, "SELECT line_id, sum(hour) AS hour FROM frequentation_bus GROUP BY 1 HAVING hour > 3", "policy.ambiguous"
    )


def test_duckdb_name_precedence_the_engine_relies_on(con: duckdb.DuckDBPyConnection) -> None:
    """The engine resolves a name that is both a column and an alias as DuckDB does; pin DuckDB's behaviour."""
    cur = con.cursor()
    cur.execute("CREATE TEMP TABLE prec AS SELECT * FROM (VALUES (1, 30), (2, 20), (3, 10)) v(x, z)")
    assert cur.execute("SELECT z AS x FROM prec WHERE x = 1").fetchall() == [(30,)]  # WHERE: the column
    assert cur.execute("SELECT z AS x, x FROM prec ORDER BY 2").fetchall()[0] == (30, 1)  # SELECT: the column
    assert cur.execute("SELECT -x AS x FROM prec ORDER BY x").fetchall()[0] == (-3,)  # ORDER BY: the alias
    with pytest.raises(duckdb.BinderException):  # GROUP BY: the column (z is then not grouped)
        cur.execute("SELECT z AS x, count(*) FROM prec GROUP BY x").fetchall()
    cur.execute("DROP TABLE prec")


# ---- aggregation required ----------------------------------------------------------------------------------------


def test_aggregate_with_suppression(run: Any, raw_water: list[tuple[Any, ...]]) -> None:
    names, rows = run(
        "SELECT commune_insee, sum(volume_m3) AS v, count(DISTINCT meter_id) AS n FROM "
        "consommation_eau_menages GROUP BY commune_insee ORDER BY 1"
    )
    assert names == ["commune_insee", "v", "n"]
    expected = truth(raw_water, lambda row: row[1])
    assert [r[0] for r in rows] == ["21166", "21231"]  # 21054 (3 meters) suppressed, 99999 filtered out
    for commune, volume, meters in rows:
        assert volume == pytest.approx(expected[commune][0]) and meters == expected[commune][1]


def test_plan_reports_k(world: Any, con: duckdb.DuckDBPyConnection) -> None:
    plan = world.plan("SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1")
    assert plan.aggregated and plan.k == K and plan.k_column == K_COLUMN
    assert plan.datasets == (WATER,)
    cursor = con.cursor()
    cursor.execute(plan.sql)
    assert [d[0] for d in cursor.description][-1] == K_COLUMN
    assert all(row[-1] >= K for row in cursor.fetchall())  # HAVING already removed small groups
    row_level = world.plan("SELECT * FROM frequentation_bus")
    assert not row_level.aggregated and row_level.k is None and row_level.k_column is None


def test_query_without_group_by_is_one_group(run: Any) -> None:
    assert run("SELECT count(*) FROM consommation_eau_menages WHERE commune_insee = '21054'")[1] == []
    assert run("SELECT count(*) FROM consommation_eau_menages WHERE commune_insee = '21166'")[1] == [(48,)]
    assert run("SELECT count(*) FROM consommation_eau_menages WHERE commune_insee = '99999'")[1] == []


def test_shapes_carry_the_subject(run: Any, raw_water: list[tuple[Any, ...]]) -> None:
    expected = {k: v for k, v in truth(raw_water, lambda row: row[1]).items() if v[1] >= K}
    shapes = [
        "WITH w AS (SELECT commune_insee AS c, volume_m3 AS v FROM consommation_eau_menages) "
        "SELECT c, sum(v) FROM w GROUP BY c",
        "SELECT c, sum(v) FROM (SELECT commune_insee c, volume_m3 v FROM (SELECT * FROM consommation_eau_menages)) "
        "GROUP BY ALL",
        "WITH a AS (SELECT * FROM consommation_eau_menages WHERE month < DATE '2023-04-01'), "
        "b AS (SELECT * FROM consommation_eau_menages WHERE month >= DATE '2023-04-01'), "
        "u AS (SELECT commune_insee, volume_m3 FROM a UNION ALL SELECT commune_insee, volume_m3 FROM b) "
        "SELECT commune_insee, sum(volume_m3) FROM u GROUP BY 1",
        "SELECT commune_insee, sum(t) FROM (SELECT meter_id, commune_insee, sum(volume_m3) AS t "
        "FROM consommation_eau_menages GROUP BY meter_id, commune_insee) GROUP BY commune_insee",
        "WITH agg AS (SELECT commune_insee, sum(volume_m3) AS s FROM consommation_eau_menages GROUP BY 1) "
        "SELECT commune_insee, s FROM agg",
        "WITH agg AS (SELECT commune_insee, sum(volume_m3) AS s FROM consommation_eau_menages GROUP BY 1) "
        "SELECT * FROM agg WHERE s > 0",
    ]
    for sql in shapes:
        _, rows = run(sql)
        assert {r[0]: r[1] for r in rows} == pytest.approx({k: v[0] for k, v in expected.items()}), sql


def test_self_join_counts_both_sides(run: Any) -> None:
    _, rows = run(
        "SELECT a.commune_insee, count(*) FROM consommation_eau_menages a JOIN consommation_eau_menages b "
        "ON a.commune_insee = b.commune_insee AND a.month = b.month GROUP BY 1 ORDER BY 1"
    )
    assert [r[0] for r in rows] == ["21166", "21231"]
    assert dict(rows)["21166"] == 8 * 8 * 6


def test_join_with_open_data(run: Any) -> None:
    _, rows = run(
        "SELECT l.pipe_material, count(DISTINCT w.meter_id) FROM fuites_reseau_eau l JOIN consommation_eau_menages w "
        "ON l.commune_insee = w.commune_insee GROUP BY 1 ORDER BY 1"
    )
    assert rows == [("PVC", 28), ("fonte", 31)]  # fonte: 21231, 21054 and 21166; 21054 alone would be suppressed


def test_released_groups_are_post_processed(run: Any) -> None:
    _, rows = run(
        "WITH a AS (SELECT commune_insee, avg(volume_m3) AS m FROM consommation_eau_menages GROUP BY 1), "
        "b AS (SELECT commune_insee, count(*) AS n FROM consommation_eau_menages GROUP BY 1) "
        "SELECT a.commune_insee, round(m, 1), n FROM a JOIN b USING (commune_insee) ORDER BY n DESC LIMIT 1"
    )
    assert rows[0][0] == "21231" and rows[0][2] == 120
    _, rows = run(
        "SELECT sum(s) FROM (SELECT commune_insee, sum(volume_m3) AS s FROM consommation_eau_menages GROUP BY 1)"
    )
    assert len(rows) == 1


def test_expression_subquery_over_aggregate(run: Any) -> None:
    _, rows = run(
        "SELECT commune_insee FROM fuites_reseau_eau WHERE volume_lost_m3 < "
        "(SELECT avg(volume_m3) FROM consommation_eau_menages) ORDER BY 1"
    )
    assert rows
    _, rows = run("SELECT (SELECT count(*) FROM consommation_eau_menages WHERE commune_insee = '21054')")
    assert rows == [(None,)]  # the group of 3 meters is suppressed inside the scalar subquery


def test_consent_filter(world: Any, con: duckdb.DuckDBPyConnection, released: Any) -> None:
    permission = Permission(WATER, water()[WATER].terms, "meter_id IN (SELECT subject FROM consent_water)")
    plan = world.plan("SELECT count(DISTINCT meter_id) FROM consommation_eau_menages", {WATER: permission})
    (count,) = released(con, plan)[1][0]
    consented = con.execute("SELECT count(*) FROM consent_water WHERE subject NOT LIKE 'M99999%'").fetchone()
    assert consented is not None and count == consented[0]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM consommation_eau_menages",
        "SELECT volume_m3 FROM consommation_eau_menages ORDER BY 1 LIMIT 1",
        "SELECT commune_insee, volume_m3 FROM consommation_eau_menages GROUP BY 1",
        "SELECT commune_insee FROM consommation_eau_menages",
        "WITH w AS (SELECT * FROM consommation_eau_menages) SELECT * FROM w",
        "SELECT * FROM consommation_eau_menages UNION ALL SELECT * FROM consommation_eau_menages",
        "SELECT month, volume_m3 + 1 FROM consommation_eau_menages GROUP BY month",
    ],
)
def test_aggregation_required(world: Any, sql: str) -> None:
    refused(world, sql, "policy.aggregation_required")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM consommation_eau_menages WHERE meter_id = 'M21231-00'",
        "SELECT count(*) FROM consommation_eau_menages WHERE meter_id LIKE 'M21231-0%'",
        "SELECT count(*) FROM consommation_eau_menages WHERE starts_with(meter_id, 'M')",
        "SELECT count(*) FROM consommation_eau_menages w JOIN fuites_reseau_eau l ON w.meter_id = l.leak_id",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1 HAVING max(meter_id) > 'M'",
        "SELECT sum(CASE WHEN meter_id = 'M21231-00' THEN volume_m3 END) FROM consommation_eau_menages",
        "WITH w AS (SELECT meter_id AS m, volume_m3 FROM consommation_eau_menages) SELECT sum(volume_m3) FROM w "
        "WHERE m = 'M21231-00'",
        "SELECT meter_id AS m, count(*) FROM consommation_eau_menages WHERE m = 'x'",
        "SELECT count(*) FROM consommation_eau_menages WHERE meter_id IN (SELECT leak_id FROM fuites_reseau_eau)",
    ],
)
def test_identifier_filter(world: Any, sql: str) -> None:
    with pytest.raises(PolicyError) as caught:
        world.plan(sql)
    assert caught.value.code in ("policy.identifier_filter", "policy.identifier_column"), caught.value


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT meter_id, sum(volume_m3) FROM consommation_eau_menages GROUP BY meter_id",
        "SELECT lower(meter_id), count(*) FROM consommation_eau_menages GROUP BY 1",
        "SELECT m, count(*) FROM (SELECT meter_id AS m FROM consommation_eau_menages) GROUP BY m",
        "SELECT count(*) FROM consommation_eau_menages GROUP BY meter_id",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY ALL, meter_id",
    ],
)
def test_identifier_group_key(world: Any, sql: str) -> None:
    with pytest.raises(PolicyError) as caught:
        world.plan(sql)
    assert caught.value.code in (
        "policy.identifier_group_key",
        "policy.identifier_column",
        "policy.unsupported_syntax",
    ), caught.value


def test_forbidden_group_keys_from_terms(world: Any) -> None:
    refused(
        world,
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1",
        "policy.identifier_group_key",
        water(forbidden_group_keys=["meter_id", "commune_insee"]),
    )


def test_identifier_column(world: Any) -> None:
    refused(world, "SELECT max(meter_id) FROM consommation_eau_menages", "policy.identifier_column")
    refused(world, "SELECT sum(length(meter_id)) FROM consommation_eau_menages", "policy.identifier_column")
    refused(
        world,
        "SELECT count(*) FROM consommation_eau_menages GROUP BY month ORDER BY min(meter_id)",
        "policy.identifier_column",
    )
    assert world.plan("SELECT count(meter_id), count(DISTINCT meter_id) FROM consommation_eau_menages")


def test_aggregate_not_allowed(world: Any) -> None:
    refused(world, "SELECT median(volume_m3) FROM consommation_eau_menages", "policy.aggregate_not_allowed")
    refused(world, "SELECT stddev(volume_m3) FROM consommation_eau_menages", "policy.aggregate_not_allowed")
    refused(world, "SELECT sum(DISTINCT volume_m3) FROM consommation_eau_menages", "policy.aggregate_not_allowed")
    refused(
        world,
        "SELECT avg(volume_m3) FROM consommation_eau_menages",
        "policy.aggregate_not_allowed",
        water(functions=["count", "sum"]),
    )
    refused(
        world,
        "SELECT count(DISTINCT commune_insee) FROM consommation_eau_menages",
        "policy.aggregate_not_allowed",
        water(functions=["count", "sum"]),
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sum(volume_m3 * 2) FROM consommation_eau_menages",
        "SELECT sum(CASE WHEN commune_insee = '21231' THEN volume_m3 END) FROM consommation_eau_menages",
        "SELECT sum(volume_m3 * (month = DATE '2023-01-01')::INT) FROM consommation_eau_menages",
        "SELECT count(nullif(commune_insee, '21231')) FROM consommation_eau_menages",
        "SELECT count(*) FILTER (WHERE volume_m3 > 19) FROM consommation_eau_menages",
        "WITH w AS (SELECT greatest(0, 1 - abs(volume_m3 - 12.3)) AS hit FROM consommation_eau_menages) "
        "SELECT sum(hit) FROM w",
    ],
)
def test_aggregate_argument(world: Any, sql: str) -> None:
    refused(world, sql, "policy.aggregate_argument")


def test_min_max_personal(world: Any) -> None:
    refused(world, "SELECT max(volume_m3) FROM consommation_eau_menages", "policy.min_max_personal")
    refused(
        world, "SELECT min(v) FROM (SELECT volume_m3 AS v FROM consommation_eau_menages)", "policy.min_max_personal"
    )
    assert world.plan("SELECT max(month) FROM consommation_eau_menages")
    assert world.plan("SELECT max(volume_m3) FROM consommation_eau_menages", water(min_max_on_personal=True))


def test_window_function(world: Any) -> None:
    refused(
        world,
        "SELECT commune_insee, rank() OVER (ORDER BY sum(volume_m3)) FROM consommation_eau_menages GROUP BY 1",
        "policy.window_function",
    )
    refused(
        world,
        "WITH w AS (SELECT volume_m3, row_number() OVER () AS r FROM consommation_eau_menages) SELECT sum(volume_m3) "
        "FROM w WHERE r = 1",
        "policy.window_function",
    )
    refused(
        world,
        "WITH a AS (SELECT commune_insee, sum(volume_m3) s FROM consommation_eau_menages GROUP BY 1) "
        "SELECT commune_insee, rank() OVER (ORDER BY s) FROM a",
        "policy.window_function",
    )


def test_limit_not_allowed(world: Any) -> None:
    refused(
        world,
        "SELECT sum(v) FROM (SELECT volume_m3 AS v FROM consommation_eau_menages ORDER BY v DESC LIMIT 5)",
        "policy.limit_not_allowed",
    )
    refused(
        world,
        "SELECT sum(v) FROM (SELECT volume_m3 AS v FROM consommation_eau_menages OFFSET 3)",
        "policy.limit_not_allowed",
    )
    assert world.plan(
        "SELECT commune_insee, sum(volume_m3) FROM consommation_eau_menages GROUP BY 1 ORDER BY 2 LIMIT 1"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT DISTINCT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1",
        "SELECT count(*) FROM (SELECT DISTINCT commune_insee, volume_m3 FROM consommation_eau_menages)",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1 UNION "
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1 EXCEPT ALL "
        "SELECT commune_insee, count(*) FROM consommation_eau_menages WHERE volume_m3 > 3 GROUP BY 1",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY 1 UNION ALL "
        "SELECT commune_insee, count(*) FROM fuites_reseau_eau GROUP BY 1",
        "SELECT count(*) FROM fuites_reseau_eau WHERE volume_lost_m3 IN "
        "(SELECT volume_m3 FROM consommation_eau_menages)",
        "SELECT count(*) FROM fuites_reseau_eau l WHERE EXISTS (SELECT 1 FROM consommation_eau_menages w "
        "WHERE w.commune_insee = l.commune_insee AND w.volume_m3 > 19.9)",
        "SELECT commune_insee, count(*) FROM consommation_eau_menages w GROUP BY 1 HAVING count(*) > "
        "(SELECT count(*) FROM fuites_reseau_eau l WHERE l.commune_insee = w.commune_insee)",
        "WITH a AS (SELECT commune_insee, count(*) n FROM consommation_eau_menages GROUP BY 1) "
        "SELECT a.n, count(*) FROM a JOIN consommation_eau_menages w USING (commune_insee) GROUP BY 1",
        "SELECT commune_insee, avg(t) FROM (SELECT a.meter_id, a.commune_insee, sum(b.volume_m3) AS t FROM "
        "consommation_eau_menages a JOIN consommation_eau_menages b USING (month) GROUP BY 1, 2) GROUP BY 1",
    ],
)
def test_unsupported_shapes(world: Any, sql: str) -> None:
    with pytest.raises(PolicyError) as caught:
        world.plan(sql)
    assert caught.value.code in ("policy.unsupported_shape", "policy.identifier_group_key"), caught.value


def test_no_subject_key_nor_primary_key(world: Any) -> None:
    terms = Terms.model_validate(
        {
            **world.permissions[BUS].terms.model_dump(),
            "aggregation": {"mode": "required", "min_group_size": 3},
        }
    )
    refused(world, "SELECT count(*) FROM frequentation_bus", "policy.unsupported_shape", {BUS: Permission(BUS, terms)})


# ---- runtime errors on protected rows ------------------------------------------------------------------------------


def test_duckdb_try_semantics_the_engine_relies_on(con: duckdb.DuckDBPyConnection) -> None:
    """TRY() turns the row-dependent runtime errors into NULL; pin it for DuckDB upgrades."""
    cur = con.cursor()
    for expression in (
        "CAST('x' AS INTEGER)",
        "9223372036854775807 + 1",
        "1 // 0",
        "DATE '2020-01-01' + INTERVAL 100000000 YEAR",
        "CAST('abc' AS BOOLEAN)",
        "make_date(2020, 13, 1)",
    ):
        assert cur.execute(f"SELECT TRY({expression})").fetchall() == [(None,)], expression
    with pytest.raises(duckdb.BinderException):  # which is why HAVING is moved out of the aggregation
        cur.execute("SELECT TRY(count(*)) FROM range(1)").fetchall()


def test_protected_computations_are_wrapped_in_try(world: Any) -> None:
    sql = world.plan(
        "WITH c AS (SELECT commune_insee, volume_m3 * 2 AS v FROM consommation_eau_menages WHERE volume_m3 > 1) "
        "SELECT upper(a.commune_insee), count(*) FROM c a JOIN c b ON a.v = b.v GROUP BY 1"
    ).sql
    assert "TRY(volume_m3 * 2)" in sql
    assert "TRY(volume_m3 > 1)" in sql
    assert "TRY(a.v = b.v)" in sql
    assert "TRY(UPPER(a.commune_insee))" in sql
    sql = world.plan("SELECT count(*) FROM consommation_eau_menages WHERE commune_insee").sql
    assert "TRY(CAST(commune_insee AS BOOLEAN))" in sql
    sql = world.plan("SELECT min(CAST('x' AS INT)) FROM consommation_eau_menages").sql
    assert "MIN(TRY(CAST('x' AS INT)))" in sql


def test_having_runs_after_suppression(world: Any) -> None:
    sql = world.plan(
        "SELECT commune_insee, round(avg(volume_m3), 1) AS m FROM consommation_eau_menages GROUP BY 1 "
        "HAVING sum(volume_m3) > 10 ORDER BY m"
    ).sql
    inner = sql[sql.index("FROM (SELECT") :]
    # Groups below k go (counted) in the derived table; the caller's expressions run outside, on released groups.
    assert 'WHERE "__maillage_k" >= 5' in inner and "ROUND(" not in inner.split('AS "__maillage_r2"')[0]
    assert sql.index("ROUND(") < sql.index("FROM (SELECT")


def test_protected_rows_cannot_be_ordered_before_aggregation(world: Any) -> None:
    for sql in (
        "SELECT sum(v) FROM (SELECT volume_m3 AS v FROM consommation_eau_menages ORDER BY v)",
        "SELECT count(*) FROM (SELECT volume_m3 FROM consommation_eau_menages UNION ALL "
        "SELECT volume_m3 FROM consommation_eau_menages ORDER BY 1)",
        "SELECT avg(t) FROM (SELECT meter_id, sum(volume_m3) AS t FROM consommation_eau_menages GROUP BY 1 ORDER BY 2)",
    ):
        refused(world, sql, "policy.unsupported_shape")
    refused(
        world,
        "SELECT avg(t) FROM (SELECT meter_id, sum(volume_m3) AS t FROM consommation_eau_menages GROUP BY 1 LIMIT 3)",
        "policy.limit_not_allowed",
    )


def test_using_on_protected_rows(world: Any, run: Any) -> None:
    assert run(
        "SELECT count(*) FROM consommation_eau_menages a JOIN consommation_eau_menages b USING (commune_insee, month)"
    )[1]
    refused(
        world,
        "SELECT count(*) FROM consommation_eau_menages a JOIN fuites_reseau_eau b USING (commune_insee)",
        "policy.unsupported_shape",
    )


def test_subjects_are_counted_by_hash_only_when_every_subject_keyed_dataset_has_it(world: Any) -> None:
    from dataclasses import replace

    from exchange.policy import plan

    sql = "SELECT commune_insee, count(*) FROM consommation_eau_menages GROUP BY commune_insee"
    hashed = {slug: replace(info, has_subject_hash=True) for slug, info in world.datasets.items()}
    assert '"__maillage_sh" AS "__maillage_s"' in plan(sql, datasets=hashed, permissions=world.permissions).sql
    assert "__maillage_sh" not in world.plan(sql).sql  # versions written before the hash: the exact subject
    # Another dataset with a subject_key but no stored hash (an older version): the same subject could then be a hash
    # in one table and a value in the other (UNION ALL, joins), counted twice; every table counts the value.
    other = replace(world.datasets[WATER], slug="autre-eau", physical='ds_autre.main."rows"', has_subject_hash=False)
    mixed = {**hashed, "autre-eau": other}
    assert "__maillage_sh" not in plan(sql, datasets=mixed, permissions=world.permissions).sql


# The key the policy tests' tables are hashed with (conftest.create_tables).
TEST_KEY = territory_key("test pseudonym secret, not a real one", "242100410")


def _same_bucket_meters(count: int, bucket: int) -> list[str]:
    found = []
    index = 0
    while len(found) < count:
        meter = f"M-{index}"
        if pseudonym64(pseudonym(TEST_KEY, meter)) % 64 == bucket:
            found.append(meter)
        index += 1
    return found


def test_groups_below_the_hash_bound_are_decided_on_the_exact_count(world: Any, make_db: Any) -> None:
    from dataclasses import replace
    from datetime import date

    from exchange.policy import plan

    # k meters in 21231 and k - 1 in 21166, all in one hash bucket: the bound says 1 for both groups; the exact count
    # releases the first (k subjects) and suppresses the second, which the suppressed count reports.
    meters = _same_bucket_meters(2 * K - 1, bucket=7)
    rows = [(m, "21231", date(2023, 1, 1), 1.0, 3) for m in meters[:K]]
    rows += [(m, "21166", date(2023, m2, 1), 1.0, 3) for m in meters[K:] for m2 in (1, 2)]
    con = make_db(water=rows)
    hashed = {slug: replace(info, has_subject_hash=True) for slug, info in world.datasets.items()}
    for sql in (
        "SELECT commune_insee, count(*) AS n FROM consommation_eau_menages GROUP BY commune_insee",
        "WITH t AS (SELECT * FROM consommation_eau_menages) SELECT commune_insee, count(*) AS n FROM t GROUP BY 1",
    ):
        result = plan(sql, datasets=hashed, permissions=world.permissions)
        # Two phases over dataset scans only; a CTE (rows that could differ between two reads) counts in one pass.
        assert ("BIT_OR" in result.sql) is sql.startswith("SELECT") and result.suppressed_column is not None
        assert con.execute(result.sql).fetchall() == [("21231", K, 1, K)]  # n, suppressed groups, exact k
    whole = plan(
        "SELECT count(*) FROM consommation_eau_menages WHERE commune_insee = '21166'",
        datasets=hashed,
        permissions=world.permissions,
    )
    assert con.execute(whole.sql).fetchall() == []
    con.close()


def test_the_row_count_bound_releases_large_groups_and_leaves_the_others_to_the_next_tiers(
    counted_world: Any, world: Any, make_db: Any
) -> None:
    from dataclasses import replace

    from exchange.policy import plan

    con = make_db()
    by_commune = "SELECT commune_insee, count(*) AS n FROM consommation_eau_menages GROUP BY commune_insee ORDER BY 1"
    by_month = (
        "SELECT commune_insee, month, count(*) AS n FROM consommation_eau_menages GROUP BY commune_insee, month "
        "ORDER BY 1, 2"
    )
    for sql in (by_commune, by_month):
        counted = counted_world.plan(sql)
        # Tier one: the rows with a subject divided by the most rows of one meter (6), then buckets, then exact.
        assert 'COUNT("consommation_eau_menages"."__maillage_s") // 6' in counted.sql
        assert "BIT_OR" in counted.sql
        exact = world.plan(sql)
        assert con.execute(counted.sql).fetchall() != []
        released = [row[:-1] for row in con.execute(counted.sql).fetchall()]
        expected = [row[:-1] for row in con.execute(exact.sql).fetchall()]
        assert released == expected  # the same groups, values and suppressed count; only the k column differs
    # Joins can repeat a row: the row count of a joined group bounds nothing, only buckets are used.
    joined = counted_world.plan(
        "SELECT a.commune_insee, count(*) FROM consommation_eau_menages a "
        "JOIN consommation_eau_menages b USING (commune_insee, month) GROUP BY 1"
    )
    assert "// 6" not in joined.sql and "BIT_OR" in joined.sql
    # Uneven contributions (one meter holding far more than twice the mean): the bound would release little.
    water = counted_world.datasets[WATER]
    skewed = {**counted_world.datasets, WATER: replace(water, subject_rows_max=100)}
    assert "// 100" not in plan(by_commune, datasets=skewed, permissions=counted_world.permissions).sql
    con.close()
