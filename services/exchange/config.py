"""Settings of the exchange service (environment prefix ``MAILLAGE_EXCHANGE_``)."""

from __future__ import annotations

from kit.settings import ServiceSettings, service_config

__all__ = ["ExchangeSettings"]


class ExchangeSettings(ServiceSettings):
    model_config = service_config("EXCHANGE")

    port: int = 8102
