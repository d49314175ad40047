from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from maillage.bootstrap import DataDir
from maillage.federation import Federation, build_federation, fixed_ports, load_territories, service_instances
from maillage.keycloak_demo import DemoKeycloak
from maillage.supervisor import (
    SERVICE_COMMAND_OVERRIDE_ENV,
    RestartBackoff,
    service_command,
    service_environment,
    service_specs,
)


@pytest.fixture
def federation(referentiel: Path) -> Federation:
    return build_federation(load_territories(referentiel), fixed_ports())


def test_services_run_as_modules_of_this_interpreter() -> None:
    assert service_command("catalog", {}) == [sys.executable, "-m", "catalog"]


def test_service_command_override_for_tests() -> None:
    env = {SERVICE_COMMAND_OVERRIDE_ENV: json.dumps(["/bin/fake", "--flag"])}
    assert service_command("catalog", env) == ["/bin/fake", "--flag"]
    with pytest.raises(ValueError, match="JSON list"):
        service_command("catalog", {SERVICE_COMMAND_OVERRIDE_ENV: '"a string"'})


def test_environment_of_a_node_service(federation: Federation, tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path)
    instance = next(i for i in service_instances(federation) if i.name == "operateur-exchange")
    env = service_environment(instance, federation=federation, data_dir=data_dir, base_env={"OTEL_X": "kept"})
    assert env["OTEL_X"] == "kept"
    assert env["MAILLAGE_EXCHANGE_HOST"] == "127.0.0.1"
    assert env["MAILLAGE_EXCHANGE_PORT"] == "8302"
    assert env["MAILLAGE_EXCHANGE_DATA_DIR"] == str(tmp_path / "services" / "operateur-exchange")
    assert env["MAILLAGE_EXCHANGE_NATS_URL"] == "nats://127.0.0.1:4222"
    assert env["MAILLAGE_EXCHANGE_NODE_ID"] == "operateur"
    assert env["MAILLAGE_EXCHANGE_TERRITORIES"] == "200069540,200068070"
    assert env["MAILLAGE_EXCHANGE_KEYRING_FILE"] == str(tmp_path / "keyring.json")
    assert env["MAILLAGE_EXCHANGE_ENVIRONMENT"] == "development"
    assert env["MAILLAGE_EXCHANGE_PUBLIC_URL"] == "http://127.0.0.1:8302"
    assert "MAILLAGE_SERVICE" not in env


def test_environment_of_registry_and_gateway(federation: Federation, tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path)
    by_name = {i.name: i for i in service_instances(federation)}
    registry = service_environment(by_name["registry"], federation=federation, data_dir=data_dir, base_env={})
    assert registry["MAILLAGE_REGISTRY_NODE_ID"] == "registry"
    assert registry["MAILLAGE_REGISTRY_FEDERATION_FILE"] == str(tmp_path / "federation.json")
    assert "MAILLAGE_REGISTRY_TERRITORIES" not in registry
    base = {SERVICE_COMMAND_OVERRIDE_ENV: "[]"}
    gateway = service_environment(by_name["gateway"], federation=federation, data_dir=data_dir, base_env=base)
    assert gateway["MAILLAGE_GATEWAY_NODE_ID"] == "gateway"
    assert gateway["MAILLAGE_GATEWAY_REGISTRY_URL"] == "http://127.0.0.1:8001"
    assert gateway["MAILLAGE_GATEWAY_PORT"] == "8000"
    assert gateway["MAILLAGE_SERVICE"] == "gateway"


def test_specs_start_registry_then_nodes_then_gateway(federation: Federation, tmp_path: Path) -> None:
    specs = service_specs(federation, DataDir(tmp_path), base_env={})
    waves = {spec.name: spec.wave for spec in specs}
    assert waves["registry"] < waves["dijon-catalog"] == waves["operateur-consent"] < waves["gateway"]
    dijon = next(spec for spec in specs if spec.name == "dijon-catalog")
    assert dijon.ready_url == "http://127.0.0.1:8101/readyz"
    assert dijon.log_file == tmp_path / "logs" / "dijon-catalog.log"
    assert dijon.args == [sys.executable, "-m", "catalog"]


