"""The exchange service application."""

from __future__ import annotations

from fastapi import FastAPI

from exchange.config import ExchangeSettings
from kit.service import create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the exchange app (settings from the environment by default)."""
    return create_service_app(
        service="exchange",
        settings=settings or ExchangeSettings(),
        title="Maillage exchange",
        description="The territories' data on this node and the policy-enforced compute-to-data query engine.",
    )
