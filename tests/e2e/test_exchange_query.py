"""The compute-to-data path end to end: a real nats-server, the registry (agreement, DPO review, grant in KV) and
an exchange node (ingestion, policy, sandboxed DuckDB workers, suppression, audit), over HTTP and NATS."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from catalog.app import create_app as create_catalog
from catalog.config import CatalogSettings
from catalog.seeds import SeedTerritory, demo_published
from consent.app import create_app as create_consent
from consent.config import ConsentSettings
from contracts.envelope import Envelope
from contracts.events import DataDestroyedV1, DatasetUpsertedV1
from exchange.app import create_app as create_exchange
from exchange.config import ExchangeSettings
from kit.advertisements import apply_advertisement
from kit.auth import AuthMethod, Principal, Role
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.outbox import OutboxEvent
from kit.testing.factories import bootstrap_key, operator_principal, service_settings
from maillage.archive import ArchiveError, NodeClients, export_territory, import_territory
from registry.app import create_app as create_registry
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

DIJON = "242100410"
PARTNER = "73282932000074"
SAMPLE = Path(__file__).resolve().parents[2] / "contracts/standards/schema-comptage-mobilites/measure"


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def water_csv(rng: random.Random) -> bytes:
    """Household water consumption: 3 communes of 120, 60 and 4 meters, 12 months."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["meter_id", "commune_insee", "month", "volume_m3", "household_size"])
    meters = [("21231", 120), ("21166", 60), ("21617", 4)]
    for commune, count in meters:
        for index in range(count):
            for month in range(1, 13):
                writer.writerow(
                    [
                        f"CPT-{commune}-{index:04d}",
                        commune,
                        f"2024-{month:02d}-01",
                        round(rng.uniform(2, 20), 2),
                        rng.randint(1, 6),
                    ]
                )
    return out.getvalue().encode()


@dataclass
class Federation:
    registry: TestClient
    exchange: TestClient
    consent: TestClient
    keys: dict[str, str]
    nats: NatsServer

    def auth(self, who: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}


def advertise(*clients: TestClient) -> None:
    territory = SeedTerritory(DIJON, "Dijon Métropole", ("21231", "21166", "21617"), "dijon")
    for dataset in demo_published(territory, catalog_url="http://c.test", exchange_url="http://e.test"):
        event = DatasetUpsertedV1(dataset=dataset)
        envelope = Envelope(source="test", type=event.cloud_type(), data=event.to_data())
        for client in clients:
            with client.app.state.ctx.database.unit_of_work() as session:  # type: ignore[attr-defined]
                apply_advertisement(session, envelope)


@pytest.fixture
def federation(own_nats_server: NatsServer, tmp_path: Path) -> Iterator[Federation]:
    keyring = tmp_path / "keyring.json"

    def key(subject: str, kind: str, organisation: str | None = None, roles: set[Role] | None = None) -> str:
        principal = Principal(
            subject=subject,
            organisation=organisation,
            territory_roles={DIJON: frozenset(roles)} if roles else {},
            auth_method=AuthMethod.BOOTSTRAP_KEY,
        )
        return bootstrap_key(keyring, principal, kind=kind)

    keys = {
        "operator": bootstrap_key(keyring, operator_principal()),
        "partner": key("partner-analyst", "prt", organisation=PARTNER),
        "steward": key("steward-dijon", "stw", roles={Role.STEWARD}),
        "dpo": key("dpo-dijon", "dpo", roles={Role.DPO}),
    }
    registry = create_registry(
        service_settings(
            RegistrySettings,
            data_dir=tmp_path / "registry",
            nats_url=own_nats_server.url,
            keyring_file=keyring,
            grants_reconcile_interval=1.0,
        )
    )
    exchange = create_exchange(
        service_settings(
            ExchangeSettings,
            data_dir=tmp_path / "exchange",
            nats_url=own_nats_server.url,
            keyring_file=keyring,
            node_id="dijon",
            territories=[DIJON],
            sandbox_workers=2,
            query_timeout_seconds=10.0,
        )
    )
    consent = create_consent(
        service_settings(
            ConsentSettings,
            data_dir=tmp_path / "consent",
            nats_url=own_nats_server.url,
            keyring_file=keyring,
            node_id="dijon",
            territories=[DIJON],
        )
    )
    with TestClient(registry) as reg, TestClient(exchange) as exc, TestClient(consent) as con:
        advertise(reg, exc)
        fed = Federation(registry=reg, exchange=exc, consent=con, keys=keys, nats=own_nats_server)
        reg.post(
            "/v1/organisations",
            json={"siret": PARTNER, "name": "Mobilab SAS", "contact_email": "contact@mobilab.example"},
            headers=fed.auth("operator"),
        )
        yield fed