def test_restart_backoff_doubles_up_to_thirty_seconds() -> None:
    backoff = RestartBackoff()
    delays = [backoff.schedule(100.0) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.due_at == 130.0
    assert not backoff.is_due(129.9) and backoff.is_due(130.0)


def test_keycloak_issuer_reaches_every_service_and_the_gateway_verifies_keys(
    federation: Federation, tmp_path: Path
) -> None:
    issuer = "http://127.0.0.1:8080/realms/maillage"
    specs = service_specs(
        federation, DataDir(tmp_path), base_env={}, service_credential="mlg_svc_x", oidc_issuer=issuer
    )
    for spec in specs:
        service = spec.name.rsplit("-", 1)[-1].upper()
        assert spec.env[f"MAILLAGE_{service}_OIDC_ISSUER"] == issuer, spec.name
    gateway = next(spec for spec in specs if spec.name == "gateway")
    assert gateway.env["MAILLAGE_GATEWAY_REGISTRY_KEY"] == "mlg_svc_x"
    without = service_specs(federation, DataDir(tmp_path), base_env={})
    assert not any(key.endswith("_OIDC_ISSUER") for spec in without for key in spec.env)


@pytest.mark.integration  # obtains the Keycloak distribution (scripts/ensure-keycloak.sh)
def test_demo_keycloak_is_a_supervised_process_of_the_first_wave(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path)
    demo = DemoKeycloak.prepare(data_dir, port=18080)  # obtains Keycloak, starts nothing
    try:
        spec = demo.spec(data_dir)
        assert spec.name == "keycloak" and spec.wave == 0
        assert spec.args[0].endswith("/bin/kc.sh") and "start-dev" in spec.args and "--import-realm" in spec.args
        assert "--http-port=18080" in spec.args and "--hostname=http://127.0.0.1:18080" in spec.args
        assert spec.ready_url == "http://127.0.0.1:18080/realms/maillage/.well-known/openid-configuration"
        assert demo.issuer == "http://127.0.0.1:18080/realms/maillage"
        assert spec.log_file == data_dir.log_file("keycloak")
        assert spec.env["KC_BOOTSTRAP_ADMIN_PASSWORD"] == demo.server.admin_credentials.password
        home = Path(next(a for a in spec.args if a.startswith("-Dkc.home.dir=")).split("=", 1)[1])
        assert (home / "data" / "import" / "maillage-realm.json").is_file()
        assert home.is_relative_to(tmp_path / "keycloak")
    finally:
        demo.cleanup()
    assert not list((tmp_path / "keycloak").glob("maillage-kc-*"))


def test_the_gateway_signs_assertions_that_every_service_accepts(federation: Federation, tmp_path: Path) -> None:
    import os
    import stat

    from kit.auth.assertions import AssertionSigner, AssertionVerifier
    from kit.auth.principal import AuthMethod, Principal
    from maillage.bootstrap import ensure_assertion_key

    data_dir = DataDir(tmp_path)
    key = ensure_assertion_key(data_dir)
    assert ensure_assertion_key(data_dir) == key  # kept: a restarted demo keeps trusting its gateway
    assert stat.S_IMODE(os.stat(tmp_path / "gateway-assertion.key").st_mode) == 0o600
    specs = service_specs(federation, data_dir, base_env={}, assertion_key=key)
    gateway = next(spec for spec in specs if spec.name == "gateway")
    assert gateway.env["MAILLAGE_GATEWAY_ASSERTION_SIGNING_KEY"] == key
    public = {spec.env[k] for spec in specs for k in spec.env if k.endswith("_ASSERTION_PUBLIC_KEYS")}
    assert len(public) == 1 and len([s for s in specs if s.name != "gateway"]) == sum(
        1 for spec in specs for k in spec.env if k.endswith("_ASSERTION_PUBLIC_KEYS")
    )
    principal = Principal(subject="steward-dijon", auth_method=AuthMethod.BOOTSTRAP_KEY)
    assertion = AssertionSigner(key).sign(principal)
    assert AssertionVerifier(list(public)).verify(assertion).subject == "steward-dijon"
