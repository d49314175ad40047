"""The federation registry application."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings
from registry import service
from registry.api import router
from registry.config import RegistrySettings
from registry.schemas import FederationFile

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _seed(ctx: ServiceContext, settings: RegistrySettings) -> int:
    if settings.federation_file is None or ctx.database is None:
        return 0
    federation = FederationFile.model_validate_json(settings.federation_file.read_text(encoding="utf-8"))
    with ctx.database.unit_of_work() as session:
        return service.seed_directory(db_session=session, federation=federation, source=ctx.source)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the registry app (settings from the environment by default)."""
    registry_settings = settings if isinstance(settings, RegistrySettings) else RegistrySettings()

    async def on_startup(ctx: ServiceContext) -> None:
        changed = await asyncio.to_thread(_seed, ctx, registry_settings)
        if changed:
            log.info("directory seeded from %s: %d entries changed", registry_settings.federation_file, changed)

    return create_service_app(
        service="registry",
        settings=registry_settings,
        title="Maillage registry",
        description="Federation directory, sharing agreements, federated API keys and the public register.",
        routers=[router],
        on_startup=on_startup,
    )
