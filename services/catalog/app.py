"""The catalog service application."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from catalog.api import router
from catalog.config import CatalogSettings
from catalog.export import router as export_router
from catalog.handlers import directory_consumer, index_consumer, load_index
from catalog.search import SearchIndex
from catalog.seeding import seed_demo
from catalog.service import Publication
from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the catalog app (settings from the environment by default)."""
    catalog_settings = settings if isinstance(settings, CatalogSettings) else CatalogSettings()
    index = SearchIndex()
    tasks: set[asyncio.Task[None]] = set()  # keeps background tasks referenced until they finish

    async def on_startup(ctx: ServiceContext) -> None:
        count = await asyncio.to_thread(load_index, ctx, index)
        log.info("federated index loaded: %d datasets", count)
        if catalog_settings.seed_demo:
            publication = Publication.of(catalog_settings, source=ctx.source)
            seeding = seed_demo(ctx, publication, registry_url=catalog_settings.registry_url)
            tasks.add(asyncio.create_task(seeding, name="catalog-demo-seed"))

    app = create_service_app(
        service="catalog",
        settings=catalog_settings,
        title="Maillage catalog",
        description=(
            "Dataset metadata of the territories hosted on this node (DCAT-AP aligned, with Table Schemas), the "
            "federated catalogue fed by every node's advertisements, and its DCAT-AP export."
        ),
        routers=[router, export_router],
        consumers=lambda ctx: [directory_consumer(ctx), index_consumer(ctx, index)],
        on_startup=on_startup,
    )
    app.state.index = index
    return app
