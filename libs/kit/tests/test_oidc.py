"""Keycloak access tokens verified locally (kit.auth.oidc) against the real server of the session: the principals the
realm's users and partner resolve to, and every kind of token that must be refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, hmac
from jwcrypto import jwk, jws

from kit.auth import AuthMethod, Role
from kit.auth.oidc import OidcVerifier, TokenRefused, principal_from_claims
from kit.testing.keycloak import (
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    TEST_CLIENT_ID,
    TEST_PASSWORD,
    KeycloakServer,
    unverified_claims,
)

pytestmark = pytest.mark.integration

DIJON = "242100410"
BESANCON = "242500361"
MOBILAB = "732829320"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _encode(part: dict[str, Any]) -> str:
    return _b64(json.dumps(part, separators=(",", ":")).encode())


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


async def _refusal(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        await verifier.verify(token)
    return refused.value.reason


@pytest.fixture
async def verifier(keycloak_server: KeycloakServer) -> Any:
    oidc = OidcVerifier(keycloak_server.issuer, leeway=30)
    yield oidc
    await oidc.close()


async def test_steward_of_dijon(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    principal = await verifier.verify(keycloak_server.token("steward-dijon", TEST_PASSWORD))
    assert principal.auth_method is AuthMethod.OIDC
    assert principal.territory_roles == {DIJON: frozenset({Role.STEWARD})}
    assert principal.organisation is None and not principal.is_operator
    assert principal.has_role(DIJON, Role.STEWARD) and not principal.has_role(BESANCON, Role.STEWARD)


async def test_analyst_here_steward_there_gets_exactly_that(
    keycloak_server: KeycloakServer, verifier: OidcVerifier
) -> None:
    principal = await verifier.verify(keycloak_server.token("mixed", TEST_PASSWORD))
    assert principal.territory_roles == {DIJON: frozenset({Role.ANALYST}), BESANCON: frozenset({Role.STEWARD})}
    assert not principal.has_role(DIJON, Role.STEWARD)
    assert not principal.has_role(BESANCON, Role.ANALYST)


async def test_dpo_operator_and_partner(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    dpo = await verifier.verify(keycloak_server.token("dpo-besancon", TEST_PASSWORD))
    assert dpo.territory_roles == {BESANCON: frozenset({Role.DPO})}
    operator = await verifier.verify(keycloak_server.token("operator", TEST_PASSWORD))
    assert operator.is_operator and operator.territory_roles == {}
    partner = await verifier.verify(keycloak_server.client_token(PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET))
    assert partner.organisation == MOBILAB and partner.territory_roles == {}
    assert not partner.is_operator


async def test_jwks_is_fetched_once_for_many_tokens(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    tokens = [keycloak_server.token("steward-dijon", TEST_PASSWORD) for _ in range(3)]
    for _ in range(10):
        for token in tokens:
            await verifier.verify(token)
    assert verifier.jwks.fetches == 1


async def test_expired_token_refused_within_leeway_accepted(keycloak_server: KeycloakServer) -> None:
    token = keycloak_server.token("steward-dijon", TEST_PASSWORD)
    exp = unverified_claims(token)["exp"]
    late = OidcVerifier(keycloak_server.issuer, leeway=30, clock=lambda: exp + 31)
    within = OidcVerifier(keycloak_server.issuer, leeway=30, clock=lambda: exp + 29)
    try:
        assert await _refusal(late, token) == "token_expired"
        assert (await within.verify(token)).territory_roles == {DIJON: frozenset({Role.STEWARD})}
    finally:
        await late.close()
        await within.close()


def test_leeway_is_at_most_a_minute() -> None:
    with pytest.raises(ValueError, match="leeway"):
        OidcVerifier("http://127.0.0.1:1/realms/maillage", leeway=61)


async def test_tampered_token_refused(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    token = keycloak_server.token("steward-dijon", TEST_PASSWORD)
    header, payload, signature = token.split(".")
    claims = unverified_claims(token)
    # Make the Dijon steward a Besançon steward too, keeping Keycloak's signature.
    claims["organization"][BESANCON] = {
        "id": "x",
        "groups": [],
        "resource_access": {"maillage-api": {"roles": ["steward"]}},
    }
    assert await _refusal(verifier, f"{header}.{_encode(claims)}.{signature}") == "token_bad_signature"
    # A flipped bit of the signature too.
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert await _refusal(verifier, f"{header}.{payload}.{flipped}") == "token_bad_signature"


async def test_alg_none_and_hmac_confusion_refused(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    token = keycloak_server.token("steward-dijon", TEST_PASSWORD)
    header, payload, _ = token.split(".")
    kid = _header(token)["kid"]
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_encode({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{payload}."
        assert await _refusal(verifier, unsigned) == "token_algorithm_not_allowed"
    # HS256 keyed with the realm's public key (the RSA/HMAC confusion attack).
    jwks = httpx.get(f"{keycloak_server.issuer}/protocol/openid-connect/certs", timeout=10).text
    public_pem = jwk.JWKSet.from_json(jwks).get_key(kid).export_to_pem()
    forged_header = _encode({"alg": "HS256", "typ": "JWT", "kid": kid})
    mac = hmac.HMAC(public_pem, hashes.SHA256())
    mac.update(f"{forged_header}.{payload}".encode())
    hs256 = f"{forged_header}.{payload}.{_b64(mac.finalize())}"
    assert await _refusal(verifier, hs256) == "token_algorithm_not_allowed"
    for alg in ("RS512", "PS256", "EdDSA"):
        other = f"{_encode({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{payload}.{token.split('.')[2]}"
        assert await _refusal(verifier, other) == "token_algorithm_not_allowed"


async def test_wrong_audience_refused(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    # The ID token of the same login is signed by the realm, but meant for the client, not the API.
    response = httpx.post(
        keycloak_server.token_endpoint,
        data={
            "grant_type": "password",
            "client_id": TEST_CLIENT_ID,
            "username": "steward-dijon",
            "password": TEST_PASSWORD,
            "scope": "openid organization:*",
        },
        timeout=10,
    )
    id_token = response.json()["id_token"]
    assert unverified_claims(id_token)["aud"] == TEST_CLIENT_ID
    assert await _refusal(verifier, id_token) == "token_wrong_audience"
    other_api = OidcVerifier(keycloak_server.issuer, audience="another-api")
    try:
        assert await _refusal(other_api, keycloak_server.token("steward-dijon", TEST_PASSWORD)) == (
            "token_wrong_audience"
        )
    finally:
        await other_api.close()


async def test_other_realm_refused(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    master = keycloak_server.admin_token()  # a valid token of the same server, realm master
    assert unverified_claims(master)["iss"].endswith("/realms/master")
    assert await _refusal(verifier, master) == "token_wrong_issuer"
    assert verifier.jwks.fetches == 0  # told apart without asking for keys


async def test_forged_signature_and_unknown_keys(keycloak_server: KeycloakServer, verifier: OidcVerifier) -> None:
    genuine = keycloak_server.token("steward-dijon", TEST_PASSWORD)
    claims = unverified_claims(genuine)
    claims["organization"] = {BESANCON: {"id": "x", "resource_access": {"maillage-api": {"roles": ["dpo"]}}}}
    attacker = jwk.JWK.generate(kty="RSA", size=2048)

    def forge(kid: str) -> str:
        signed = jws.JWS(json.dumps(claims).encode())
        signed.add_signature(attacker, alg="RS256", protected=json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}))
        return str(signed.serialize(compact=True))

    # The realm's kid with the attacker's key: the signature does not verify.
    assert await _refusal(verifier, forge(_header(genuine)["kid"])) == "token_bad_signature"
    # Made-up kids: refused, and the verifier does not ask Keycloak again for each of them.
    for index in range(20):
        assert await _refusal(verifier, forge(f"made-up-{index}")) == "token_unknown_key"
    assert verifier.jwks.fetches == 1
    assert (await verifier.verify(genuine)).has_role(DIJON, Role.STEWARD)


async def test_new_signing_key_is_fetched_on_unknown_kid(keycloak_server: KeycloakServer) -> None:
    verifier = OidcVerifier(keycloak_server.issuer, min_refresh_interval=0)
    try:
        before = keycloak_server.token("dpo-besancon", TEST_PASSWORD)
        await verifier.verify(before)
        assert verifier.jwks.fetches == 1
        admin = httpx.Client(
            base_url=f"{keycloak_server.url}/admin/realms/maillage",
            headers={"Authorization": f"Bearer {keycloak_server.admin_token()}"},
            timeout=10,
        )
        with admin:
            created = admin.post(
                "/components",
                json={
                    "name": "rotated-rsa",
                    "providerId": "rsa-generated",
                    "providerType": "org.keycloak.keys.KeyProvider",
                    "config": {"priority": ["500"], "keySize": ["2048"], "algorithm": ["RS256"]},
                },
            )
            assert created.status_code == 201, created.text
        deadline = time.monotonic() + 10
        after = keycloak_server.token("dpo-besancon", TEST_PASSWORD)
        while _header(after)["kid"] == _header(before)["kid"] and time.monotonic() < deadline:
            after = keycloak_server.token("dpo-besancon", TEST_PASSWORD)
        assert _header(after)["kid"] != _header(before)["kid"]
        assert (await verifier.verify(after)).territory_roles == {BESANCON: frozenset({Role.DPO})}
        assert verifier.jwks.fetches == 2
        assert (await verifier.verify(before)).territory_roles == {BESANCON: frozenset({Role.DPO})}
    finally:
        await verifier.close()


def test_merged_resource_access_gives_no_role() -> None:
    """Roles are read per organisation only: a top-level resource_access (Keycloak's merge) is ignored."""
    claims = {
        "sub": "u1",
        "resource_access": {"maillage-api": {"roles": ["dpo", "steward"]}},
        "organization": {
            DIJON: {"id": "a", "resource_access": {"maillage-api": {"roles": ["analyst", "not-a-role"]}}},
            "not-a-siren": {"id": "b", "resource_access": {"maillage-api": {"roles": ["admin"]}}},
            BESANCON: {"id": "c", "resource_access": {"another-client": {"roles": ["dpo"]}}},
        },
        "realm_access": {"roles": ["operator", "default-roles-maillage", "offline_access"]},
    }
    principal = principal_from_claims(claims)
    assert principal.territory_roles == {DIJON: frozenset({Role.ANALYST})}
    assert principal.realm_roles == frozenset({"operator"})
    assert principal.organisation is None  # a person, not a service account
