"""Registry → NATS → catalog: the federation directory reaches every node, and nothing is lost while NATS is down.

Real nats-server (killed and restarted), registry on SQLite and on PostgreSQL, catalog on SQLite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from catalog.app import create_app as create_catalog
from catalog.config import CatalogSettings
from kit.nats_server import NatsServer
from kit.testing.factories import bootstrap_key, operator_principal, referentiel_path, service_settings
from registry.app import create_app as create_registry
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

DIJON, BESANCON, NORGE_TILLE, LOUE_LISON = "242100410", "242500361", "200069540", "200068070"


def federation_file(path, catalog_url: str) -> None:
    epcis = {e["siren"]: e for e in json.loads(referentiel_path().read_text(encoding="utf-8"))}
    territories = [
        {
            "siren": siren,
            "name": epcis[siren]["nom"],
            "type": epcis[siren]["type"],
            "population": epcis[siren]["populationTotale"],
            "communes": [{"insee": c["insee"], "name": c["nom"]} for c in epcis[siren]["communes"]],
        }
        for siren in (DIJON, BESANCON, NORGE_TILLE, LOUE_LISON)
    ]
    urls = {"catalog": catalog_url, "exchange": "http://127.0.0.1:1/", "consent": "http://127.0.0.1:2/"}
    nodes = [
        {"id": "dijon", "name": "Nœud de Dijon Métropole", "territories": [DIJON], "urls": urls},
        {"id": "operateur", "name": "Nœud mutualisé", "territories": [NORGE_TILLE, LOUE_LISON], "urls": urls},
    ]
    path.write_text(json.dumps({"version": 1, "territories": territories, "nodes": nodes}), encoding="utf-8")


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_directory_reaches_catalog_and_survives_nats_outage(own_nats_server: NatsServer, database_url, tmp_path):
    fed = tmp_path / "federation.json"
    federation_file(fed, "http://127.0.0.1:8101/")
    keyring = tmp_path / "keyring.json"
    admin = bootstrap_key(keyring, operator_principal())
    registry = create_registry(
        service_settings(
            RegistrySettings,
            data_dir=tmp_path / "registry",
            nats_url=own_nats_server.url,
            database_url=database_url,
            federation_file=fed,
            keyring_file=keyring,
        )
    )
    catalog = create_catalog(
        service_settings(
            CatalogSettings,
            data_dir=tmp_path / "catalog",
            nats_url=own_nats_server.url,
            node_id="dijon",
            territories=[DIJON],
            keyring_file=keyring,
        )
    )
    with TestClient(registry) as reg, TestClient(catalog) as cat:
        assert {t["siren"] for t in reg.get("/v1/territories").json()} == {DIJON, BESANCON, NORGE_TILLE, LOUE_LISON}
        eventually(lambda: len(cat.get("/v1/federation/territories").json()) == 4, "4 territories on the catalog")
        eventually(lambda: len(cat.get("/v1/federation/nodes").json()) == 2, "2 nodes on the catalog")
        dijon = next(t for t in cat.get("/v1/federation/territories").json() if t["siren"] == DIJON)
        assert dijon["name"] == "Dijon Métropole" and "21231" in dijon["communes"]
        assert cat.get("/v1/territories").json() == [{"siren": DIJON, "name": "Dijon Métropole"}]

        # Only operators change the directory.
        body = {"name": "Dijon Métropole", "kind": "METRO", "population": 263673, "communes": ["21231"]}
        assert reg.put(f"/v1/territories/{DIJON}", json=body).status_code == 401
        bad_key = reg.put(f"/v1/territories/{DIJON}", json=body, headers={"Authorization": "Bearer mlg_adm_x"})
        assert bad_key.json()["error"] == "auth.invalid_credentials"
        auth = {"Authorization": f"Bearer {admin}"}
        assert (
            reg.put("/v1/territories/242100411", json=body, headers=auth).json()["error"] == "territory.invalid_siren"
        )

        own_nats_server.kill()
        eventually(lambda: reg.get("/readyz").status_code == 503, "registry degraded")
        eventually(lambda: cat.get("/readyz").status_code == 503, "catalog degraded")
        response = reg.put(f"/v1/territories/{DIJON}", json=body, headers=auth)
        assert response.status_code == 200, response.text  # accepted while NATS is down
        assert reg.get("/readyz").json()["outbox_pending"] == 1

        own_nats_server.start()
        eventually(lambda: reg.get("/readyz").status_code == 200, "registry ready again")
        eventually(lambda: cat.get("/readyz").status_code == 200, "catalog ready again")
        eventually(
            lambda: any(t["population"] == 263673 for t in cat.get("/v1/federation/territories").json()),
            "the change made during the outage",
        )
        assert reg.get("/readyz").json()["outbox_pending"] == 0
