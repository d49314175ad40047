"""The gateway application: the federation's front door. Stateless (no database)."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.config import GatewaySettings
from kit.service import create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the gateway app (settings from the environment by default)."""
    return create_service_app(
        service="gateway",
        settings=settings or GatewaySettings(),
        title="Maillage gateway",
        description="Front door of the federation: authentication, rate limits, routing, federated queries.",
        with_database=False,
    )
