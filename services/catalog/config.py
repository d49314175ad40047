"""Settings of the catalog service (environment prefix ``MAILLAGE_CATALOG_``)."""

from __future__ import annotations

from kit.settings import ServiceSettings, service_config

__all__ = ["CatalogSettings"]


class CatalogSettings(ServiceSettings):
    model_config = service_config("CATALOG")

    port: int = 8101
