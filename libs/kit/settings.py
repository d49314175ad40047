"""Settings shared by every service, read from the environment with one prefix per service.

A service subclasses :class:`ServiceSettings`, sets ``model_config = service_config("CATALOG")`` and a default port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.identifiers import validate_node_id, validate_siren
from kit.pseudonyms import DEVELOPMENT_SECRET

__all__ = ["PLACEHOLDER_SECRETS", "ServiceSettings", "service_config"]

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "changeme", "secret", "dev", "development", "insecure"})


def service_config(service: str) -> SettingsConfigDict:
    """Settings config reading ``MAILLAGE_<SERVICE>_*`` variables (and an optional ``.env``)."""
    return SettingsConfigDict(
        env_prefix=f"MAILLAGE_{service.upper()}_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )


class ServiceSettings(BaseSettings):
    """What every service needs: where to listen, its database, NATS, its node and territories, its secrets."""

    model_config = service_config("SERVICE")
    # Services that pseudonymise subjects (consent, exchange) need a real MAILLAGE_PSEUDONYM_SECRET outside development.
    uses_pseudonyms: ClassVar[bool] = False

    environment: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    data_dir: Path = Path(".maillage")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    nats_url: str = "nats://127.0.0.1:4222"
    nats_credentials_file: Path | None = Field(default=None, description="NATS .creds file (JWT + NKey seed)")
    nats_stream_replicas: int = Field(
        default=1, ge=1, le=5, description="replicas of the declared streams (3 in production)"
    )
    node_id: str = "local"
    territories: Annotated[list[str], NoDecode] = Field(default_factory=list)
    keyring_file: Path | None = None
    secret_key: SecretStr = SecretStr("changethis")
    # Shared by the consent service and the exchange of a node (one environment variable for both): the secret the
    # territories' pseudonymisation keys derive from (kit.pseudonyms). Changing it orphans every stored pseudonym.
    pseudonym_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET),
        validation_alias=AliasChoices("MAILLAGE_PSEUDONYM_SECRET", "pseudonym_secret"),
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    forwarded_allow_ips: str | None = Field(
        default=None, description="proxies trusted for X-Forwarded-For (e.g. the ingress controller's addresses)"
    )
    outbox_poll_interval: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=100, ge=1, le=10_000)
    outbox_retention_hours: float = Field(default=168.0, gt=0)
    consumer_max_deliver: int = Field(default=5, ge=1)
    consumer_ack_wait: float = Field(default=30.0, gt=0)
    # Callers coming through the gateway (kit.auth.assertions, kit.auth.oidc; docs/GATEWAY.md).
    assertion_public_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Ed25519 public keys (base64url, comma-separated) of the trusted gateways"
    )
    assertion_mode: Literal["accept", "require"] | None = Field(
        default=None,
        description=(
            "require: federated API keys are refused unless they come through the gateway (as an assertion); "
            "accept: they are also taken directly. Default: require in production, accept otherwise"
        ),
    )
    oidc_issuer: str | None = Field(default=None, description="Keycloak realm whose access tokens are accepted")
    oidc_audience: str = "maillage-api"
    oidc_leeway_seconds: float = Field(default=30.0, ge=0, le=60)

    @field_validator("territories", mode="before")
    @classmethod
    def _split_territories(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("assertion_public_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def gateway_required(self) -> bool:
        """Whether federated API keys must come through the gateway (see ``assertion_mode``)."""
        mode = self.assertion_mode or ("require" if self.environment == "production" else "accept")
        return mode == "require"

    @field_validator("territories")
    @classmethod
    def _sirens(cls, value: list[str]) -> list[str]:
        return [validate_siren(siren) for siren in value]

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        return validate_node_id(value)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> ServiceSettings:
        if self.environment != "development":
            if self.secret_key.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"secret_key is a placeholder; set a real secret before running in {self.environment}")
            if len(self.secret_key.get_secret_value()) < 32:
                raise ValueError("secret_key must be at least 32 characters outside development")
            pseudonym_secret = self.pseudonym_secret.get_secret_value()
            if self.uses_pseudonyms and (pseudonym_secret == DEVELOPMENT_SECRET or len(pseudonym_secret) < 32):
                raise ValueError(
                    "MAILLAGE_PSEUDONYM_SECRET must be set (32 characters or more) "
                    f"before running in {self.environment}"
                )
        return self

    def resolved_database_url(self, service: str) -> str:
        """The configured database URL, or SQLite ``<data_dir>/<service>.db``."""
        if self.database_url:
            return self.database_url
        path = (self.data_dir / f"{service}.db").resolve()
        return f"sqlite:///{path}"

    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
