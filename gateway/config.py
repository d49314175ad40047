"""Settings of the gateway (environment prefix ``MAILLAGE_GATEWAY_``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from kit.settings import ServiceSettings, service_config

__all__ = ["GatewaySettings"]


class GatewaySettings(ServiceSettings):
    model_config = service_config("GATEWAY")

    port: int = 8000
    node_id: str = "gateway"
    registry_url: str = "http://127.0.0.1:8001"
    registry_key: SecretStr | None = Field(
        default=None, description="the gateway's key for the registry (scope apikeys:verify) to verify federated keys"
    )
    assertion_signing_key: SecretStr | None = Field(
        default=None,
        description=(
            "Ed25519 private key (base64url of 32 bytes) signing principal assertions to the services; without it "
            "the caller's own credential is forwarded"
        ),
    )
    assertion_lifetime_seconds: float = Field(default=30.0, gt=0, le=120)
    console_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:5173"], description="the only origins CORS allows (the console)"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger bodies get 413 before being read")
    rate_limit_per_key: float = Field(default=20.0, gt=0, description="requests per second per key or user")
    rate_limit_per_key_burst: int = Field(default=40, ge=1)
    rate_limit_per_organisation: float = Field(default=50.0, gt=0, description="requests per second per organisation")
    rate_limit_per_organisation_burst: int = Field(default=100, ge=1)
    rate_limit_anonymous: float = Field(default=10.0, gt=0, description="requests per second per client address")
    rate_limit_anonymous_burst: int = Field(default=20, ge=1)
    apikey_cache_seconds: float = Field(default=10.0, ge=0, le=60)
    directory_cache_seconds: float = Field(default=10.0, ge=0)
    query_node_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="deadline of each territory")
    proxy_timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("console_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
