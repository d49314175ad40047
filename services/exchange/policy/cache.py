"""Checked plans kept for queries that come again (dashboards, polling): parse, check and rewrite once.

A plan depends only on the SQL text, the datasets the caller may name (their schemas, access, stored statistics)
and the caller's permissions (terms, consent filter) — all part of the key, compared in full, so a change of grant,
of dataset version statistics or of consent snapshot alias plans again. Refusals are not kept (they are cheap and
must be audited with their reason each time anyway). Bounded, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from .engine import plan
from .model import DEFAULT_MAX_ROWS, DatasetInfo, Permission, Plan

__all__ = ["PlanCache"]

_Key = tuple[str, int, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


class PlanCache:
    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._plans: OrderedDict[_Key, Plan] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def plan(
        self,
        sql: str,
        *,
        datasets: Mapping[str, DatasetInfo],
        permissions: Mapping[str, Permission],
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> Plan:
        """The plan of ``sql`` for these datasets and permissions (see :func:`exchange.policy.plan`)."""
        key: _Key = (
            sql,
            max_rows,
            tuple(sorted((slug, repr(info)) for slug, info in datasets.items())),
            tuple(
                sorted(
                    (
                        slug,
                        f"{permission.dataset}|{permission.consent_filter}|"
                        f"{permission.terms.model_dump_json() if permission.terms is not None else ''}",
                    )
                    for slug, permission in permissions.items()
                )
            ),
        )
        found = self._plans.get(key)
        if found is not None:
            self._plans.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        checked = plan(sql, datasets=datasets, permissions=permissions, max_rows=max_rows)
        self._plans[key] = checked
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return checked
