"""Plans are reused only for the same SQL under the same grants and dataset versions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from exchange.policy import Permission, PlanCache, PolicyError

from .conftest import WATER, water_terms

SQL = "SELECT commune_insee, count(*) AS n FROM consommation_eau_menages GROUP BY 1"


def test_a_repeated_query_is_planned_once_and_any_change_plans_again(world: Any) -> None:
    cache = PlanCache(size=8)
    first = cache.plan(SQL, datasets=world.datasets, permissions=world.permissions)
    assert cache.plan(SQL, datasets=world.datasets, permissions=world.permissions) is first
    assert (cache.hits, cache.misses) == (1, 1)
    # Other terms (a larger k), another consent filter, another stored version: planned again.
    stricter = {**world.permissions, WATER: Permission(WATER, water_terms(min_group_size=50))}
    assert cache.plan(SQL, datasets=world.datasets, permissions=stricter).k == 50
    consented = {**world.permissions, WATER: replace(world.permissions[WATER], consent_filter="FALSE")}
    assert "FALSE" in cache.plan(SQL, datasets=world.datasets, permissions=consented).sql
    reingested = {**world.datasets, WATER: replace(world.datasets[WATER], rows=12_345)}
    cache.plan(SQL, datasets=reingested, permissions=world.permissions)
    assert cache.misses == 4 and cache.hits == 1
    # Refusals are not kept.
    for _ in range(2):
        with pytest.raises(PolicyError):
            cache.plan(
                "SELECT meter_id FROM consommation_eau_menages", datasets=world.datasets, permissions=world.permissions
            )
    assert cache.misses == 6


def test_the_cache_is_bounded(world: Any) -> None:
    cache = PlanCache(size=2)
    for limit in (1, 2, 3):
        cache.plan(f"{SQL} LIMIT {limit}", datasets=world.datasets, permissions=world.permissions)
    cache.plan(f"{SQL} LIMIT 1", datasets=world.datasets, permissions=world.permissions)
    assert cache.misses == 4 and cache.hits == 0
