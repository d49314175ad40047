from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from maillage.federation import (
    DEMO_SIRENS,
    ReferentielError,
    auto_ports,
    build_federation,
    default_referentiel_path,
    fixed_ports,
    instance_names,
    load_territories,
    plan_ports,
    saved_ports,
    service_instances,
)


def test_default_ports_follow_the_documented_plan() -> None:
    ports = fixed_ports()
    assert ports["nats"] == 4222
    assert ports["gateway"] == 8000
    assert ports["registry"] == 8001
    assert [ports[f"dijon-{s}"] for s in ("catalog", "exchange", "consent")] == [8101, 8102, 8103]
    assert [ports[f"besancon-{s}"] for s in ("catalog", "exchange", "consent")] == [8201, 8202, 8203]
    assert [ports[f"operateur-{s}"] for s in ("catalog", "exchange", "consent")] == [8301, 8302, 8303]
    assert sorted(ports) == sorted(instance_names())


def test_base_port_shifts_every_service_but_not_nats() -> None:
    ports = fixed_ports(9000)
    assert ports["gateway"] == 9000
    assert ports["registry"] == 9001
    assert ports["dijon-catalog"] == 9101
    assert ports["operateur-consent"] == 9303
    assert ports["nats"] == 4222


def test_auto_ports_are_distinct_even_when_the_os_repeats_itself() -> None:
    repeated = itertools.chain([5000, 5000, 5000], itertools.count(5001))
    ports = auto_ports(lambda: next(repeated))
    assert len(set(ports.values())) == len(instance_names())


def test_plan_ports_defaults_then_resumes_from_the_saved_federation(referentiel: Path) -> None:
    territories = load_territories(referentiel)
    assert plan_ports(None) == fixed_ports()

    saved = build_federation(territories, fixed_ports(7000, 5222))
    assert plan_ports(saved) == fixed_ports(7000, 5222)
    # Explicit options win over the saved ports, each for its own part.
    assert plan_ports(saved, base_port=9000) == fixed_ports(9000, 5222)
    assert plan_ports(saved, nats_port=4333) == fixed_ports(7000, 4333)
    # --ports fixed goes back to the default plan.
    assert plan_ports(saved, mode="fixed") == fixed_ports()


def test_plan_ports_auto() -> None:
    counter = itertools.count(20000)
    ports = plan_ports(None, mode="auto", nats_port=4999, pick=lambda: next(counter))
    assert ports["nats"] == 4999
    assert ports["gateway"] >= 20000
    with pytest.raises(ValueError, match="cannot be combined"):
        plan_ports(None, mode="auto", base_port=9000)


def test_federation_hosts_the_four_territories_on_three_nodes(referentiel: Path) -> None:
    federation = build_federation(load_territories(referentiel), fixed_ports())
    assert [t.siren for t in federation.territories] == list(DEMO_SIRENS)
    assert federation.territory("242100410").name == "Dijon Métropole"
    assert federation.territory("242100410").communes[0].name == "Dijon"
    nodes = {node.id: node for node in federation.nodes}
    assert nodes["dijon"].territories == ["242100410"]
    assert nodes["besancon"].territories == ["242500361"]
    assert nodes["operateur"].territories == ["200069540", "200068070"]
    assert all(node.hosting_country == "FR" for node in federation.nodes)
    assert nodes["besancon"].urls.exchange == "http://127.0.0.1:8202"
    assert federation.registry_url == "http://127.0.0.1:8001"
    assert federation.gateway_url == "http://127.0.0.1:8000"
    assert federation.nats_url == "nats://127.0.0.1:4222"
    assert saved_ports(federation) == fixed_ports()


def test_federation_json_shape(referentiel: Path) -> None:
    dumped = build_federation(load_territories(referentiel), fixed_ports()).model_dump(mode="json")
    assert set(dumped) == {"version", "territories", "nodes", "registry_url", "gateway_url", "nats_url"}
    assert dumped["version"] == 1
    assert set(dumped["territories"][0]) == {"siren", "name", "type", "population", "communes"}
    assert set(dumped["territories"][0]["communes"][0]) == {"insee", "name"}
    assert set(dumped["nodes"][0]) == {"id", "name", "hosting_country", "territories", "urls"}
    assert set(dumped["nodes"][0]["urls"]) == {"catalog", "exchange", "consent"}


def test_service_instances(referentiel: Path) -> None:
    instances = service_instances(build_federation(load_territories(referentiel), fixed_ports()))
    assert [i.name for i in instances] == instance_names()[1:]
    by_name = {i.name: i for i in instances}
    assert by_name["registry"].node_id == "registry" and by_name["registry"].territories == ()
    assert by_name["gateway"].node_id == "gateway"
    assert by_name["operateur-consent"].node_id == "operateur"
    assert by_name["operateur-consent"].territories == ("200069540", "200068070")
    assert by_name["operateur-consent"].port == 8303


def test_missing_referentiel_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ReferentielError, match="MAILLAGE_REFERENTIEL"):
        load_territories(tmp_path / "absent.json")


def test_referentiel_without_a_demo_territory(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ReferentielError, match="242100410"):
        load_territories(path)
    path.write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(ReferentielError, match="not a JSON list"):
        load_territories(path)


def test_referentiel_path_from_env_or_next_to_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILLAGE_REFERENTIEL", "/somewhere/ref.json")
    assert default_referentiel_path() == Path("/somewhere/ref.json")
    monkeypatch.delenv("MAILLAGE_REFERENTIEL")
    repo_root = Path(__file__).resolve().parents[3]
    expected = repo_root.parent / "shared/data/referentiel/epci-bourgogne-franche-comte.json"
    assert default_referentiel_path() == expected


def test_the_shared_referentiel_holds_the_demo_territories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILLAGE_REFERENTIEL", raising=False)
    path = default_referentiel_path()
    assert path.exists(), f"the shared referentiel must be beside the repository: {path}"
    territories = load_territories(path)
    assert [t.name for t in territories] == [
        "Dijon Métropole",
        "CU Grand Besançon Métropole",
        "CC Norge et Tille",
        "CC Loue-Lison",
    ]
    assert all(t.communes for t in territories)
