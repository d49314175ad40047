"""Agreements against a real nats-server, on SQLite and PostgreSQL: the whole lifecycle, who may do what,
optimistic concurrency, idempotency keys, terms validation, grants in NATS KV, expiry, the public register."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from catalog.seeds import SeedTerritory, demo_published
from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1
from contracts.grants import GRANTS_BUCKET
from kit.advertisements import apply_advertisement
from kit.auth import AuthMethod, Principal, Role
from kit.errors import Conflict
from kit.grants import GrantCache
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.outbox import OutboxEvent
from kit.testing.factories import bootstrap_key, operator_principal, service_settings
from registry import agreements
from registry.agreements import Action
from registry.app import create_app
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

DIJON, BESANCON = "242100410", "242500361"
PARTNER = "73282932000074"
RESEARCH = "https://w3id.org/dpv#ScientificResearch"


@dataclass
class Registry:
    client: TestClient
    keys: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def post(self, path: str, who: str, body: dict | None = None, **headers: str):
        return self.client.post(path, json=body, headers={**self.as_(who), **headers})

    @property
    def ctx(self):
        return self.client.app.state.ctx  # type: ignore[attr-defined]


def principal(subject: str, *, organisation: str | None = None, roles: dict[str, set[Role]] | None = None):
    return Principal(
        subject=subject,
        organisation=organisation,
        territory_roles={k: frozenset(v) for k, v in (roles or {}).items()},
        auth_method=AuthMethod.BOOTSTRAP_KEY,
    )


def advertise(registry: Registry) -> None:
    """The registry learns Dijon's demo datasets as the catalog would advertise them."""
    territory = SeedTerritory(DIJON, "Dijon Métropole", ("21231",), "dijon")
    with registry.ctx.database.unit_of_work() as session:
        for dataset in demo_published(territory, catalog_url="http://c.test", exchange_url="http://e.test"):
            event = DatasetUpsertedV1(dataset=dataset)
            apply_advertisement(session, Envelope(source="test", type=event.cloud_type(), data=event.to_data()))


def make_registry(nats_url: str, database_url: str, tmp_path: Path) -> tuple[RegistrySettings, dict[str, str]]:
    keyring = tmp_path / "keyring.json"
    keys = {
        "operator": bootstrap_key(keyring, operator_principal()),
        "partner": bootstrap_key(keyring, principal("partner-analyst", organisation=PARTNER), kind="prt"),
        "other-partner": bootstrap_key(keyring, principal("other", organisation="55208131766522"), kind="prt"),
        "steward": bootstrap_key(keyring, principal("steward-dijon", roles={DIJON: {Role.STEWARD}}), kind="stw"),
        "dpo": bootstrap_key(keyring, principal("dpo-dijon", roles={DIJON: {Role.DPO}}), kind="dpo"),
        "dpo-besancon": bootstrap_key(keyring, principal("dpo-bes", roles={BESANCON: {Role.DPO}}), kind="dpo"),
        "analyst-besancon": bootstrap_key(
            keyring, principal("analyst-bes", roles={BESANCON: {Role.ANALYST}}), kind="prt"
        ),
    }
    settings = service_settings(
        RegistrySettings,
        data_dir=tmp_path,
        nats_url=nats_url,
        database_url=database_url,
        keyring_file=keyring,
        grants_reconcile_interval=1.0,
        expiry_check_interval=0.2,
    )
    return settings, keys


@pytest.fixture
def registry(own_nats_server: NatsServer, database_url: str, tmp_path: Path) -> Iterator[Registry]:
    settings, keys = make_registry(own_nats_server.url, database_url, tmp_path)
    with TestClient(create_app(settings)) as client:
        reg = Registry(client=client, keys=keys)
        admitted = reg.post(
            "/v1/organisations",
            "operator",
            {"siret": PARTNER, "name": "Mobilab SAS", "contact_email": "contact@mobilab.example"},
        )
        assert admitted.status_code == 201, admitted.text
        advertise(reg)
        yield reg