def activate(fed: Federation, **overrides: object) -> str:
    now = datetime.now(UTC)
    terms = {
        "dataset": f"{DIJON}/consommation-eau-menages",
        "consumer": PARTNER,
        "purpose": {"iri": "https://w3id.org/dpv#ScientificResearch", "text": "Étude des consommations par commune"},
        "legal_basis": "A6-1-e",
        "columns": ["meter_id", "commune_insee", "month", "volume_m3"],
        "aggregation": {
            "mode": "required",
            "min_group_size": 10,
            "functions": ["count", "sum", "avg"],
            "forbidden_group_keys": ["meter_id"],
        },
        "quota": {"queries_per_day": 50},
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        **overrides,
    }
    created = fed.registry.post("/v1/agreements", json={"terms": terms}, headers=fed.auth("partner"))
    assert created.status_code == 201, created.text
    aid = created.json()["id"]
    for who, action in (("steward", "offer"), ("partner", "accept"), ("dpo", "approve")):
        response = fed.registry.post(f"/v1/agreements/{aid}/{action}", headers=fed.auth(who))
        assert response.status_code == 200, response.text
    engine = fed.exchange.app.state.engine  # type: ignore[attr-defined]
    eventually(lambda: engine.grants.get(aid) is not None, "the grant on the exchange")
    return aid


RESEARCH = "https://w3id.org/dpv#ScientificResearch"
CONSENT = f"/v1/territories/{DIJON}/consent"


def publish_notice(fed: Federation, who: str = "steward") -> None:
    notice = {
        "notice_id": "releves-eau",
        "version": 1,
        "language": "fr",
        "title": "Vos relevés d'eau pour la recherche",
        "text": "Dijon Métropole partage vos relevés mensuels, agrégés, avec des équipes de recherche.",
        "purposes": [RESEARCH],
    }
    assert fed.consent.post(f"{CONSENT}/notices", json=notice, headers=fed.auth(who)).status_code == 201


def decide(
    fed: Federation, meter: str, choice: str = "given", who: str = "steward", recipients: tuple[str, ...] = (PARTNER,)
) -> dict:
    """A water-meter holder's decision on sharing their readings for research; the consent service's answer."""
    body = {
        "subject_identifier": meter,
        "decision": choice,
        "purpose": RESEARCH,
        "notice": {"id": "releves-eau", "version": 1, "language": "fr"},
        "processing": {
            "data_categories": ["consommation d'eau mensuelle"],
            "controllers": [DIJON],
            "recipients": list(recipients),
            "retention": "P1Y",
            "storage_location": "FR",
            "jurisdiction": "FR",
            "withdrawal_method": "espace citoyen ou guichet",
        },
    }
    response = fed.consent.post(f"{CONSENT}/records", json=body, headers=fed.auth(who))
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def query(fed: Federation, sql: str, agreement_id: str | None = None, accept: str | None = None):
    headers = fed.auth("partner", **({"Accept": accept} if accept else {}))
    return fed.exchange.post(
        f"/v1/territories/{DIJON}/query", json={"sql": sql, "agreement_id": agreement_id}, headers=headers
    )


