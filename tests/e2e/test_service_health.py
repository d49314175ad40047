"""Every service starts with its lifespan (database, NATS, telemetry), reports ready, reports degraded with the
reason while nats-server is dead, and recovers when it is back."""

from __future__ import annotations

import importlib
import time

import pytest
from fastapi.testclient import TestClient

from kit.nats_server import NatsServer
from kit.testing.factories import service_settings

pytestmark = pytest.mark.integration

SERVICES = {
    "registry": "registry.config:RegistrySettings",
    "catalog": "catalog.config:CatalogSettings",
    "exchange": "exchange.config:ExchangeSettings",
    "consent": "consent.config:ConsentSettings",
    "gateway": "gateway.config:GatewaySettings",
}


def load(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def wait_for_status(client: TestClient, status: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == status:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {response.status_code}: {response.text}")
        time.sleep(0.1)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_ready_then_degraded_then_recovered(service, own_nats_server: NatsServer, tmp_path):
    settings = service_settings(load(SERVICES[service]), data_dir=tmp_path, nats_url=own_nats_server.url)
    app = importlib.import_module(f"{service}.app").create_app(settings)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        ready = wait_for_status(client, 200)
        assert ready["status"] == "ready"
        assert ready["checks"]["nats"] == "ok"
        if service != "gateway":
            assert ready["checks"]["database"] == "ok"

        own_nats_server.kill()
        degraded = wait_for_status(client, 503)
        assert degraded["status"] == "degraded"
        assert degraded["checks"]["nats"] != "ok"
        assert client.get("/healthz").status_code == 200

        own_nats_server.start()
        assert wait_for_status(client, 200)["status"] == "ready"
        response = client.get("/readyz")
        assert "x-request-id" in response.headers


def test_service_refuses_placeholder_secret_outside_development(tmp_path):
    from catalog.config import CatalogSettings

    with pytest.raises(ValueError, match="placeholder"):
        CatalogSettings(environment="production", data_dir=tmp_path)