def terms(slug: str = "frequentation-bus", consumer: str = PARTNER, **changes) -> dict:
    now = datetime.now(UTC)
    base = {
        "dataset": f"{DIJON}/{slug}",
        "consumer": consumer,
        "purpose": {"iri": RESEARCH, "text": "Étude de la fréquentation des lignes transfrontalières"},
        "legal_basis": "A6-1-e",
        "columns": ["stop_id", "line_id", "day", "hour", "boardings"],
        "row_filter": [{"column": "line_id", "op": "in", "values": ["L4", "L7"]}],
        "aggregation": {"mode": "none"},
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=365)).isoformat(),
    }
    if slug == "consommation-eau-menages":
        base.update(
            columns=["meter_id", "commune_insee", "month", "volume_m3"],
            row_filter=[],
            aggregation={
                "mode": "required",
                "min_group_size": 10,
                "functions": ["count", "sum", "avg"],
                "forbidden_group_keys": ["meter_id"],
            },
        )
    base.update(changes)
    return base


def request(registry: Registry, who: str = "partner", **changes):
    return registry.post("/v1/agreements", who, {"terms": terms(**changes)})


def grant_keys(registry: Registry) -> set[str]:
    async def read() -> set[str]:
        messaging = Messaging(registry.ctx.settings.nats_url, name="test-reader", declare=False)
        await messaging.start()
        await messaging.wait_ready(10)
        try:
            kv = await messaging.js.key_value(GRANTS_BUCKET)
            try:
                return set(await kv.keys()) - {"registry-heartbeat"}
            except Exception:  # noqa: BLE001 - NoKeysError
                return set()
        finally:
            await messaging.close()

    return asyncio.run(read())


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_full_lifecycle_with_grants_history_and_events(registry: Registry):
    created = request(registry)
    assert created.status_code == 201, created.text
    agreement = created.json()
    aid = agreement["id"]
    assert agreement["state"] == "REQUESTED" and agreement["personal"] is False
    assert created.headers["etag"] == '"v1"' and created.headers["location"] == f"/v1/agreements/{aid}"

    steps = [
        ("steward", "offer", None, "OFFERED"),
        ("partner", "accept", None, "ACCEPTED"),
        ("steward", "activate", None, "ACTIVE"),
    ]
    for who, action, reason, state in steps:
        response = registry.post(f"/v1/agreements/{aid}/{action}", who, {"reason": reason} if reason else None)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == state
    eventually(lambda: grant_keys(registry) == {aid}, "the grant in KV")

    response = registry.post(f"/v1/agreements/{aid}/suspend", "dpo", {"reason": "audit en cours"})
    assert response.json()["state"] == "SUSPENDED"
    eventually(lambda: grant_keys(registry) == set(), "the grant deleted on suspension")
    assert registry.post(f"/v1/agreements/{aid}/resume", "steward").json()["state"] == "ACTIVE"
    eventually(lambda: grant_keys(registry) == {aid}, "the grant back on resumption")
    revoked = registry.post(f"/v1/agreements/{aid}/revoke", "steward", {"reason": "usage non conforme"})
    assert revoked.json()["state"] == "REVOKED" and revoked.json()["ended_at"]
    eventually(lambda: grant_keys(registry) == set(), "the grant deleted on revocation")

    history = registry.client.get(f"/v1/agreements/{aid}/history", headers=registry.as_("partner")).json()
    assert [(h["action"], h["to_state"], h["actor"]) for h in history] == [
        ("requested", "REQUESTED", "partner-analyst"),
        ("offered", "OFFERED", "steward-dijon"),
        ("accepted", "ACCEPTED", "partner-analyst"),
        ("activated", "ACTIVE", "steward-dijon"),
        ("suspended", "SUSPENDED", "dpo-dijon"),
        ("resumed", "ACTIVE", "steward-dijon"),
        ("revoked", "REVOKED", "steward-dijon"),
    ]
    assert history[-1]["reason"] == "usage non conforme"
    assert all(len(h["terms_hash"]) == 64 for h in history)
    with registry.ctx.database.session() as session:
        subjects = [row.subject for row in session.exec(select(OutboxEvent).order_by(OutboxEvent.seq))]
    assert [s for s in subjects if s.startswith("registry.agreement.")] == [
        f"registry.agreement.{action}.{aid}"
        for action in ("requested", "offered", "accepted", "activated", "suspended", "resumed", "revoked")
    ]


