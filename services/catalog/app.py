"""The catalog service application."""

from __future__ import annotations

from fastapi import FastAPI

from catalog.api import router
from catalog.config import CatalogSettings
from catalog.handlers import directory_consumer
from kit.service import create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the catalog app (settings from the environment by default)."""
    return create_service_app(
        service="catalog",
        settings=settings or CatalogSettings(),
        title="Maillage catalog",
        description="Dataset metadata of the territories hosted on this node, and the federated catalogue.",
        routers=[router],
        consumers=lambda ctx: [directory_consumer(ctx)],
    )
