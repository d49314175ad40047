"""Settings of the consent service (environment prefix ``MAILLAGE_CONSENT_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kit.settings import ServiceSettings, service_config

__all__ = ["ConsentSettings"]


class ConsentSettings(ServiceSettings):
    model_config = service_config("CONSENT")
    uses_pseudonyms: ClassVar[bool] = True

    port: int = 8103
    expiry_interval_seconds: float = Field(
        default=30.0, gt=0, description="how often consents whose validity ended are marked expired"
    )
