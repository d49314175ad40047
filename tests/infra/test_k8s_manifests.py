"""Static checks of the Kubernetes manifests in infra/k8s: no kustomize binary, no cluster, no network.

They catch configuration drift between the manifests and the code: every ``MAILLAGE_<SERVICE>_<NAME>`` variable
must be a field of that service's settings class, and every overlay must provide each ConfigMap and Secret key its
Deployments read, with values the settings class accepts. They also hold the deployment rules: resource limits,
probes, non-root, read-only root filesystem, pinned images, default-deny NetworkPolicies, fsync'd JetStream.

Overlays are resolved by a small subset of kustomize (resources, components, generators); patches are not
applied, but every YAML file, patches included, goes through the per-container checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from catalog.config import CatalogSettings
from consent.config import ConsentSettings
from exchange.config import ExchangeSettings
from gateway.config import GatewaySettings
from kit.settings import ServiceSettings
from registry.config import RegistrySettings
from registry.schemas import FederationFile

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
OVERLAYS = ("federation", "territory-node", "operator-node")
NODE_OVERLAYS = ("territory-node", "operator-node")
SETTINGS: dict[str, type[ServiceSettings]] = {
    "registry": RegistrySettings,
    "gateway": GatewaySettings,
    "catalog": CatalogSettings,
    "exchange": ExchangeSettings,
    "consent": ConsentSettings,
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
MAILLAGE_VAR = re.compile(r"^MAILLAGE_([A-Z]+)_([A-Z0-9_]+)$")
PLACEHOLDER = "changethis"
STRONG_SECRET = "k8s-manifest-test-" + "x" * 32


def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S))


def _env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines, as kustomize reads them (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{_rel(path)}: {line!r} is not KEY=value"
            values[key] = value
    return values


def _generator_source(kdir: Path, entry: str) -> tuple[str, Path]:
    """``(key, path)`` of a generator ``files:`` entry (``key=path`` or ``path``)."""
    key, sep, path = entry.partition("=")
    return (key, kdir / path) if sep else (Path(entry).name, kdir / entry)


def _existing(path: Path) -> Path | None:
    """The file itself, or for a secret kept out of git, its committed ``.example``."""
    if path.is_file():
        return path
    example = path.with_name(path.name + ".example")
    if path.parent.name == "secrets" and example.is_file():
        return example
    return None


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every mapping holding ``containers`` in ``doc`` (workloads, and partial ones in patches)."""
    if isinstance(doc, dict):
        if isinstance(doc.get("containers"), list):
            yield doc
        for value in doc.values():
            yield from _pod_specs(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _pod_specs(item)


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def _maillage_service(container: dict[str, Any]) -> str | None:
    """``catalog`` for a container running ``python -m catalog``; None for the other images."""
    command = container.get("command") or []
    if len(command) == 3 and command[:2] == ["python", "-m"]:
        return command[2]
    return None


# --- a small subset of kustomize -------------------------------------------------------------------------------


@dataclass
class Build:
    """What an overlay deploys: its objects and the keys of the ConfigMaps and Secrets it generates."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj.get("kind") in WORKLOAD_KINDS]


def _generated(kdir: Path, generator: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for entry in generator.get("envs", []):
        source = _existing(kdir / entry)
        assert source is not None, f"{_rel(kdir)}: generator env file {entry} is missing"
        data.update(_env_file(source))
    for entry in generator.get("files", []):
        key, path = _generator_source(kdir, entry)
        source = _existing(path)
        assert source is not None, f"{_rel(kdir)}: generator file {entry} is missing"
        data[key] = source.read_text(encoding="utf-8")
    return data


def build(kdir: Path) -> Build:
    kustomization = yaml.safe_load((kdir / "kustomization.yaml").read_text(encoding="utf-8"))
    result = Build()
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = kdir / entry
        if path.is_dir():
            child = build(path)
            result.objects += child.objects
            result.config_maps.update(child.config_maps)
            result.secrets.update(child.secrets)
        else:
            result.objects += _documents(path)
    for generator in kustomization.get("configMapGenerator", []):
        result.config_maps[generator["name"]] = _generated(kdir, generator)
    for generator in kustomization.get("secretGenerator", []):
        result.secrets[generator["name"]] = _generated(kdir, generator)
    return result


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Build]:
    return request.param, build(K8S / "overlays" / request.param)


# --- files and kustomizations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_yaml_parses(path: Path) -> None:
    assert _documents(path), f"{_rel(path)} holds no document"


@pytest.mark.parametrize("kdir", _kustomization_dirs(), ids=_rel)
def test_kustomization_references_exist(kdir: Path) -> None:
    kustomization = yaml.safe_load((kdir / "kustomization.yaml").read_text(encoding="utf-8"))
    missing = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = kdir / entry
        if not (path.is_file() or (path / "kustomization.yaml").is_file()):
            missing.append(entry)
    for patch in kustomization.get("patches", []):
        if "path" in patch and not (kdir / patch["path"]).is_file():
            missing.append(patch["path"])
    for entry in kustomization.get("patchesStrategicMerge", []):
        if not (kdir / entry).is_file():
            missing.append(entry)
    for generator in [*kustomization.get("configMapGenerator", []), *kustomization.get("secretGenerator", [])]:
        for entry in generator.get("envs", []):
            if _existing(kdir / entry) is None:
                missing.append(entry)
        for entry in generator.get("files", []):
            if _existing(_generator_source(kdir, entry)[1]) is None:
                missing.append(entry)
    assert not missing, f"{_rel(kdir)}/kustomization.yaml references missing files: {missing}"


def test_every_overlay_exists() -> None:
    for name in OVERLAYS:
        assert (K8S / "overlays" / name / "kustomization.yaml").is_file()


# --- configuration drift ---------------------------------------------------------------------------------------


def _env_var_cases() -> list[Any]:
    return [
        pytest.param(_rel(path), container, id=f"{_rel(path)}:{container.get('name', '?')}")
        for path in _yaml_files()
        for doc in _documents(path)
        for pod_spec in _pod_specs(doc)
        for container in _containers(pod_spec)
    ]


@pytest.mark.parametrize(("path", "container"), _env_var_cases())
def test_maillage_variables_are_settings_fields(path: str, container: dict[str, Any]) -> None:
    name = container.get("name", "?")
    service = _maillage_service(container)
    for env in container.get("env", []):
        match = MAILLAGE_VAR.match(env["name"])
        if not env["name"].startswith("MAILLAGE_"):
            continue
        if env["name"] == "MAILLAGE_PSEUDONYM_SECRET":  # shared by the node's services, not prefixed
            assert service in ("exchange", "consent") and SETTINGS[service].uses_pseudonyms, f"{path} {name}"
            continue
        assert match, f"{path} {name}: {env['name']} is not MAILLAGE_<SERVICE>_<NAME>"
        prefix, setting = match.group(1).lower(), match.group(2).lower()
        assert prefix in SETTINGS, f"{path} {name}: {env['name']}: no service {prefix!r}"
        assert setting in SETTINGS[prefix].model_fields, (
            f"{path} {name}: {env['name']} is not a field of {SETTINGS[prefix].__name__}"
        )
        if service is not None:
            assert prefix == service, f"{path} {name}: runs {service} but sets {env['name']}"
    for source in container.get("envFrom", []):
        assert not str(source.get("prefix", "")).startswith("MAILLAGE_"), (
            f"{path} {name}: set MAILLAGE_* variables one by one (env:), so this test can check them"
        )


def _resolve_env(overlay_name: str, build_: Build, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the overlay provides it (Secret values from the committed examples)."""
    values: dict[str, str] = {}
    for env in container.get("env", []):
        if "value" in env:
            values[env["name"]] = str(env["value"])
            continue
        source = env.get("valueFrom", {})
        for kind, store in (("configMapKeyRef", build_.config_maps), ("secretKeyRef", build_.secrets)):
            if kind in source:
                ref = source[kind]
                data = store.get(ref["name"])
                where = f"{overlay_name}: {container['name']} reads {ref['key']} of {kind[:-6]} {ref['name']}"
                if data is None or ref["key"] not in data:
                    assert ref.get("optional"), f"{where}, which the overlay does not provide"
                else:
                    values[env["name"]] = data[ref["key"]]
    return values


def _settings_kwargs(service: str, env: dict[str, str]) -> dict[str, Any]:
    prefix = f"MAILLAGE_{service.upper()}_"
    kwargs = {name[len(prefix) :].lower(): value for name, value in env.items() if name.startswith(prefix)}
    if "MAILLAGE_PSEUDONYM_SECRET" in env:  # one variable shared by the node's services
        kwargs["pseudonym_secret"] = env["MAILLAGE_PSEUDONYM_SECRET"]
    return kwargs


def test_overlay_configuration_is_accepted_by_the_settings(overlay: tuple[str, Build]) -> None:
    name, build_ = overlay
    services = []
    for workload in build_.workloads():
        for container in _containers(workload["spec"]["template"]["spec"]):
            service = _maillage_service(container)
            if service is None:
                continue
            services.append(service)
            kwargs = _settings_kwargs(service, _resolve_env(name, build_, container))
            assert kwargs.get("environment") == "production"
            assert kwargs.get("host") == "0.0.0.0"
            # The committed examples are placeholders, and the service refuses to start with them.
            assert kwargs.get("secret_key") == PLACEHOLDER, (
                f"{name} {service}: the example secret_key is not a placeholder"
            )
            with pytest.raises(ValidationError, match="secret_key"):
                SETTINGS[service](_env_file=None, **kwargs)
            strong: dict[str, Any] = {"secret_key": SecretStr(STRONG_SECRET)}
            if SETTINGS[service].uses_pseudonyms:
                assert kwargs.get("pseudonym_secret") == PLACEHOLDER, (
                    f"{name} {service}: no placeholder pseudonym secret"
                )
                with pytest.raises(ValidationError, match="PSEUDONYM_SECRET"):
                    SETTINGS[service](_env_file=None, **{**kwargs, **strong})
                strong["pseudonym_secret"] = SecretStr(STRONG_SECRET)
            settings = SETTINGS[service](_env_file=None, **{**kwargs, **strong})
            ports = [port["containerPort"] for port in container.get("ports", [])]
            assert ports == [settings.port], f"{name} {service}: containerPort {ports} but port {settings.port}"
            if service != "gateway":
                assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://"), (
                    f"{name} {service}: production needs PostgreSQL, not the SQLite default"
                )
            assert settings.nats_url.startswith(("nats://", "tls://"))
    expected = {"federation": ["gateway", "registry"]}.get(name, ["catalog", "consent", "exchange"])
    assert sorted(services) == expected


