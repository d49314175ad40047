"""Settings of the registry (environment prefix ``MAILLAGE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kit.settings import ServiceSettings, service_config

__all__ = ["RegistrySettings"]


class RegistrySettings(ServiceSettings):
    model_config = service_config("REGISTRY")

    port: int = 8001
    node_id: str = "registry"
    federation_file: Path | None = None
    grants_reconcile_interval: float = Field(default=30.0, gt=0, description="seconds between full reconciliations")
    expiry_check_interval: float = Field(default=5.0, gt=0, description="seconds between checks for expired agreements")
