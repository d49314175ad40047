"""`maillage keycloak-sync` against the real Keycloak of the session and a real registry: organisations, role groups,
partner clients and memberships are created once, kept afterwards, and the new partner's client-credentials token
resolves to the partner organisation."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kit.auth import AuthMethod
from kit.auth.oidc import OidcVerifier
from kit.nats_server import NatsServer
from kit.testing.factories import bootstrap_key, operator_principal, service_settings
from kit.testing.keycloak import KeycloakServer
from kit.testing.threads import ThreadServer
from maillage.cli import app
from maillage.keycloak_sync import ORGANISATION_ROLES, KeycloakSync, partner_client_id
from registry.app import create_app as create_registry
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

runner = CliRunner()

GRAND_DOLE = "200010650"  # a territory the realm file does not know
MOBILAB = "73282932000074"  # in the realm file already (organisation 732829320), without a partner-<SIRET> client
NEW_PARTNER = "55210055400013"
LATE_PARTNER = "44306184100047"


@pytest.fixture
def registry(nats_server: NatsServer, tmp_path: Path) -> Iterator[tuple[str, str]]:
    keyring = tmp_path / "keyring.json"
    operator = bootstrap_key(keyring, operator_principal())
    federation = tmp_path / "federation.json"
    territories = [
        {"siren": "242100410", "name": "Dijon Métropole", "type": "METRO"},
        {"siren": GRAND_DOLE, "name": "CA du Grand Dole", "type": "CA"},
    ]
    nodes = [{"id": "dole", "name": "Dole", "territories": [GRAND_DOLE], "urls": {"exchange": "http://127.0.0.1:9"}}]
    federation.write_text(json.dumps({"version": 1, "territories": territories, "nodes": nodes}), encoding="utf-8")
    settings = service_settings(
        RegistrySettings,
        data_dir=tmp_path / "registry",
        nats_url=nats_server.url,
        keyring_file=keyring,
        federation_file=federation,
    )
    with ThreadServer(create_registry(settings)) as server:
        yield server.url, operator


def _admit(registry_url: str, operator: str, siret: str, name: str) -> None:
    response = httpx.post(
        f"{registry_url}/v1/organisations",
        json={"siret": siret, "name": name, "contact_email": "contact@example.org"},
        headers={"Authorization": f"Bearer {operator}"},
        trust_env=False,
    )
    assert response.status_code == 201, response.text


def _sync(kc: KeycloakServer, registry_url: str, operator: str, *extra: str) -> str:
    result = runner.invoke(
        app,
        ["keycloak-sync", "--keycloak-url", kc.url, "--registry-url", registry_url, *extra],
        env={
            "MAILLAGE_KEYCLOAK_ADMIN_PASSWORD": kc.admin_credentials.password,
            "MAILLAGE_OPERATOR_KEY": operator,
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 0, result.output
    return result.output


def _created(output: str) -> list[str]:
    return [" ".join(line.split()[1:]) for line in output.splitlines() if line.startswith("created ")]


async def test_sync_creates_once_and_the_partner_client_gets_a_token(
    keycloak_server: KeycloakServer, registry: tuple[str, str], tmp_path: Path
) -> None:
    kc = keycloak_server
    registry_url, operator = registry
    _admit(registry_url, operator, MOBILAB, "Mobilab SAS")
    _admit(registry_url, operator, NEW_PARTNER, "Transports Comtois SA")

    first = _sync(kc, registry_url, operator)
    created = _created(first)
    assert f"organisation {GRAND_DOLE} CA du Grand Dole" in created
    assert "organisation 552100554 Transports Comtois SA" in created
    assert not any("242100410" in line or "732829320 Mobilab" in line for line in created if "organisation" in line)
    assert sorted(line for line in created if line.startswith("client")) == sorted(
        f"client {partner_client_id(s)}" for s in (MOBILAB, NEW_PARTNER)
    )
    assert sum(line.startswith(f"group {GRAND_DOLE}") for line in created) == len(ORGANISATION_ROLES)
    assert "membership service-account-partner-55210055400013 ∈ 552100554" in created

    # The secrets are shown once, and they are the clients' real secrets.
    admin = KeycloakSync.connect(
        kc.url, realm="maillage", username="admin", password=kc.admin_credentials.password
    ).admin
    client_uuid = admin.get_client_id(partner_client_id(NEW_PARTNER))
    secret = admin.get_client_secrets(client_uuid)["value"]
    assert f"{partner_client_id(NEW_PARTNER)} {secret}" in first

    second = _sync(kc, registry_url, operator)
    assert _created(second) == [] and "0 created" in second
    assert secret not in second

    # The new partner's service account speaks for its organisation (SIREN, mapped to the SIRET by the gateway).
    token = kc.client_token(partner_client_id(NEW_PARTNER), secret)
    verifier = OidcVerifier(kc.issuer)
    try:
        principal = await verifier.verify(token)
    finally:
        await verifier.close()
    assert principal.organisation == NEW_PARTNER[:9]
    assert principal.auth_method is AuthMethod.OIDC and principal.territory_roles == {}

    # The new territory's groups carry the API roles of the same name (organisation-scoped role mappings).
    org_id = next(o["id"] for o in admin.get_organizations() if o["alias"] == GRAND_DOLE)
    groups = admin.connection.raw_get(f"admin/realms/maillage/organizations/{org_id}/groups").json()
    api = admin.get_client_id("maillage-api")
    for group in groups:
        path = f"admin/realms/maillage/organizations/{org_id}/groups/{group['id']}/role-mappings/clients/{api}"
        assert [role["name"] for role in admin.connection.raw_get(path).json()] == [group["name"]]
    assert sorted(group["name"] for group in groups) == sorted(ORGANISATION_ROLES)

    # A partner admitted later: only its organisation, client and membership are created; with --secrets-file the
    # secret goes to the file (0600), not to the terminal.
    _admit(registry_url, operator, LATE_PARTNER, "Données Vertes SCOP")
    secrets_file = tmp_path / "secrets.txt"
    third = _sync(kc, registry_url, operator, "--secrets-file", str(secrets_file))
    assert sorted(_created(third)) == sorted(
        [
            "organisation 443061841 Données Vertes SCOP",
            f"client {partner_client_id(LATE_PARTNER)}",
            f"membership service-account-{partner_client_id(LATE_PARTNER)} ∈ 443061841",
        ]
    )
    lines = [line for line in secrets_file.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert [line.split()[0] for line in lines] == [partner_client_id(LATE_PARTNER)]
    assert lines[0].split()[1] not in third
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    kc.client_token(partner_client_id(LATE_PARTNER), lines[0].split()[1])


def test_sync_refuses_wrong_admin_credentials_clearly(
    keycloak_server: KeycloakServer, registry: tuple[str, str]
) -> None:
    registry_url, operator = registry
    result = runner.invoke(
        app,
        ["keycloak-sync", "--keycloak-url", keycloak_server.url, "--registry-url", registry_url],
        env={"MAILLAGE_KEYCLOAK_ADMIN_PASSWORD": "not-the-password", "MAILLAGE_OPERATOR_KEY": operator},
    )
    assert result.exit_code == 1
    assert "could not log in to Keycloak" in result.output and "invalid_grant" in result.output
    assert "not-the-password" not in result.output