def test_ingest_query_suppress_audit(federation: Federation):
    fed = federation
    upload = fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data?mode=replace",
        content=water_csv(random.Random(7)),
        headers=fed.auth("steward", **{"Content-Type": "text/csv"}),
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["rows_total"] == (120 + 60 + 4) * 12
    refused_upload = fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data", content=b"x", headers=fed.auth("partner")
    )
    assert refused_upload.status_code == 403

    # Without an agreement, protected data does not exist for the partner.
    response = query(fed, 'SELECT commune_insee, sum(volume_m3) FROM "consommation-eau-menages" GROUP BY 1')
    assert response.status_code == 403 and response.json()["error"] == "policy.table_not_allowed"

    aid = activate(fed)
    sql = 'SELECT commune_insee, count(*) AS n, sum(volume_m3) AS m3 FROM "consommation-eau-menages" GROUP BY 1'
    response = query(fed, sql, aid)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(response.content).read_all()
    assert sorted(table.column("commune_insee").to_pylist()) == ["21166", "21231"]  # 4 meters: suppressed
    assert "__maillage_k" not in table.column_names
    assert response.headers["x-maillage-suppressed-groups"] == "1"
    audit_id = response.headers["x-maillage-audit-id"]

    as_json = query(fed, sql, accept="application/json")  # the only grant on the dataset: no id needed
    assert as_json.status_code == 200 and {row["commune_insee"] for row in as_json.json()} == {"21166", "21231"}
    as_csv = query(fed, sql, aid, accept="text/csv")
    assert as_csv.text.splitlines()[0] == "commune_insee,n,m3"

    # Refusals are specific, audited, and leave the node answering.
    for bad, code in (
        ('SELECT meter_id, sum(volume_m3) FROM "consommation-eau-menages" GROUP BY 1', "policy.identifier_group_key"),
        ("SELECT * FROM read_csv('/etc/passwd')", "policy.table_not_allowed"),
        ('SELECT household_size FROM "consommation-eau-menages"', "policy.unknown_column"),
        ("SELECT 1; DROP TABLE x", "policy.multiple_statements"),
    ):
        refused = query(fed, bad, aid)
        assert refused.status_code in (400, 403, 422), refused.text
        assert refused.json()["error"] == code, refused.text
        assert refused.json()["audit_id"]
    assert query(fed, sql, aid).status_code == 200

    log = fed.exchange.get(f"/v1/territories/{DIJON}/audit", headers=fed.auth("dpo")).json()
    assert [r["decision"] for r in log].count("refused") == 5 and any(r["id"] == audit_id for r in log)
    assert all("CPT-" not in r["sql_masked"] for r in log)
    assert fed.exchange.get(f"/v1/territories/{DIJON}/audit", headers=fed.auth("partner")).status_code == 403
    verified = fed.exchange.get(f"/v1/territories/{DIJON}/audit/verify", headers=fed.auth("dpo")).json()
    assert verified["valid"] is True and verified["records"] == len(log)


