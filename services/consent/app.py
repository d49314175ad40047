"""The consent service application."""

from __future__ import annotations

from fastapi import FastAPI

from consent.config import ConsentSettings
from kit.service import create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the consent app (settings from the environment by default)."""
    return create_service_app(
        service="consent",
        settings=settings or ConsentSettings(),
        title="Maillage consent",
        description="Consent records, receipts and data-subject requests of the territories hosted on this node.",
    )
