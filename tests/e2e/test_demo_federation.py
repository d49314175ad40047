"""`maillage up` with the real services: the embedded federation comes up, learns its directory over NATS, survives
a nats-server kill without losing an event, and stops on Ctrl-C leaving no process behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from maillage.bootstrap import read_keys_file
from maillage.demo_data import consenting_meters
from maillage.federation import service_instances
from maillage.testing import UpProcess, launch_up

pytestmark = pytest.mark.integration

DIJON = "242100410"
SIRENS = {DIJON, "242500361", "200069540", "200068070"}


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[UpProcess]:
    up = launch_up(["--ports", "auto"], data_dir=tmp_path / "data", output_file=tmp_path / "up.out")
    yield up
    up.kill_tree()


def test_demo_federation_end_to_end(demo: UpProcess):
    answers = demo.wait_ready(timeout=120)
    federation = demo.federation()
    instances = {i.name: i for i in service_instances(federation)}
    assert set(answers) == set(instances)
    assert all(answer["status"] == "ready" for answer in answers.values())
    eventually(lambda: "Try: curl" in demo.output(), "the federation summary")
    output = demo.output()
    for instance in instances.values():
        assert instance.url in output, f"{instance.url} not printed"

    client = httpx.Client(timeout=5, trust_env=False)
    registry = instances["registry"].url
    catalogs = [i.url for name, i in instances.items() if name.endswith("-catalog")]
    assert len(catalogs) == 3

    def directory_everywhere(check: Callable[[list[dict]], bool]) -> bool:
        return all(check(client.get(f"{url}/v1/federation/territories").json()) for url in catalogs)

    eventually(lambda: directory_everywhere(lambda ts: {t["siren"] for t in ts} == SIRENS), "the directory")
    # Every node seeds the demo datasets of its territories and their public registers of agreements; every node's
    # federated index holds all twenty.
    eventually(
        lambda: all(client.get(f"{url}/v1/search").json()["total"] == 20 for url in catalogs),
        "the 20 demo datasets in every federated index",
    )
    register = client.get(f"{catalogs[1]}/v1/federation/datasets/{DIJON}/registre-des-conventions").json()
    csv_url = register["metadata"]["external_csv_url"]
    assert csv_url == f"{registry}/v1/register.csv?provider={DIJON}"
    assert client.get(csv_url).text.startswith("agreement_id,provider_siren,")
    hit = client.get(f"{catalogs[2]}/v1/search", params={"q": "velos", "territory": DIJON}).json()["results"]
    assert [h["id"] for h in hit] == [f"{DIJON}/comptages-velo"]

    keys = {key.label: key.secret for key in read_keys_file(demo.data_dir / "keys.txt")}
    for label in ("admin", f"steward-{DIJON}", f"dpo-{DIJON}"):
        assert keys[label] in output, f"key {label} not printed"
    # The demo partner holds a federated key, negotiates with Dijon (its datasets the registry learnt from the
    # catalog's advertisements; the DPO reviews, the data being personal), then computes on Dijon's exchange.
    partner = {"Authorization": f"Bearer {keys['partner-73282932000074']}"}
    now = datetime.now(UTC)
    terms = {
        "dataset": f"{DIJON}/consommation-eau-menages",
        "consumer": "73282932000074",
        "purpose": {"iri": "https://w3id.org/dpv#ScientificResearch", "text": "Consommations d'eau par commune"},
        "legal_basis": "A6-1-e",
        "columns": ["meter_id", "commune_insee", "month", "volume_m3"],
        "aggregation": {"mode": "required", "min_group_size": 10, "forbidden_group_keys": ["meter_id"]},
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=90)).isoformat(),
    }
    eventually(
        lambda: client.post(f"{registry}/v1/agreements", json={"terms": terms}, headers=partner).status_code == 201,
        "the registry to accept the partner's request",
    )
    [agreement] = client.get(f"{registry}/v1/agreements", headers=partner).json()
    aid = agreement["id"]
    for who, action in (
        (f"steward-{DIJON}", "offer"),
        ("partner-73282932000074", "accept"),
        (f"dpo-{DIJON}", "approve"),
    ):
        done = client.post(f"{registry}/v1/agreements/{aid}/{action}", headers={"Authorization": f"Bearer {keys[who]}"})
        assert done.status_code == 200, done.text
    exchange = instances["dijon-exchange"].url
    sql = 'SELECT commune_insee, count(*) AS n, sum(volume_m3) AS m3 FROM "consommation-eau-menages" GROUP BY 1'

    def answered() -> bool:
        response = client.post(
            f"{exchange}/v1/territories/{DIJON}/query",
            json={"sql": sql, "agreement_id": aid},
            headers={**partner, "Accept": "application/json"},
        )
        return response.status_code == 200 and len(response.json()) >= 1

    eventually(answered, "the partner's query on Dijon's exchange (demo data loaded, grant seen)")
    # One household in three consented to research on its readings, naming the demo partner.
    consent = instances["dijon-consent"].url
    steward = {"Authorization": f"Bearer {keys[f'steward-{DIJON}']}"}
    assert len(client.get(f"{consent}/v1/territories/{DIJON}/consent/notices", headers=steward).json()) == 1
    meter = consenting_meters(DIJON)[1]
    state = client.post(
        f"{consent}/v1/territories/{DIJON}/consent/subjects/lookup", json={"subject_identifier": meter}, headers=steward
    ).json()
    assert state["purposes"]["https://w3id.org/dpv#ScientificResearch"]["state"] == "active"
    whoami = client.get(f"{catalogs[0]}/v1/whoami", headers={"Authorization": f"Bearer {keys[f'steward-{DIJON}']}"})
    assert whoami.status_code == 200
    assert whoami.json()["territory_roles"] == {DIJON: ["steward"]}
    assert client.get(f"{catalogs[0]}/v1/whoami").status_code == 401

    # Kill nats-server: services report degraded, the supervisor restarts it, nothing written meanwhile is lost.
    nats_pids = [pid for pid in demo.descendants() if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(nats_pids) == 1
    os.kill(nats_pids[0], signal.SIGKILL)
    eventually(lambda: client.get(f"{registry}/readyz").status_code == 503, "the registry to report degraded", 10)
    assert client.get(f"{registry}/readyz").json()["status"] == "degraded"
    body = {"name": "Dijon Métropole", "kind": "METRO", "population": 263999, "communes": ["21231", "21166"]}
    changed = client.put(
        f"{registry}/v1/territories/{DIJON}", json=body, headers={"Authorization": f"Bearer {keys['admin']}"}
    )
    assert changed.status_code == 200, changed.text

    demo.wait_ready(timeout=60)
    eventually(
        lambda: directory_everywhere(lambda ts: any(t["population"] == 263999 for t in ts)),
        "the change written during the outage on every node",
    )

    pids = demo.descendants()
    assert len(pids) >= 12  # nats-server and 11 services
    assert demo.interrupt(timeout=60) == 0
    eventually(lambda: not UpProcess.survivors(pids), "every child to be gone", 10)
    assert not demo.processes_using_data_dir()