def test_personal_data_goes_through_the_dpo(registry: Registry):
    aid = request(registry, slug="consommation-eau-menages").json()["id"]
    registry.post(f"/v1/agreements/{aid}/offer", "steward")
    accepted = registry.post(f"/v1/agreements/{aid}/accept", "partner")
    assert accepted.json()["state"] == "DPO_REVIEW" and accepted.json()["personal"] is True
    refused = registry.post(f"/v1/agreements/{aid}/approve", "steward")
    assert refused.status_code == 403 and refused.json()["error"] == "agreement.not_allowed"
    assert registry.post(f"/v1/agreements/{aid}/approve", "dpo-besancon").status_code == 404  # not a party
    assert registry.post(f"/v1/agreements/{aid}/activate", "steward").status_code == 409  # no bypass
    approved = registry.post(f"/v1/agreements/{aid}/approve", "dpo")
    assert approved.status_code == 200 and approved.json()["state"] == "ACTIVE"


def test_counter_offers_are_new_immutable_versions(registry: Registry):
    aid = request(registry).json()["id"]
    offered = registry.post(
        f"/v1/agreements/{aid}/offer", "steward", {"terms": terms(columns=["stop_id", "day", "hour", "boardings"])}
    )
    assert offered.json()["terms_version"] == 2
    countered = registry.post(
        f"/v1/agreements/{aid}/counter", "partner", {"terms": terms(columns=["stop_id", "line_id", "day", "boardings"])}
    )
    assert countered.json()["state"] == "REQUESTED" and countered.json()["terms_version"] == 3
    versions = registry.client.get(f"/v1/agreements/{aid}/terms", headers=registry.as_("steward")).json()
    assert [(v["number"], v["party"]) for v in versions] == [
        (1, "consumer"),
        (2, "provider_steward"),
        (3, "consumer"),
    ]
    assert len({v["hash"] for v in versions}) == 3
    assert versions[1]["terms"]["columns"] == ["stop_id", "day", "hour", "boardings"]
    # Terms cannot change the parties.
    other = registry.post(f"/v1/agreements/{aid}/offer", "steward", {"terms": terms(consumer="55208131766522")})
    assert other.status_code == 422 and other.json()["error"] == "terms.parties_changed"


def test_illegal_transitions_and_roles(registry: Registry):
    aid = request(registry).json()["id"]
    response = registry.post(f"/v1/agreements/{aid}/activate", "steward")
    assert response.status_code == 409
    assert response.json() == {
        "error": "agreement.illegal_transition",
        "detail": "cannot activate an agreement in state REQUESTED",
        "state": "REQUESTED",
        "allowed": ["offer", "reject"],
        "request_id": response.json()["request_id"],
    }
    # The consumer cannot offer to itself; another partner does not even see the agreement.
    assert registry.post(f"/v1/agreements/{aid}/offer", "partner").status_code == 403
    assert registry.post(f"/v1/agreements/{aid}/offer", "other-partner").status_code == 404
    assert registry.client.get(f"/v1/agreements/{aid}", headers=registry.as_("other-partner")).status_code == 404
    # Rejecting needs a reason, and only the provider rejects a request.
    assert registry.post(f"/v1/agreements/{aid}/reject", "steward").json()["error"] == "agreement.reason_required"
    assert registry.post(f"/v1/agreements/{aid}/reject", "partner", {"reason": "non"}).status_code == 403
    assert registry.post(f"/v1/agreements/{aid}/expire", "steward").status_code == 400
    rejected = registry.post(f"/v1/agreements/{aid}/reject", "steward", {"reason": "finalité trop large"})
    assert rejected.json()["state"] == "REJECTED"
    assert registry.post(f"/v1/agreements/{aid}/offer", "steward").json()["allowed"] == []
    assert registry.post(f"/v1/agreements/{aid}/bogus", "steward").status_code == 422
    # A territory's analyst may request on behalf of its territory; not on behalf of a partner.
    assert request(registry, who="analyst-besancon", consumer=BESANCON).status_code == 201
    assert request(registry, who="analyst-besancon").json()["error"] == "agreement.not_consumer"


