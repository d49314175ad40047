"""Plain factory functions for tests."""

from __future__ import annotations

import random

from contracts.events import TerritoryRegisteredV1

__all__ = ["random_siren", "territory_event"]


def random_siren(rng: random.Random | None = None) -> str:
    """A random nine-digit SIREN with a valid Luhn key."""
    rng = rng or random.Random()
    body = [rng.randrange(10) for _ in range(8)]
    for check in range(10):
        digits = [*body, check]
        total = 0
        for position, value in enumerate(reversed(digits)):
            if position % 2 == 1:
                value *= 2
                if value > 9:
                    value -= 9
            total += value
        if total % 10 == 0:
            return "".join(map(str, digits))
    raise AssertionError("unreachable: one check digit always fits")


def territory_event(siren: str | None = None, *, name: str = "CC de test", population: int = 1000) -> TerritoryRegisteredV1:
    """A valid ``registry.territory.registered`` event."""
    return TerritoryRegisteredV1(
        siren=siren or random_siren(), name=name, kind="CC", population=population, communes=["21231"]
    )