def test_files_named_by_settings_are_mounted(overlay: tuple[str, Build]) -> None:
    name, build_ = overlay
    for workload in build_.workloads():
        pod_spec = workload["spec"]["template"]["spec"]
        for container in _containers(pod_spec):
            service = _maillage_service(container)
            if service is None:
                continue
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            kwargs = _settings_kwargs(service, _resolve_env(name, build_, container))
            for setting in ("keyring_file", "federation_file"):
                if setting in kwargs:
                    parent = str(Path(kwargs[setting]).parent)
                    assert parent in mounts, f"{name} {service}: {setting} {kwargs[setting]} is on no volume"
            data_dir = mounts.get(kwargs.get("data_dir", ""))
            assert data_dir is not None and not data_dir.get("readOnly"), f"{name} {service}: data_dir not writable"
            assert "/tmp" in mounts, f"{name} {service}: /tmp must be a volume (read-only root filesystem)"


def test_exchange_keeps_its_data_on_a_persistent_volume(overlay: tuple[str, Build]) -> None:
    name, build_ = overlay
    for workload in build_.workloads():
        if workload["metadata"]["name"] != "exchange":
            continue
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        claims = {obj["metadata"]["name"] for obj in build_.objects if obj.get("kind") == "PersistentVolumeClaim"}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] in claims
        assert workload["spec"]["replicas"] == 1
        assert workload["spec"]["strategy"]["type"] == "Recreate"


