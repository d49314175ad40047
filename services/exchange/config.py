"""Settings of the exchange service (environment prefix ``MAILLAGE_EXCHANGE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from kit.settings import ServiceSettings, service_config

__all__ = ["ExchangeSettings"]


class ExchangeSettings(ServiceSettings):
    model_config = service_config("EXCHANGE")
    uses_pseudonyms: ClassVar[bool] = True

    port: int = 8102
    registry_url: str | None = Field(default=None, description="verifies partners' federated API keys")
    registry_key: SecretStr | None = Field(default=None, description="credential with scope apikeys:verify")
    sandbox_workers: int = Field(default=2, ge=1, le=64)
    worker_memory_mb: int = Field(default=2048, ge=256, description="OS address-space limit of a query worker")
    duckdb_memory_limit: str = Field(default="1GB", pattern=r"^[0-9]+(MB|GB)$")
    duckdb_threads: int = Field(default=1, ge=1, le=16)
    query_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, description="wall clock, then the worker dies")
    max_result_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_result_rows: int = Field(default=1_000_000, ge=1)
    max_upload_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1024)
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="how often rows past their datasets' retention period are purged"
    )
    grants_staleness_seconds: float = Field(default=90.0, gt=0, description="grants not confirmed since: refused")