def test_nats_query_and_revocation(federation: Federation):
    fed = federation
    fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data?mode=replace",
        content=water_csv(random.Random(3)),
        headers=fed.auth("steward", **{"Content-Type": "text/csv"}),
    )
    aid = activate(fed)
    sql = 'SELECT month, avg(volume_m3) AS m3 FROM "consommation-eau-menages" GROUP BY 1'

    async def over_nats() -> tuple[dict, bytes]:
        messaging = Messaging(fed.nats.url, name="gateway-test", declare=False)
        await messaging.start()
        await messaging.wait_ready(10)
        try:
            assert messaging.nc is not None
            reply = await messaging.nc.request(
                f"exchange.{DIJON}.query",
                json.dumps({"sql": sql, "agreement_id": aid}).encode(),
                timeout=10,
                headers={"Authorization": f"Bearer {fed.keys['partner']}"},
            )
            return dict(reply.headers or {}), reply.data
        finally:
            await messaging.close()

    headers, body = asyncio.run(over_nats())
    assert headers["Maillage-Status"] == "200"
    assert pa.ipc.open_stream(body).read_all().num_rows == 12

    revoked = fed.registry.post(
        f"/v1/agreements/{aid}/revoke", json={"reason": "fin de l'étude"}, headers=fed.auth("dpo")
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    eventually(lambda: query(fed, sql, aid).status_code == 403, "the revocation to refuse queries", 5)
    assert time.monotonic() - started < 2
    assert query(fed, sql, aid).json()["error"] == "policy.no_agreement"


def test_open_data_needs_no_agreement_and_downloads(federation: Federation):
    fed = federation
    measures = (SAMPLE / "exemple-valide-eco-compteur.csv").read_bytes()
    upload = fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/comptages-velo/data",
        content=measures,
        headers=fed.auth("steward", **{"Content-Type": "text/csv"}),
    )
    assert upload.status_code == 201, upload.text
    rows = query(
        fed,
        'SELECT channel_id, count FROM "comptages-velo" WHERE count > 100 ORDER BY count DESC LIMIT 5',
        accept="application/json",
    )
    assert rows.status_code == 200 and len(rows.json()) == 5
    csv_file = fed.exchange.get(f"/v1/territories/{DIJON}/datasets/comptages-velo/data.csv")
    assert csv_file.status_code == 200 and csv_file.text.count("\n") == 3651  # header + 3,650 measures
    parquet = fed.exchange.get(f"/v1/territories/{DIJON}/datasets/comptages-velo/data.parquet")
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
    closed = fed.exchange.get(f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data.csv")
    assert closed.status_code == 403 and closed.json()["error"] == "policy.not_open"


def test_consent_based_agreement_computes_on_consented_subjects_only(federation: Federation):
    """Grants resting on consent see only the subjects whose consent for the grant's purpose is active; a withdrawal
    applies to the next query once the exchange has processed the event."""
    fed = federation
    research = RESEARCH
    upload = fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data?mode=replace",
        content=water_csv(random.Random(5)),
        headers=fed.auth("steward", **{"Content-Type": "text/csv"}),
    )
    assert upload.status_code == 201, upload.text
    aid = activate(fed, legal_basis="A6-1-a", consent_purpose=research)
    sql = 'SELECT commune_insee, count(*) AS n FROM "consommation-eau-menages" GROUP BY 1 ORDER BY 1'

    def released() -> dict[str, int]:
        response = query(fed, sql, aid, accept="application/json")
        assert response.status_code == 200, response.text
        return {row["commune_insee"]: row["n"] for row in response.json()}

    assert released() == {}  # nobody has consented yet: nothing to compute on

    base = CONSENT
    publish_notice(fed)

    # 12 meters of 21231 and 3 of 21166 consent; 2 of 21231 refuse.
    records = {f"CPT-21231-{i:04d}": decide(fed, f"CPT-21231-{i:04d}")["record"]["record_id"] for i in range(12)}
    for i in range(3):
        decide(fed, f"CPT-21166-{i:04d}")
    for i in (100, 101):
        decide(fed, f"CPT-21231-{i:04d}", "refused")
    # Consents naming only another recipient (a neighbouring territory) do not count for the partner.
    for i in (102, 103, 104):
        decide(fed, f"CPT-21231-{i:04d}", recipients=("242500361",))
    eventually(lambda: released() == {"21231": 12 * 12}, "the consented subjects on the exchange")

    # One withdrawal: the next query after the event is processed counts 11 meters; two more put it below k.
    meters = iter(records.values())
    fed.consent.post(f"{base}/records/{next(meters)}/withdraw", headers=fed.auth("steward"))
    eventually(lambda: released() == {"21231": 11 * 12}, "the withdrawal on the exchange")
    for _ in range(2):
        fed.consent.post(f"{base}/records/{next(meters)}/withdraw", headers=fed.auth("steward"))
    eventually(lambda: released() == {}, "the group below k after more withdrawals")


