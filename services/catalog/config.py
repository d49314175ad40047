"""Settings of the catalog service (environment prefix ``MAILLAGE_CATALOG_``)."""

from __future__ import annotations

from pydantic import Field

from kit.settings import ServiceSettings, service_config

__all__ = ["CatalogSettings"]


class CatalogSettings(ServiceSettings):
    model_config = service_config("CATALOG")

    port: int = 8101
    exchange_url: str | None = Field(default=None, description="this node's exchange; default: port + 1")
    uri_base: str | None = Field(default=None, description="base of stable dataset URIs; default: public URL")
    catalog_title: str = "Catalogue Maillage"
    registry_url: str | None = Field(default=None, description="the federation registry (public register)")
    seed_demo: bool = Field(default=False, description="publish the demo datasets of hosted territories that have none")

    def exchange_base_url(self) -> str:
        return (self.exchange_url or f"http://{self.host}:{self.port + 1}").rstrip("/")

    def dataset_uri_base(self) -> str:
        return (self.uri_base or self.base_url()).rstrip("/")