def test_optimistic_concurrency(registry: Registry):
    aid = request(registry).json()["id"]
    stale = registry.post(f"/v1/agreements/{aid}/offer", "steward", **{"If-Match": '"v7"'})
    assert stale.status_code == 412 and stale.json()["error"] == "agreement.version_mismatch"
    assert registry.post(f"/v1/agreements/{aid}/offer", "steward", **{"If-Match": '"v1"'}).status_code == 200


def test_two_concurrent_approvals_exactly_one_wins(registry: Registry):
    aid = request(registry, slug="consommation-eau-menages").json()["id"]
    registry.post(f"/v1/agreements/{aid}/offer", "steward")
    registry.post(f"/v1/agreements/{aid}/accept", "partner")
    database = registry.ctx.database
    dpo = principal("dpo-dijon", roles={DIJON: {Role.DPO}})
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def approve() -> None:
        with database.session() as session:
            agreement = agreements.get_agreement(db_session=session, agreement_id=aid)
            barrier.wait()  # both read version 3 before either writes
            try:
                agreements.transition(
                    db_session=session,
                    agreement=agreement,
                    action=Action.APPROVE,
                    principal=dpo,
                    reason=None,
                    terms=None,
                    expected_version=None,
                    source="test",
                )
                session.commit()
                outcomes.append("won")
            except Conflict as exc:
                session.rollback()
                outcomes.append(exc.code)

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["agreement.concurrent_change", "won"]
    history = registry.client.get(f"/v1/agreements/{aid}/history", headers=registry.as_("dpo")).json()
    assert [h["action"] for h in history].count("approved") == 1