def test_federation_file_matches_the_node_overlays() -> None:
    federation = build(K8S / "overlays" / "federation")
    seed = FederationFile.model_validate_json(federation.config_maps["maillage-federation"]["federation.json"])
    nodes = {node.id: sorted(node.territories) for node in seed.nodes}
    known = {territory.siren for territory in seed.territories}
    for name in NODE_OVERLAYS:
        config = build(K8S / "overlays" / name).config_maps["maillage-config"]
        territories = sorted(config["TERRITORIES"].split(","))
        assert nodes.get(config["NODE_ID"]) == territories, f"{name}: not the node described in federation.json"
        assert set(territories) <= known


def test_operator_node_hosts_several_territories() -> None:
    config = build(K8S / "overlays" / "operator-node").config_maps["maillage-config"]
    assert config["NODE_ID"] == "operateur"
    assert config["TERRITORIES"].split(",") == ["200069540", "200068070"]
    config = build(K8S / "overlays" / "territory-node").config_maps["maillage-config"]
    assert (config["NODE_ID"], config["TERRITORIES"]) == ("dijon", "242100410")


# --- workload rules --------------------------------------------------------------------------------------------


def _workload_cases() -> list[Any]:
    return [
        pytest.param(f"{_rel(path)}:{doc['metadata']['name']}", doc, id=f"{_rel(path)}:{doc['metadata']['name']}")
        for path in _yaml_files()
        for doc in _documents(path)
        if doc.get("kind") in WORKLOAD_KINDS
    ]


