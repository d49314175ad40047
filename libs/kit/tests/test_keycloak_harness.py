"""The throwaway Keycloak of the test suite: real server, realm `maillage`, per-organisation roles in the token.

The claim these tests pin down (docs/KEYCLOAK.md): with scope ``organization:*``, the access token carries

    "organization": {"<siren>": {"id": "<uuid>", "groups": ["/<role>"],
                                 "resource_access": {"maillage-api": {"roles": ["<role>"]}}}}

one entry per organisation the user belongs to, and NO top-level ``resource_access`` for ``maillage-api``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.testing.keycloak import (
    API_CLIENT_ID,
    API_CLIENT_SECRET,
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    TEST_PASSWORD,
    KeycloakServer,
    KeycloakServerError,
    unverified_claims,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
DIJON = "242100410"
BESANCON = "242500361"
NORGE_ET_TILLE = "200069540"
LOUE_LISON = "200068070"
MOBILAB = "732829320"


def _org_roles(claims: dict[str, Any]) -> dict[str, list[str]]:
    """Roles of maillage-api per organisation alias, as the API must read them."""
    return {
        alias: sorted(entry.get("resource_access", {}).get(API_CLIENT_ID, {}).get("roles", []))
        for alias, entry in claims.get("organization", {}).items()
    }


def _pid_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def keycloak() -> Iterator[KeycloakServer]:
    with KeycloakServer() as server:
        yield server


def test_discovery_document(keycloak: KeycloakServer) -> None:
    response = httpx.get(f"{keycloak.issuer}/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == keycloak.issuer == f"http://127.0.0.1:{keycloak.port}/realms/maillage"
    assert doc["token_endpoint"] == keycloak.token_endpoint
    assert "S256" in doc["code_challenge_methods_supported"]
    # The issuer does not depend on the host name the client used.
    via_localhost = httpx.get(f"http://localhost:{keycloak.port}/realms/maillage/.well-known/openid-configuration")
    assert via_localhost.json()["issuer"] == keycloak.issuer
    assert keycloak.version.startswith("26.")


def test_steward_of_dijon_only(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("steward-dijon", TEST_PASSWORD))
    assert claims["iss"] == keycloak.issuer
    aud = claims["aud"]
    assert API_CLIENT_ID in (aud if isinstance(aud, list) else [aud])
    assert claims["azp"] == "maillage-test"
    assert claims["preferred_username"] == "steward-dijon"
    assert _org_roles(claims) == {DIJON: ["steward"]}
    assert claims["organization"][DIJON]["groups"] == ["/steward"]
    # The organisation's Keycloak id (addOrganizationId), fixed in the realm file.
    assert claims["organization"][DIJON]["id"] == "40b202b7-55f7-5359-8209-f13c19df2cf0"
    # Roles are only ever given per organisation: nothing merged at the top level.
    assert "resource_access" not in claims


def test_mixed_user_roles_stay_per_organisation(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("mixed", TEST_PASSWORD))
    assert _org_roles(claims) == {DIJON: ["analyst"], BESANCON: ["steward"]}
    # Steward in Besançon must not make `mixed` a steward in Dijon, through any claim.
    assert "steward" not in claims["organization"][DIJON]["resource_access"][API_CLIENT_ID]["roles"]
    assert "resource_access" not in claims
    assert "operator" not in claims.get("realm_access", {}).get("roles", [])


def test_dpo_of_besancon_only(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("dpo-besancon", TEST_PASSWORD))
    assert _org_roles(claims) == {BESANCON: ["dpo"]}


def test_one_organisation_can_be_asked_for(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("mixed", TEST_PASSWORD, scope=f"openid organization:{BESANCON}"))
    assert _org_roles(claims) == {BESANCON: ["steward"]}


def test_no_organisation_claim_without_the_scope(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("steward-dijon", TEST_PASSWORD, scope="openid"))
    assert "organization" not in claims
    assert "resource_access" not in claims


def test_plain_organization_scope_is_empty_for_several_memberships(keycloak: KeycloakServer) -> None:
    # Documented pitfall (Keycloak #33556): without ":*", a member of two organisations gets no organisation at all
    # from a password grant. The harness and the API clients must ask for organization:*.
    claims = unverified_claims(keycloak.token("mixed", TEST_PASSWORD, scope="openid organization"))
    assert claims.get("organization", {}) == {}


def test_operator_has_the_realm_role(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.token("operator", TEST_PASSWORD))
    assert claims["realm_access"]["roles"] == ["operator"]
    assert "organization" not in claims
    assert API_CLIENT_ID in (claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])


def test_partner_service_account_identifies_mobilab(keycloak: KeycloakServer) -> None:
    claims = unverified_claims(keycloak.client_token(PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET))
    assert claims["iss"] == keycloak.issuer
    assert claims["azp"] == claims["client_id"] == PARTNER_CLIENT_ID
    assert claims["preferred_username"] == "service-account-mobilab-partner"
    assert API_CLIENT_ID in (claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])
    assert list(claims["organization"]) == [MOBILAB]
    assert _org_roles(claims) == {MOBILAB: []}
    assert "resource_access" not in claims


def test_wrong_secret_and_password_are_refused(keycloak: KeycloakServer) -> None:
    with pytest.raises(KeycloakServerError, match="unauthorized_client|invalid_client"):
        keycloak.client_token(PARTNER_CLIENT_ID, "not-the-secret")
    with pytest.raises(KeycloakServerError, match="invalid_grant"):
        keycloak.token("steward-dijon", "not-the-password")


def test_api_introspects_with_its_secret(keycloak: KeycloakServer) -> None:
    token = keycloak.token("mixed", TEST_PASSWORD)
    response = httpx.post(
        f"{keycloak.issuer}/protocol/openid-connect/token/introspect",
        data={"token": token},
        auth=(API_CLIENT_ID, API_CLIENT_SECRET),
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["active"] is True
    assert _org_roles(body) == {DIJON: ["analyst"], BESANCON: ["steward"]}


def test_refreshed_token_keeps_the_organisation_roles(keycloak: KeycloakServer) -> None:
    form = {"client_id": "maillage-test", "scope": "openid organization:*"}
    first = httpx.post(
        keycloak.token_endpoint,
        data={**form, "grant_type": "password", "username": "mixed", "password": TEST_PASSWORD},
        timeout=10,
    ).json()
    refreshed = httpx.post(
        keycloak.token_endpoint,
        data={"client_id": "maillage-test", "grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        timeout=10,
    ).json()
    assert _org_roles(unverified_claims(refreshed["access_token"])) == {DIJON: ["analyst"], BESANCON: ["steward"]}


def test_realm_contents(keycloak: KeycloakServer) -> None:
    admin = httpx.Client(
        base_url=f"{keycloak.url}/admin/realms/maillage",
        headers={"Authorization": f"Bearer {keycloak.admin_token()}"},
        timeout=10,
    )
    with admin:
        orgs = {o["alias"]: o for o in admin.get("/organizations", params={"briefRepresentation": "false"}).json()}
        assert {alias: o["name"] for alias, o in orgs.items()} == {
            DIJON: "Dijon Métropole",
            BESANCON: "CU Grand Besançon Métropole",
            NORGE_ET_TILLE: "CC Norge et Tille",
            LOUE_LISON: "CC Loue-Lison",
            MOBILAB: "Mobilab SAS",
        }
        groups = admin.get(f"/organizations/{orgs[NORGE_ET_TILLE]['id']}/groups").json()
        assert sorted(g["name"] for g in groups) == ["admin", "analyst", "dpo", "steward"]
        console = admin.get("/clients", params={"clientId": "maillage-console"}).json()[0]
        assert console["publicClient"] is True
        assert console["attributes"]["pkce.code.challenge.method"] == "S256"
        assert console["redirectUris"] == ["http://localhost:5173/*"]
        api = admin.get("/clients", params={"clientId": API_CLIENT_ID}).json()[0]
        roles = admin.get(f"/clients/{api['id']}/roles").json()
        assert sorted(r["name"] for r in roles) == ["admin", "analyst", "dpo", "steward"]


def test_signature_issuer_and_audience_verify_with_python_keycloak(keycloak: KeycloakServer) -> None:
    keycloak_lib = pytest.importorskip("keycloak")
    oidc = keycloak_lib.KeycloakOpenID(
        server_url=keycloak.url, realm_name="maillage", client_id=API_CLIENT_ID, client_secret_key=API_CLIENT_SECRET
    )
    token = keycloak.token("steward-dijon", TEST_PASSWORD)
    # decode_token checks only exp/nbf unless iss and aud are passed explicitly (FIELD-NOTES).
    claims = oidc.decode_token(token, validate=True, check_claims={"iss": keycloak.issuer, "aud": API_CLIENT_ID})
    assert _org_roles(claims) == {DIJON: ["steward"]}


def test_lifecycle_fresh_state_and_clean_stop(tmp_path: Path) -> None:
    server = KeycloakServer(base_dir=tmp_path).start()
    pid, base = server.pid, server.base_dir
    assert pid is not None and server.is_running()
    assert server.startup_seconds is not None and server.startup_seconds < 180
    home = server.home_dir
    try:
        # The run's own data dir, with the realm file copied in, and the H2 database there (not in the cache).
        assert (home / "data" / "import" / "maillage-realm.json").is_file()
        assert (home / "data" / "h2").is_dir()
        assert (home / "lib").resolve() == (server.distribution_dir / "lib").resolve()
        assert not (server.distribution_dir / "data").exists()
        token = server.token("steward-dijon", TEST_PASSWORD)
        assert unverified_claims(token)["iss"] == server.issuer
    finally:
        server.stop()
    assert not server.is_running()
    assert _pid_gone(pid)
    # No JVM of the run is left: the process group is empty.
    assert subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, check=False).returncode == 1  # noqa: S607
    assert not base.exists()
    server.stop()  # idempotent


def test_ensure_keycloak_script_is_idempotent() -> None:
    script = REPO / "scripts" / "ensure-keycloak.sh"
    runs = [
        subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800, check=False)  # noqa: S603
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    # Once installed, both runs print the same single line (the path of kc.sh) and nothing else.
    assert runs[0].stdout == runs[1].stdout
    assert runs[1].stdout.count("\n") == 1
    assert runs[1].stdout.strip().endswith("/bin/kc.sh")
    assert Path(runs[1].stdout.strip()).is_file()
    assert runs[1].stderr == ""


def test_ensure_keycloak_reports_a_failed_download(tmp_path: Path) -> None:
    # A version that does not exist on Maven Central: the script must fail and pass Maven's own error on.
    run = subprocess.run(  # noqa: S603
        ["bash", str(REPO / "scripts" / "ensure-keycloak.sh")],
        env={**os.environ, "KEYCLOAK_VERSION": "0.0.1", "MAILLAGE_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode != 0
    assert run.stdout == ""
    assert "mvn dependency:get -Dartifact=org.keycloak:keycloak-quarkus-dist:0.0.1:zip failed" in run.stderr
    assert "[ERROR]" in run.stderr and "keycloak-quarkus-dist" in run.stderr
    assert not (tmp_path / "cache" / "keycloak-0.0.1").exists()