def test_idempotency_keys(registry: Registry):
    body = {"terms": terms()}
    first = registry.post("/v1/agreements", "partner", body, **{"Idempotency-Key": "req-0001-abcdef"})
    again = registry.post("/v1/agreements", "partner", body, **{"Idempotency-Key": "req-0001-abcdef"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    listed = registry.client.get("/v1/agreements", headers=registry.as_("partner")).json()
    assert len(listed) == 1
    other_body = {"terms": terms(columns=["stop_id", "day"])}
    reused = registry.post("/v1/agreements", "partner", other_body, **{"Idempotency-Key": "req-0001-abcdef"})
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency.key_reused"
    aid = first.json()["id"]
    offer1 = registry.post(f"/v1/agreements/{aid}/offer", "steward", **{"Idempotency-Key": "offer-000001"})
    offer2 = registry.post(f"/v1/agreements/{aid}/offer", "steward", **{"Idempotency-Key": "offer-000001"})
    assert offer1.status_code == offer2.status_code == 200 and offer1.json() == offer2.json()


@pytest.mark.parametrize(
    ("changes", "code", "fragment"),
    [
        ({"surprise": 1}, "request.invalid", "Extra inputs"),
        ({"columns": ["stop_id", "ssn"]}, "terms.unknown_column", "ssn"),
        ({"row_filter": [{"column": "nope", "op": "=", "values": [1]}]}, "terms.unknown_column", "nope"),
        ({"slug": "consommation-eau-menages", "aggregation": {"mode": "none"}}, "terms.row_level_personal", "row"),
        (
            {
                "slug": "consommation-eau-menages",
                "aggregation": {"mode": "required", "min_group_size": 1, "forbidden_group_keys": ["meter_id"]},
            },
            "request.invalid",
            "at least 2",
        ),
        (
            {"slug": "consommation-eau-menages", "aggregation": {"mode": "required", "min_group_size": 5}},
            "terms.identifier_group_key",
            "meter_id",
        ),
        (
            {"valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"},
            "terms.validity_in_past",
            "past",
        ),
        ({"valid_until": "2020-01-01T00:00:00"}, "request.invalid", "time zone"),
        (
            {"purpose": {"iri": "https://w3id.org/dpv#Surveillance", "text": "surveiller les usagers du bus"}},
            "request.invalid",
            "unknown purpose",
        ),
        ({"slug": "inconnu"}, "terms.unknown_dataset", "not published"),
        ({"legal_basis": "A6-1-a"}, "request.invalid", "consent_purpose"),
    ],
)
def test_bad_terms_are_refused_and_nothing_is_written(registry: Registry, changes, code, fragment):
    response = request(registry, **changes)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code
    assert fragment in response.text
    assert registry.client.get("/v1/agreements", headers=registry.as_("operator")).json() == []


def test_agreements_expire_by_themselves(registry: Registry):
    now = datetime.now(UTC)
    aid = request(registry, valid_until=(now + timedelta(seconds=3)).isoformat()).json()["id"]
    for who, action in (("steward", "offer"), ("partner", "accept"), ("steward", "activate")):
        assert registry.post(f"/v1/agreements/{aid}/{action}", who).status_code == 200
    eventually(lambda: grant_keys(registry) == {aid}, "the grant")
    eventually(
        lambda: (
            registry.client.get(f"/v1/agreements/{aid}", headers=registry.as_("partner")).json()["state"] == "EXPIRED"
        ),
        "the expiry",
    )
    eventually(lambda: grant_keys(registry) == set(), "the grant deleted at expiry")
    history = registry.client.get(f"/v1/agreements/{aid}/history", headers=registry.as_("partner")).json()
    assert history[-1]["action"] == "expired" and history[-1]["actor"] == "system"


def test_public_register(registry: Registry):
    active = request(registry).json()["id"]
    for who, action in (("steward", "offer"), ("partner", "accept"), ("steward", "activate")):
        registry.post(f"/v1/agreements/{active}/{action}", who)
    request(registry, columns=["stop_id", "day"])  # still negotiating: not in the register
    entries = registry.client.get("/v1/register").json()
    assert [e["agreement_id"] for e in entries] == [active]
    entry = entries[0]
    assert entry["provider_siren"] == DIJON and entry["consumer_name"] == "Mobilab SAS"
    assert entry["purpose_label"] == "Recherche scientifique" and entry["legal_basis"] == "A6-1-e"
    assert "columns" not in entry and "row_filter" not in entry
    text = registry.client.get("/v1/register", headers={"Accept": "text/csv"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["agreement_id"] == active and rows[0]["state"] == "ACTIVE"
    assert registry.client.get("/v1/register.csv", params={"provider": BESANCON}).text.count("\n") == 1


def test_revocation_reaches_a_watcher_across_a_nats_restart(own_nats_server: NatsServer, tmp_path: Path):
    settings, keys = make_registry(own_nats_server.url, f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    with TestClient(create_app(settings)) as client:
        reg = Registry(client=client, keys=keys)
        reg.post(
            "/v1/organisations",
            "operator",
            {"siret": PARTNER, "name": "Mobilab SAS", "contact_email": "contact@mobilab.example"},
        )
        advertise(reg)
        aid = request(reg).json()["id"]
        for who, action in (("steward", "offer"), ("partner", "accept"), ("steward", "activate")):
            assert reg.post(f"/v1/agreements/{aid}/{action}", who).status_code == 200

        async def watch() -> None:
            messaging = Messaging(own_nats_server.url, name="exchange-watcher", declare=False)
            await messaging.start()
            await messaging.wait_ready(10)
            cache = GrantCache(messaging)
            await cache.start()
            try:
                await cache.wait_loaded(10)
                deadline = time.monotonic() + 15
                while cache.get(aid) is None:
                    assert time.monotonic() < deadline, "grant never seen"
                    await asyncio.sleep(0.05)
                own_nats_server.kill()
                revoked = await asyncio.to_thread(
                    reg.post, f"/v1/agreements/{aid}/revoke", "steward", {"reason": "fuite de données"}
                )
                assert revoked.status_code == 200  # accepted while NATS is down
                await asyncio.sleep(0.5)
                own_nats_server.start()
                deadline = time.monotonic() + 20
                while cache.get(aid) is not None or aid in {g.agreement_id for g in cache.grants()}:
                    assert time.monotonic() < deadline, "the revocation never reached the watcher"
                    await asyncio.sleep(0.05)
            finally:
                await cache.stop()
                await messaging.close()

        asyncio.run(watch())