@pytest.mark.parametrize(("where", "workload"), _workload_cases())
def test_workload_rules(where: str, workload: dict[str, Any]) -> None:
    pod_spec = workload["spec"]["template"]["spec"]
    assert pod_spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken"
    pod_security = pod_spec.get("securityContext", {})
    for container in _containers(pod_spec):
        what = f"{where} {container['name']}"
        security = {**pod_security, **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, f"{what}: runAsNonRoot"
        assert security.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation"
        assert container.get("securityContext", {}).get("capabilities", {}).get("drop") == ["ALL"], what
        limits = container.get("resources", {}).get("limits", {})
        requests = container.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= limits.keys(), f"{what}: resources.limits"
        assert {"cpu", "memory"} <= requests.keys(), f"{what}: resources.requests"
        assert "livenessProbe" in container and "readinessProbe" in container, f"{what}: probes"
        _assert_pinned(container["image"], what)
        service = _maillage_service(container)
        if service is not None:
            assert container["image"].split(":")[0] == "maillage", what
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", what
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", what
            assert security.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem"
            assert security.get("runAsUser") == 10001, f"{what}: runAsUser"


def _assert_pinned(image: str, what: str) -> None:
    name = image.rsplit("/", 1)[-1]
    assert "@" in name or ":" in name, f"{what}: image {image} has no tag"
    assert not name.endswith(":latest"), f"{what}: image {image} uses latest"


@pytest.mark.parametrize("kdir", _kustomization_dirs(), ids=_rel)
def test_kustomize_images_are_pinned(kdir: Path) -> None:
    kustomization = yaml.safe_load((kdir / "kustomization.yaml").read_text(encoding="utf-8"))
    for image in kustomization.get("images", []):
        assert image.get("newTag") or image.get("digest"), f"{_rel(kdir)}: image {image['name']} unpinned"
        assert image.get("newTag") != "latest", f"{_rel(kdir)}: image {image['name']} uses latest"


# --- network ---------------------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def test_network_policies_deny_by_default_and_open_each_workload(overlay: tuple[str, Build]) -> None:
    name, build_ = overlay
    policies = [obj for obj in build_.objects if obj.get("kind") == "NetworkPolicy"]
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")
    ]
    assert default_deny, f"{name}: no default-deny ingress NetworkPolicy"
    openers = [p for p in policies if p not in default_deny]
    for workload in build_.workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["podSelector"], labels) for p in openers), (
            f"{name}: no NetworkPolicy lets traffic into {workload['metadata']['name']}"
        )


def test_only_labelled_clients_reach_nats_and_postgres(overlay: tuple[str, Build]) -> None:
    name, build_ = overlay
    for workload in build_.workloads():
        pod_spec = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        services = {_maillage_service(c) for c in _containers(pod_spec)} - {None}
        if services:
            assert labels.get("maillage/nats-client") == "true", f"{name} {services}"
            uses_database = services != {"gateway"}
            assert (labels.get("maillage/database-client") == "true") == uses_database, f"{name} {services}"


# --- NATS and secrets ------------------------------------------------------------------------------------------


def test_jetstream_fsyncs_every_write() -> None:
    conf = (K8S / "base" / "nats" / "nats.conf").read_text(encoding="utf-8")
    jetstream = re.search(r"^jetstream\s*\{(.*?)^\}", conf, re.S | re.M)
    assert jetstream and re.search(r"^\s*sync_interval:\s*always\b", jetstream.group(1), re.M)
    assert "Jepsen" in jetstream.group(1)
    statefulset = _documents(K8S / "base" / "nats" / "statefulset.yaml")[0]
    routes = re.findall(r"nats://nats-\d+\.nats-headless:6222", conf)
    assert statefulset["spec"]["replicas"] == 3 == len(set(routes))


def test_secret_examples_hold_only_placeholders() -> None:
    examples = sorted(K8S.glob("overlays/*/secrets/*.env.example"))
    assert examples
    for path in examples:
        for key, value in _env_file(path).items():
            if re.search(r"PASSWORD|SECRET|DATABASE_URL", key):
                assert PLACEHOLDER in value, f"{_rel(path)}: {key} must hold the placeholder {PLACEHOLDER!r}"
    ignore = (K8S / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "overlays/*/secrets/*" in ignore and "!overlays/*/secrets/*.example" in ignore
