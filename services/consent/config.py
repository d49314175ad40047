"""Settings of the consent service (environment prefix ``MAILLAGE_CONSENT_``)."""

from __future__ import annotations

from kit.settings import ServiceSettings, service_config

__all__ = ["ConsentSettings"]


class ConsentSettings(ServiceSettings):
    model_config = service_config("CONSENT")

    port: int = 8103
