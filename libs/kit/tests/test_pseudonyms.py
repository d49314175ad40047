from __future__ import annotations

import duckdb
from hypothesis import given
from hypothesis import strategies as st

from kit.pseudonyms import pseudonym, pseudonym64, pseudonym_sql, territory_key


@given(identifier=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_duckdb_computes_the_same_pseudonym_as_python(identifier: str) -> None:
    key = territory_key("a node secret of at least thirty-two characters", "242100410")
    con = duckdb.connect()
    try:
        row = con.execute(f"SELECT {pseudonym_sql('x', key)} FROM (SELECT ? AS x)", [identifier]).fetchone()
    finally:
        con.close()
    assert row is not None and row[0] == pseudonym64(pseudonym(key, identifier))


def test_keys_differ_per_territory_and_per_secret() -> None:
    dijon, besancon = territory_key("s" * 32, "242100410"), territory_key("s" * 32, "242500361")
    assert dijon != besancon and territory_key("t" * 32, "242100410") != dijon
    assert pseudonym(dijon, "M21231-01") != pseudonym(besancon, "M21231-01")
    assert len(pseudonym(dijon, "M21231-01")) == 64


def test_integers_hash_as_their_decimal_text_and_null_stays_null() -> None:
    key = territory_key("s" * 32, "242100410")
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT {pseudonym_sql('x', key)} FROM (VALUES (CAST(123 AS BIGINT)), (NULL)) t(x)"
        ).fetchall()
    finally:
        con.close()
    assert rows == [(pseudonym64(pseudonym(key, "123")),), (None,)]
