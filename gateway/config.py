"""Settings of the gateway (environment prefix ``MAILLAGE_GATEWAY_``)."""

from __future__ import annotations

from kit.settings import ServiceSettings, service_config

__all__ = ["GatewaySettings"]


class GatewaySettings(ServiceSettings):
    model_config = service_config("GATEWAY")

    port: int = 8000
    node_id: str = "gateway"
    registry_url: str = "http://127.0.0.1:8001"
