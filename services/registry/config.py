"""Settings of the registry (environment prefix ``MAILLAGE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path

from kit.settings import ServiceSettings, service_config

__all__ = ["RegistrySettings"]


class RegistrySettings(ServiceSettings):
    model_config = service_config("REGISTRY")

    port: int = 8001
    node_id: str = "registry"
    federation_file: Path | None = None
