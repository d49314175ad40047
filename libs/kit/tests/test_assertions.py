"""Principal assertions (kit.auth.assertions) and how a service built with kit.service takes them: the gateway's
signed, short-lived assertions pass; unsigned, expired, forged and tampered ones are refused with a reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from kit.auth import AuthMethod, Principal, Role
from kit.auth.assertions import AssertionSigner, AssertionVerifier, generate_signing_key, is_assertion, public_key_of
from kit.auth.oidc import TokenRefused
from kit.nats_server import NatsServer
from kit.service import CallerPrincipal, ServiceContext, create_service_app
from kit.settings import ServiceSettings
from kit.testing.factories import bootstrap_key, operator_principal, service_settings

DIJON = "242100410"
STEWARD = Principal(
    subject="kc-user-1", territory_roles={DIJON: frozenset({Role.STEWARD})}, auth_method=AuthMethod.OIDC
)
PARTNER = Principal(
    subject="apikey:1", organisation="73282932000074", scopes=frozenset({"query"}), auth_method=AuthMethod.API_KEY
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reason(verifier: AssertionVerifier, assertion: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(assertion)
    return refused.value.reason


def test_round_trip_and_rotation() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    verifier = AssertionVerifier([public_key_of(old), public_key_of(new)])
    for key in (old, new):
        assertion = AssertionSigner(key).sign(STEWARD, request_id="abcdef123456")
        assert is_assertion(assertion)
        assert verifier.verify(assertion) == STEWARD


def test_expired_future_and_long_lived_refused() -> None:
    key = generate_signing_key()
    verifier = AssertionVerifier([public_key_of(key)], clock=lambda: 1_000_000.0)
    expired = AssertionSigner(key, lifetime=30, clock=lambda: 1_000_000.0 - 60).sign(STEWARD)
    assert _reason(verifier, expired) == "assertion_expired"
    future = AssertionSigner(key, lifetime=30, clock=lambda: 1_000_000.0 + 60).sign(STEWARD)
    assert _reason(verifier, future) == "assertion_not_yet_valid"
    with pytest.raises(ValueError):
        AssertionSigner(key, lifetime=3600)


def test_forged_unsigned_and_tampered_refused() -> None:
    key = generate_signing_key()
    verifier = AssertionVerifier([public_key_of(key)])
    # Signed by a key the service was not given.
    assert _reason(verifier, AssertionSigner(generate_signing_key()).sign(STEWARD)) == "assertion_unknown_key"
    genuine = AssertionSigner(key).sign(STEWARD)
    header, payload, signature = genuine.split(".")
    # Unsigned: alg none, empty signature.
    none_header = json.loads(base64.urlsafe_b64decode(header + "=="))
    none_header["alg"] = "none"
    assert _reason(verifier, f"{_b64(json.dumps(none_header).encode())}.{payload}.") == "assertion_unsigned"
    # Tampered: the steward of Dijon made operator, the gateway's signature kept.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["principal"]["realm_roles"] = ["operator"]
    assert _reason(verifier, f"{header}.{_b64(json.dumps(claims).encode())}.{signature}") == "assertion_bad_signature"
    # The same kid but another key's signature.
    other = AssertionSigner(generate_signing_key()).sign(STEWARD).split(".")[2]
    assert _reason(verifier, f"{header}.{payload}.{other}") == "assertion_bad_signature"


@pytest.fixture
def signing_key() -> str:
    return generate_signing_key()


def _service(
    nats_server: NatsServer, tmp_path: Path, signing_key: str, **overrides: object
) -> tuple[TestClient, dict[str, str]]:
    keyring = tmp_path / "keyring.json"
    keys = {"operator": bootstrap_key(keyring, operator_principal())}
    router = APIRouter()

    @router.get("/caller", response_model=Principal)
    async def caller(principal: CallerPrincipal) -> Principal:
        return principal

    class _Directory:
        """A federated key verifier standing for the registry: it knows one partner key."""

        async def verify(self, secret: str) -> Principal | None:
            return PARTNER if secret == keys["partner"] else None

    keys["partner"] = bootstrap_key(tmp_path / "elsewhere.json", PARTNER, kind="prt")

    async def on_startup(ctx: ServiceContext) -> None:
        ctx.key_verifier = _Directory()

    settings = service_settings(
        ServiceSettings,
        data_dir=tmp_path,
        nats_url=nats_server.url,
        keyring_file=keyring,
        assertion_public_keys=[public_key_of(signing_key)],
        **overrides,
    )
    app = create_service_app(
        service="probe",
        settings=settings,
        title="probe",
        description="probe",
        routers=[router],
        with_database=False,
        on_startup=on_startup,
    )
    return TestClient(app), keys


@pytest.mark.integration
def test_service_takes_assertions_and_refuses_bad_ones(
    nats_server: NatsServer, tmp_path: Path, signing_key: str
) -> None:
    client, keys = _service(nats_server, tmp_path, signing_key)
    with client:
        signer = AssertionSigner(signing_key)
        for path in ("/caller", "/v1/whoami"):
            ok = client.get(path, headers={"Authorization": f"Bearer {signer.sign(STEWARD)}"})
            assert ok.status_code == 200, ok.text
            assert ok.json()["territory_roles"] == {DIJON: ["steward"]}
        # A partner's assertion passes where federated keys do (CallerPrincipal), not on keyring-only routes.
        partner = {"Authorization": f"Bearer {signer.sign(PARTNER)}"}
        assert client.get("/caller", headers=partner).json()["organisation"] == PARTNER.organisation
        assert client.get("/v1/whoami", headers=partner).json()["error"] == "auth.invalid_credentials"

        expired = AssertionSigner(signing_key, clock=lambda: 1_000.0).sign(STEWARD)
        forged = AssertionSigner(generate_signing_key()).sign(STEWARD)
        header, payload, _ = signer.sign(STEWARD).split(".")
        unsigned = f"{_b64(json.dumps({'alg': 'none', 'typ': 'maillage-assertion+jwt'}).encode())}.{payload}."
        for token, code in (
            (expired, "auth.assertion_expired"),
            (forged, "auth.assertion_unknown_key"),
            (unsigned, "auth.assertion_unsigned"),
        ):
            refused = client.get("/caller", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401 and refused.json()["error"] == code, refused.text
        # No Keycloak issuer configured: a token that is not an assertion is refused with its own reason.
        other = f"{_b64(json.dumps({'alg': 'RS256', 'kid': 'k'}).encode())}.{payload}.c2ln"
        refused = client.get("/caller", headers={"Authorization": f"Bearer {other}"})
        assert refused.json()["error"] == "auth.token_not_accepted"
        # accept mode (the default outside production): the operator's keyring key and the partner's key directly.
        assert client.get("/caller", headers={"Authorization": f"Bearer {keys['operator']}"}).status_code == 200
        assert client.get("/caller", headers={"Authorization": f"Bearer {keys['partner']}"}).status_code == 200


@pytest.mark.integration
def test_require_mode_refuses_federated_keys_sent_directly(
    nats_server: NatsServer, tmp_path: Path, signing_key: str
) -> None:
    client, keys = _service(nats_server, tmp_path, signing_key, assertion_mode="require")
    with client:
        direct = client.get("/caller", headers={"Authorization": f"Bearer {keys['partner']}"})
        assert direct.status_code == 401 and direct.json()["error"] == "auth.gateway_required"
        via_gateway = client.get(
            "/caller", headers={"Authorization": f"Bearer {AssertionSigner(signing_key).sign(PARTNER)}"}
        )
        assert via_gateway.status_code == 200
        # The node's own keyring (service credentials) still works.
        assert client.get("/caller", headers={"Authorization": f"Bearer {keys['operator']}"}).status_code == 200


def test_default_mode_is_require_in_production_only(tmp_path: Path) -> None:
    def settings(environment: str) -> ServiceSettings:
        return ServiceSettings(
            environment=environment,  # type: ignore[arg-type]
            secret_key="s" * 40,  # type: ignore[arg-type]
            pseudonym_secret="p" * 40,  # type: ignore[arg-type]
            data_dir=tmp_path,
        )

    assert settings("production").gateway_required
    assert not settings("test").gateway_required
    assert not settings("development").gateway_required
    assert not ServiceSettings(
        environment="production", assertion_mode="accept", secret_key="s" * 40, pseudonym_secret="p" * 40
    ).gateway_required  # type: ignore[arg-type]


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [public_key_of(generate_signing_key()) for _ in range(2)]
    monkeypatch.setenv("MAILLAGE_SERVICE_ASSERTION_PUBLIC_KEYS", ",".join(keys))
    assert ServiceSettings().assertion_public_keys == keys