def test_data_subject_access_and_erasure_then_retention(federation: Federation):
    """A DPO asks for a subject's data (rows from the exchange + consent records in one file), then its erasure (rows
    deleted on the exchange with earlier versions destroyed, consent records anonymised, both audited); rows past
    the retention period are purged, after a dry run."""
    fed = federation
    rows = water_csv(random.Random(9)).decode().splitlines()
    old_rows = ["CPT-21231-0001,21231,2018-01-01,5.5,2", "CPT-21231-0002,21231,2019-06-01,4.0,3"]
    upload = fed.exchange.post(
        f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data?mode=replace",
        content=("\n".join(rows + old_rows) + "\n").encode(),
        headers=fed.auth("steward", **{"Content-Type": "text/csv"}),
    )
    assert upload.status_code == 201, upload.text
    base = CONSENT
    publish_notice(fed, "dpo")
    meter = "CPT-21231-0007"
    assert decide(fed, meter, who="dpo")["record"]["seq"] == 1

    # Access: every row about the meter and its consent records, in one file.
    access = fed.consent.post(
        f"{base}/subject-requests", json={"kind": "access", "subject_identifier": meter}, headers=fed.auth("dpo")
    )
    assert access.status_code == 201, access.text
    assert access.json()["status"] == "completed" and access.json()["overdue"] is False
    assert access.json()["detail"] == {"rows": {"consommation-eau-menages": 12}, "consent_records": 1}
    document = fed.consent.get(access.json()["file"], headers=fed.auth("dpo")).json()
    water = document["datasets"]["consommation-eau-menages"]
    assert len(water) == 12 and {r["meter_id"] for r in water} == {meter}
    assert all(not key.startswith("__maillage") for key in water[0])
    assert document["consents"][0]["events"][0]["event"] == "given"
    assert fed.consent.get(access.json()["file"], headers=fed.auth("partner")).status_code == 403

    # Unknown subjects: a 404 with a reason, nothing recorded.
    unknown = fed.consent.post(
        f"{base}/subject-requests", json={"kind": "erasure", "subject_identifier": "CPT-0000"}, headers=fed.auth("dpo")
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "consent.unknown_subject"
    assert len(fed.consent.get(f"{base}/subject-requests", headers=fed.auth("dpo")).json()) == 1

    # Erasure: rows gone from the exchange (earlier versions destroyed), consent records anonymised, audited.
    storage = fed.exchange.app.state.storage  # type: ignore[attr-defined]
    before = storage.current(DIJON, "consommation-eau-menages")
    erasure = fed.consent.post(
        f"{base}/subject-requests", json={"kind": "erasure", "subject_identifier": meter}, headers=fed.auth("dpo")
    )
    assert erasure.status_code == 201, erasure.text
    assert erasure.json()["status"] == "completed"
    assert erasure.json()["detail"]["erased"] == {"consommation-eau-menages": 12}
    assert erasure.json()["detail"]["consent_records_anonymised"] == 1
    after = storage.current(DIJON, "consommation-eau-menages")
    assert after.rows == before.rows - 12 and not before.directory.exists()
    lookup = fed.consent.post(f"{base}/subjects/lookup", json={"subject_identifier": meter}, headers=fed.auth("dpo"))
    assert lookup.status_code == 404
    again = fed.consent.post(
        f"{base}/subject-requests", json={"kind": "access", "subject_identifier": meter}, headers=fed.auth("dpo")
    )
    assert again.status_code == 404  # nothing is held any more
    log = fed.exchange.get(f"/v1/territories/{DIJON}/audit", headers=fed.auth("dpo")).json()
    assert [r["rows_out"] for r in log if r["reason"] == "subject.access"] == [12]  # the access request's rows
    erased = [r for r in log if r["reason"] == "subject.erasure"]
    assert len(erased) == 1 and erased[0]["rows_out"] == 12 and meter not in json.dumps(log)

    # Retention (P5Y on month): the 2018 and 2019 rows are past it; a dry run removes nothing.
    purge = f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/retention/purge"
    dry = fed.exchange.post(f"{purge}?dry_run=true", headers=fed.auth("steward"))
    assert dry.status_code == 200 and dry.json()["rows_expired"] == 2 and dry.json()["version"] is None
    assert storage.current(DIJON, "consommation-eau-menages").rows == after.rows
    assert fed.exchange.post(purge, headers=fed.auth("partner")).status_code == 403
    done = fed.exchange.post(purge, headers=fed.auth("dpo"))
    assert done.status_code == 200 and done.json()["rows_expired"] == 2 and done.json()["audit_id"]
    assert storage.current(DIJON, "consommation-eau-menages").rows == after.rows - 2
    assert fed.exchange.post(purge, headers=fed.auth("steward")).json()["rows_expired"] == 0
    verified = fed.exchange.get(f"/v1/territories/{DIJON}/audit/verify", headers=fed.auth("dpo")).json()
    assert verified["valid"] is True
    with fed.exchange.app.state.ctx.database.session() as session:  # type: ignore[attr-defined]
        destroyed = [
            json.loads(row.payload)["data"]
            for row in session.exec(select(OutboxEvent)).all()
            if row.type == DataDestroyedV1.cloud_type()
        ]
    assert sorted((d["reason"], d["rows_removed"]) for d in destroyed) == [("erasure", 12), ("retention", 2)]


def test_a_territory_leaves_with_its_archive_and_starts_again_on_a_fresh_node(
    federation: Federation, tmp_path: Path
) -> None:
    """``maillage export`` on node A, ``maillage import`` on an empty node B: every dataset's checksum and the same
    query's result are identical, the audit chain and the consent records come along."""
    fed = federation
    keyring = tmp_path / "keyring.json"

    def node_settings(cls: type, name: str, **extra: object) -> object:
        return service_settings(
            cls,  # type: ignore[arg-type]
            data_dir=tmp_path / name,
            nats_url=fed.nats.url,
            keyring_file=keyring,
            territories=[DIJON],
            **extra,
        )

    steward = fed.auth("steward")
    catalog_a = create_catalog(node_settings(CatalogSettings, "catalog-a", node_id="dijon"))
    with TestClient(catalog_a) as cat_a:
        territory = SeedTerritory(DIJON, "Dijon Métropole", ("21231", "21166", "21617"), "dijon")
        for dataset in demo_published(territory, catalog_url="http://c.test", exchange_url="http://e.test"):
            metadata = dataset.metadata.model_dump(mode="json", by_alias=True, exclude_none=True)
            path = f"/v1/territories/{DIJON}/datasets"
            created = cat_a.post(path, json={"slug": dataset.slug, "metadata": metadata}, headers=steward)
            assert created.status_code == 201, created.text
            assert cat_a.post(f"{path}/{dataset.slug}/publish", headers=steward).status_code == 200
        eventually(
            lambda: (
                fed.exchange.post(
                    f"/v1/territories/{DIJON}/datasets/consommation-eau-menages/data?mode=replace",
                    content=water_csv(random.Random(21)),
                    headers={**steward, "Content-Type": "text/csv"},
                ).status_code
                == 201
            ),
            "the water data on node A",
        )
        aid = activate(fed)
        sql = (
            'SELECT commune_insee, month, sum(volume_m3) AS m3 FROM "consommation-eau-menages" '
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        before = query(fed, sql, aid, accept="application/json")
        assert before.status_code == 200 and before.json()
        base, research = CONSENT, RESEARCH
        publish_notice(fed)
        for meter in ("CPT-21231-0001", "CPT-21231-0002"):
            assert decide(fed, meter)["record"]["state"] == "active"
        node_a = NodeClients(
            catalog=TestClient(cat_a.app, headers=steward),
            exchange=TestClient(fed.exchange.app, headers=steward),
            consent=TestClient(fed.consent.app, headers=steward),
            registry=TestClient(fed.registry.app, headers=steward),
        )
        archive = tmp_path / f"{DIJON}.tar.gz"
        manifest = export_territory(node_a, DIJON, archive)
    assert manifest["datasets"]["consommation-eau-menages"]["rows"] == (120 + 60 + 4) * 12
    assert {f["path"] for f in manifest["files"]} >= {
        "catalog/datasets.json",
        "catalog/catalog.ttl",
        "datasets/consommation-eau-menages/data.parquet",
        "datasets/consommation-eau-menages/data.csv",
        "datasets/consommation-eau-menages/schema.json",
        "agreements/agreements.json",
        "audit/audit.jsonl",
        "consent/consents.json",
    }
    with tarfile.open(archive, "r:gz") as tar:
        consents = json.loads(tar.extractfile("consent/consents.json").read())  # type: ignore[union-attr]
    assert len(consents["records"]) == 2 and "CPT-21231-0001" not in json.dumps(consents)

    # Node B: empty catalog, exchange and consent service for the same territory.
    catalog_b = create_catalog(node_settings(CatalogSettings, "catalog-b", node_id="dijon-b"))
    exchange_b = create_exchange(
        node_settings(ExchangeSettings, "exchange-b", node_id="dijon-b", sandbox_workers=1, query_timeout_seconds=10.0)
    )
    consent_b = create_consent(node_settings(ConsentSettings, "consent-b", node_id="dijon-b"))
    with TestClient(catalog_b) as cat_b, TestClient(exchange_b) as exc_b, TestClient(consent_b) as con_b:
        node_b = NodeClients(
            catalog=TestClient(cat_b.app, headers=steward),
            exchange=TestClient(exc_b.app, headers=steward),
            consent=TestClient(con_b.app, headers=steward),
        )
        result = import_territory(node_b, archive)
        assert result["datasets"]["consommation-eau-menages"]["identical"] is True
        assert result["audit"]["valid"] is True and result["audit"]["records"] == manifest["audit_records"]
        assert result["consents"] == {"notices": 1, "records": 2}
        lookup = con_b.post(f"{base}/subjects/lookup", json={"subject_identifier": "CPT-21231-0001"}, headers=steward)
        assert lookup.status_code == 200 and lookup.json()["purposes"][research]["state"] == "active"
        engine_b = exc_b.app.state.engine  # type: ignore[attr-defined]
        eventually(lambda: engine_b.grants.get(aid) is not None, "the grant on node B")
        after = exc_b.post(
            f"/v1/territories/{DIJON}/query",
            json={"sql": sql, "agreement_id": aid},
            headers=fed.auth("partner", Accept="application/json"),
        )
        assert after.status_code == 200 and after.json() == before.json()
        # Importing twice is refused, nothing half-written.
        again = import_territory
        with pytest.raises(ArchiveError, match="audit.not_empty|consent.not_empty|already"):
            again(node_b, archive)
