"""Settings of the consent service (environment prefix ``MAILLAGE_CONSENT_``)."""

from __future__ import annotations

from pydantic import Field

from kit.settings import ServiceSettings, service_config

__all__ = ["ConsentSettings"]


class ConsentSettings(ServiceSettings):
    model_config = service_config("CONSENT")

    port: int = 8103
    expiry_interval_seconds: float = Field(
        default=30.0, gt=0, description="how often consents whose validity ended are marked expired"
    )
