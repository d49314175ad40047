"""Federated API keys: issued once, listed without secrets, verified for gateways, rotated, revoked, expired.

Real nats-server; the registry on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func
from sqlmodel import select

from contracts.events import event_class
from contracts.identifiers import validate_siret
from kit.auth import AuthMethod, Principal, Role, hash_secret, issue_key, parse_key
from kit.db import Database
from kit.errors import Conflict
from kit.nats_server import NatsServer
from kit.outbox import OutboxEvent
from kit.periodic import run_every
from kit.testing.factories import bootstrap_key, operator_principal, service_settings
from registry import apikeys
from registry.apikeys import ApiKey
from registry.app import create_app
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

ORG = validate_siret("73282932000074")
OTHER_ORG = validate_siret("24210041000015")
DIJON = "242100410"
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)


class Clock:
    """Stands in for ``apikeys.utcnow`` so tests move time instead of sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Registry:
    client: TestClient
    keys: dict[str, str]
    clock: Clock
    statements: list[str] = field(default_factory=list)

    def auth(self, who: str) -> dict[str, str]:
        secret = self.keys.get(who, who)
        return {"Authorization": f"Bearer {secret}"}

    @property
    def database(self) -> Database:
        database = self.client.app.state.ctx.database  # type: ignore[attr-defined]
        assert database is not None
        return database

    def create(self, owner: str = ORG, who: str = "operator", **body: object) -> dict:
        payload = {"name": "ETL prod", "scopes": ["query", "catalog:read"], **body}
        response = self.client.post(f"/v1/organisations/{owner}/apikeys", json=payload, headers=self.auth(who))
        assert response.status_code == 201, response.text
        return response.json()

    def verify(self, key: str, who: str = "gateway"):
        return self.client.post("/v1/apikeys/verify", json={"key": key}, headers=self.auth(who))

    def outbox(self, prefix: str = "fr.maillage.registry.apikey.") -> list[OutboxEvent]:
        with self.database.session() as session:
            rows = session.exec(select(OutboxEvent).order_by(OutboxEvent.seq)).all()  # type: ignore[arg-type]
            return [row for row in rows if row.type.startswith(prefix)]

    def count_keys(self) -> int:
        with self.database.session() as session:
            return int(session.exec(select(func.count()).select_from(ApiKey)).one())

    def sql(self) -> list[str]:
        """Statements run since the last call, the outbox relay's polling left out."""
        seen = [s for s in self.statements if "outbox" not in s.lower()]
        self.statements.clear()
        return seen


def bootstrap(subject: str, **fields: object) -> Principal:
    return Principal(subject=subject, auth_method=AuthMethod.BOOTSTRAP_KEY, **fields)  # type: ignore[arg-type]


@pytest.fixture
def registry(nats_server: NatsServer, database_url: str, tmp_path: Path, monkeypatch) -> Iterator[Registry]:
    keyring = tmp_path / "keyring.json"
    keys = {
        "operator": bootstrap_key(keyring, operator_principal()),
        "gateway": bootstrap_key(keyring, bootstrap("gateway", scopes=frozenset({"apikeys:verify"})), kind="gtw"),
        "other-org": bootstrap_key(
            keyring, bootstrap("other-org", organisation=OTHER_ORG, scopes=frozenset({"apikeys:manage"})), kind="prt"
        ),
        "steward-dijon": bootstrap_key(
            keyring,
            bootstrap("steward-dijon", organisation=DIJON, territory_roles={DIJON: frozenset({Role.STEWARD})}),
            kind="stw",
        ),
        "analyst-dijon": bootstrap_key(
            keyring, bootstrap("analyst-dijon", territory_roles={DIJON: frozenset({Role.ANALYST})}), kind="stw"
        ),
    }
    clock = Clock(T0)
    monkeypatch.setattr(apikeys, "utcnow", clock)
    settings = service_settings(
        RegistrySettings,
        data_dir=tmp_path / "registry",
        nats_url=nats_server.url,
        database_url=database_url,
        keyring_file=keyring,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        reg = Registry(client=client, keys=keys, clock=clock)
        operator = reg.auth("operator")
        for siret, name in ((ORG, "Mobilités Analytiques"), (OTHER_ORG, "Autre Partenaire")):
            body = {"siret": siret, "name": name, "contact_email": "contact@example.org"}
            assert client.post("/v1/organisations", json=body, headers=operator).status_code == 201
        territory = {"name": "Dijon Métropole", "kind": "METRO", "population": 263673, "communes": ["21231"]}
        assert client.put(f"/v1/territories/{DIJON}", json=territory, headers=operator).status_code == 200

        def record(_conn, _cursor, statement, *_args) -> None:
            reg.statements.append(statement)

        event.listen(reg.database.engine, "before_cursor_execute", record)
        yield reg
        event.remove(reg.database.engine, "before_cursor_execute", record)


def test_create_shows_the_secret_once_and_never_again(registry: Registry):
    response = registry.client.post(
        f"/v1/organisations/{ORG}/apikeys",
        json={"name": "ETL prod", "scopes": ["query", "catalog:read", "query"]},
        headers=registry.auth("operator"),
    )
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["secret"]
    assert parse_key(secret).kind == "prt" and secret.startswith("mlg_prt_")
    assert created["lookup_prefix"] == parse_key(secret).lookup_prefix
    assert response.headers["Location"] == f"/v1/organisations/{ORG}/apikeys/{created['id']}"
    assert response.headers["Cache-Control"] == "no-store"
    assert created["scopes"] == ["catalog:read", "query"]  # deduplicated, sorted
    assert created["state"] == "active" and created["created_by"] == "test-operator"
    assert datetime.fromisoformat(created["expires_at"]) == T0 + timedelta(days=90)

    listed = registry.client.get(f"/v1/organisations/{ORG}/apikeys", headers=registry.auth("operator"))
    one = registry.client.get(f"/v1/organisations/{ORG}/apikeys/{created['id']}", headers=registry.auth("operator"))
    for answer in (listed, one):
        assert answer.status_code == 200
        assert secret not in answer.text and hash_secret(secret) not in answer.text
        assert "secret" not in answer.text  # neither the field nor its hash's name
    assert [k["id"] for k in listed.json()] == [created["id"]]
    assert one.json()["hint"] == f"mlg_prt_{created['lookup_prefix']}…"

    with registry.database.session() as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None and row.secret_hash == hash_secret(secret)
        assert secret not in json.dumps(row.model_dump(mode="json"))


def test_verify_answers_the_principal_of_the_key(registry: Registry):
    partner = registry.create(scopes=["query", "agreements:read"])
    answer = registry.verify(partner["secret"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["key_id"] == partner["id"] and body["overlap_until"] is None
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(days=90)
    principal = Principal.model_validate(body["principal"])
    assert principal == Principal(
        subject=f"apikey:{partner['id']}",
        organisation=ORG,
        scopes=frozenset({"query", "agreements:read"}),
        auth_method=AuthMethod.API_KEY,
    )

    territory = registry.create(owner=DIJON, scopes=["query"])
    principal = Principal.model_validate(registry.verify(territory["secret"]).json()["principal"])
    assert principal.organisation == DIJON and principal.territory_roles == {DIJON: frozenset({Role.ANALYST})}

    # Only gateways and operators verify: keys cannot be probed anonymously or with a partner's key.
    anonymous = registry.client.post("/v1/apikeys/verify", json={"key": partner["secret"]})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "auth.missing_credentials"
    probing = registry.verify(partner["secret"], who=partner["secret"])
    assert probing.status_code == 403 and probing.json()["error"] == "auth.verify_forbidden"
    assert registry.verify(partner["secret"], who="operator").status_code == 200

    forged = issue_key("prt").secret  # well formed, never issued
    refused = registry.verify(forged)
    assert refused.status_code == 401 and refused.json()["error"] == "apikey.unknown"


def test_a_malformed_key_is_refused_without_touching_the_database(registry: Registry):
    valid = registry.create()["secret"]
    bad_checksum = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    other_kind = issue_key("adm").secret  # well formed, but not a federated key
    registry.sql()
    for key in ("", "hello", valid[:-3], bad_checksum, valid.replace("mlg_prt_", "mlg_prx_"), other_kind):
        answer = registry.verify(key)
        assert answer.status_code == 401, key
        assert answer.json()["error"] == "apikey.malformed", key
        assert registry.sql() == [], f"{key!r} reached the database"
    assert registry.verify(valid).status_code == 200
    assert any("api_key" in statement for statement in registry.sql())  # the listener does see lookups


def test_a_revoked_key_is_refused_at_once(registry: Registry):
    key = registry.create(scopes=["query", "apikeys:manage"])
    assert registry.verify(key["secret"]).status_code == 200
    url = f"/v1/organisations/{ORG}/apikeys/{key['id']}/revoke"
    revoked = registry.client.post(url, json={"reason": "leaked in a CI log"}, headers=registry.auth("operator"))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoke_reason"] == "leaked in a CI log"
    assert revoked.json()["revoked_by"] == "test-operator"

    refused = registry.verify(key["secret"])
    assert refused.status_code == 401 and refused.json()["error"] == "apikey.revoked"
    # Nor does it authenticate a caller of the registry any more.
    own = registry.client.get(f"/v1/organisations/{ORG}/apikeys", headers=registry.auth(key["secret"]))
    assert own.status_code == 401 and own.json()["error"] == "apikey.revoked"
    assert own.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    again = registry.client.post(url, json={"reason": "another reason"}, headers=registry.auth("operator"))
    assert again.status_code == 200 and again.json()["revoke_reason"] == "leaked in a CI log"
    assert [row.type for row in registry.outbox()].count("fr.maillage.registry.apikey.revoked.v1") == 1


def test_rotation_keeps_both_keys_valid_during_the_overlap_only(registry: Registry):
    old = registry.create(scopes=["query"], expires_at=(T0 + timedelta(days=30)).isoformat())
    url = f"/v1/organisations/{ORG}/apikeys/{old['id']}/rotate"
    rotated = registry.client.post(url, json={"overlap_seconds": 3600}, headers=registry.auth("operator"))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["secret"] != old["secret"] and new["rotated_from"] == old["id"] and new["scopes"] == ["query"]
    assert rotated.headers["Location"].endswith(f"/apikeys/{new['id']}")
    assert datetime.fromisoformat(new["expires_at"]) == T0 + timedelta(days=30)  # the old key's lifetime, from now

    during = registry.verify(old["secret"])
    assert during.status_code == 200
    assert datetime.fromisoformat(during.json()["overlap_until"]) == T0 + timedelta(hours=1)
    assert registry.verify(new["secret"]).status_code == 200
    states = {
        k["id"]: k
        for k in registry.client.get(f"/v1/organisations/{ORG}/apikeys", headers=registry.auth("operator")).json()
    }
    assert states[old["id"]]["state"] == "rotating" and states[old["id"]]["replaced_by"] == new["id"]
    assert states[new["id"]]["state"] == "active"

    again = registry.client.post(url, headers=registry.auth("operator"))
    assert again.status_code == 409 and again.json()["error"] == "apikey.not_active"

    registry.clock.advance(hours=1)
    refused = registry.verify(old["secret"])
    assert refused.status_code == 401 and refused.json()["error"] == "apikey.rotated"
    assert registry.verify(new["secret"]).status_code == 200

    # The default overlap is a day; an overlap beyond a week is refused.
    url = f"/v1/organisations/{ORG}/apikeys/{new['id']}/rotate"
    too_long = registry.client.post(url, json={"overlap_seconds": 8 * 86400}, headers=registry.auth("operator"))
    assert too_long.status_code == 422
    assert registry.client.post(url, headers=registry.auth("operator")).status_code == 201
    overlap_until = registry.verify(new["secret"]).json()["overlap_until"]
    assert datetime.fromisoformat(overlap_until) == registry.clock.now + timedelta(days=1)

    events = [(row.type, row.subject) for row in registry.outbox()]
    assert ("fr.maillage.registry.apikey.rotated.v1", f"registry.apikey.rotated.{old['id']}") in events
    assert ("fr.maillage.registry.apikey.created.v1", f"registry.apikey.created.{new['id']}") in events


def test_an_expired_key_is_refused_and_announced_once(registry: Registry):
    key = registry.create(expires_at=(T0 + timedelta(days=1)).isoformat())
    assert registry.verify(key["secret"]).status_code == 200
    registry.clock.advance(days=1)
    refused = registry.verify(key["secret"])
    assert refused.status_code == 401 and refused.json()["error"] == "apikey.expired"
    one = registry.client.get(f"/v1/organisations/{ORG}/apikeys/{key['id']}", headers=registry.auth("operator"))
    assert one.json()["state"] == "expired"
    url = f"/v1/organisations/{ORG}/apikeys/{key['id']}/rotate"
    assert registry.client.post(url, headers=registry.auth("operator")).status_code == 409

    # A revoked key that expires is not announced twice; a rotated key past its overlap neither.
    revoked = registry.create(expires_at=(registry.clock.now + timedelta(days=1)).isoformat())
    url = f"/v1/organisations/{ORG}/apikeys/{revoked['id']}/revoke"
    registry.client.post(url, json={"reason": "no longer needed"}, headers=registry.auth("operator"))
    registry.clock.advance(days=2)

    with registry.database.unit_of_work() as session:
        assert apikeys.sweep_expired(db_session=session, source="urn:maillage:test:registry") == 1
    with registry.database.unit_of_work() as session:
        assert apikeys.sweep_expired(db_session=session, source="urn:maillage:test:registry") == 0
    expired = [row for row in registry.outbox() if row.type == "fr.maillage.registry.apikey.expired.v1"]
    assert [row.subject for row in expired] == [f"registry.apikey.expired.{key['id']}"]


def test_last_used_is_written_at_most_once_a_minute(registry: Registry):
    key = registry.create()
    get = f"/v1/organisations/{ORG}/apikeys/{key['id']}"
    assert registry.client.get(get, headers=registry.auth("operator")).json()["last_used_at"] is None

    def updates() -> int:
        return sum(s.lstrip().upper().startswith("UPDATE API_KEY") for s in registry.sql())

    registry.sql()
    assert registry.verify(key["secret"]).status_code == 200
    assert updates() == 1
    registry.clock.advance(seconds=30)
    for _ in range(3):
        assert registry.verify(key["secret"]).status_code == 200
    assert updates() == 0
    assert (
        datetime.fromisoformat(registry.client.get(get, headers=registry.auth("operator")).json()["last_used_at"]) == T0
    )

    registry.clock.advance(seconds=31)
    assert registry.verify(key["secret"]).status_code == 200
    assert updates() == 1
    last = registry.client.get(get, headers=registry.auth("operator")).json()["last_used_at"]
    assert datetime.fromisoformat(last) == T0 + timedelta(seconds=61)


def test_events_carry_the_key_but_never_its_secret(registry: Registry):
    key = registry.create(scopes=["query"])
    url = f"/v1/organisations/{ORG}/apikeys/{key['id']}"
    new = registry.client.post(f"{url}/rotate", json={"overlap_seconds": 60}, headers=registry.auth("operator")).json()
    registry.client.post(f"{url}/revoke", json={"reason": "rotation done"}, headers=registry.auth("operator"))
    registry.clock.advance(days=200)
    with registry.database.unit_of_work() as session:
        apikeys.sweep_expired(db_session=session, source="urn:maillage:test:registry")

    rows = registry.outbox()
    assert [row.type.split(".")[-2] for row in rows] == ["created", "created", "rotated", "revoked", "expired"]
    for row in rows:
        for secret in (key["secret"], new["secret"]):
            assert secret.encode() not in row.payload and hash_secret(secret).encode() not in row.payload
            assert parse_key(secret).secret[8:].encode() not in row.payload  # not even the random part
        envelope = json.loads(row.payload)
        data = event_class(envelope["type"]).model_validate(envelope["data"])  # the committed contract parses it
        assert data.subject() == row.subject and envelope["subject"] == f"apikey/{envelope['data']['key_id']}"
        assert envelope["data"]["owner"] == ORG
    revoked = json.loads(rows[3].payload)["data"]
    assert revoked["reason"] == "rotation done" and revoked["lookup_prefix"] == key["lookup_prefix"]


def test_who_may_manage_keys(registry: Registry):
    partner = registry.create(scopes=["apikeys:manage", "query"])  # an admin key the operator gives the partner
    own = registry.auth(partner["secret"])
    base = f"/v1/organisations/{ORG}/apikeys"

    # The partner manages its own keys with its key, within the scopes the key holds.
    assert registry.client.get(base, headers=own).status_code == 200
    made = registry.client.post(base, json={"name": "batch", "scopes": ["query"]}, headers=own)
    assert made.status_code == 201 and made.json()["created_by"] == f"apikey:{partner['id']}"
    escalation = registry.client.post(base, json={"name": "batch", "scopes": ["agreements:write"]}, headers=own)
    assert escalation.status_code == 403 and escalation.json()["error"] == "apikey.scope_escalation"
    rotated = registry.client.post(f"{base}/{made.json()['id']}/rotate", headers=own)
    assert rotated.status_code == 201

    # Another organisation's member (even with apikeys:manage) cannot see nor touch them.
    for who in ("other-org", "analyst-dijon", "gateway"):
        assert registry.client.get(base, headers=registry.auth(who)).status_code == 403, who
        revoke = registry.client.post(
            f"{base}/{partner['id']}/revoke", json={"reason": "hostile"}, headers=registry.auth(who)
        )
        assert revoke.status_code == 403 and revoke.json()["error"] == "auth.apikey_manager_required", who
    assert registry.client.get(f"/v1/organisations/{OTHER_ORG}/apikeys", headers=own).status_code == 403
    assert registry.client.get(base).status_code == 401

    # A key without apikeys:manage cannot manage, not even its own owner's keys.
    query_only = registry.auth(made.json()["secret"])
    assert registry.client.get(base, headers=query_only).status_code == 403

    # A territory's steward manages the territory's keys; its analysts do not.
    steward = registry.create(owner=DIJON, who="steward-dijon", scopes=["query", "agreements:write"])
    assert steward["owner"] == DIJON
    analyst = registry.client.get(f"/v1/organisations/{DIJON}/apikeys", headers=registry.auth("analyst-dijon"))
    assert analyst.status_code == 403
    assert registry.client.get(base, headers=registry.auth("steward-dijon")).status_code == 403


def test_unknown_owners_and_keys(registry: Registry):
    key = registry.create()
    operator = registry.auth("operator")
    unknown_siret = registry.client.get("/v1/organisations/54205118000066/apikeys", headers=operator)
    assert unknown_siret.status_code == 404 and unknown_siret.json()["error"] == "organisation.not_found"
    unknown_siren = registry.client.get("/v1/organisations/200069540/apikeys", headers=operator)
    assert unknown_siren.status_code == 404 and unknown_siren.json()["error"] == "territory.not_found"
    created = registry.client.post(
        "/v1/organisations/200069540/apikeys", json={"name": "x", "scopes": ["query"]}, headers=operator
    )
    assert created.status_code == 404
    bad_luhn = registry.client.get("/v1/organisations/242100411/apikeys", headers=operator)
    assert bad_luhn.status_code == 422 and bad_luhn.json()["error"] == "apikey.invalid_owner"
    assert registry.client.get("/v1/organisations/abc/apikeys", headers=operator).status_code == 422

    missing = registry.client.get(
        f"/v1/organisations/{ORG}/apikeys/00000000-0000-4000-8000-000000000000", headers=operator
    )
    assert missing.status_code == 404 and missing.json()["error"] == "apikey.not_found"
    elsewhere = registry.client.get(f"/v1/organisations/{OTHER_ORG}/apikeys/{key['id']}", headers=operator)
    assert elsewhere.status_code == 404  # a key is only reachable under its owner


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "x", "scopes": ["query", "root"]}, "request.invalid"),
        ({"name": "x", "scopes": ["apikeys:verify"]}, "request.invalid"),  # gateways' scope is not issuable
        ({"name": "x", "scopes": []}, "request.invalid"),
        ({"name": "x" * 101, "scopes": ["query"]}, "request.invalid"),
        ({"name": "bad\nname", "scopes": ["query"]}, "request.invalid"),
        ({"name": "x", "scopes": ["query"], "owner": ORG}, "request.invalid"),
        ({"name": "x", "scopes": ["query"], "expires_at": "2031-01-01T00:00:00"}, "request.invalid"),  # no zone
        ({"name": "x", "scopes": ["query"], "expires_at": "2029-12-31T00:00:00Z"}, "apikey.invalid_expiry"),
        ({"name": "x", "scopes": ["query"], "expires_at": "2031-02-05T12:00:01Z"}, "apikey.invalid_expiry"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(registry: Registry, body, code):
    keys, events = registry.count_keys(), len(registry.outbox(prefix=""))
    answer = registry.client.post(f"/v1/organisations/{ORG}/apikeys", json=body, headers=registry.auth("operator"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == code and answer.json()["detail"]
    assert registry.count_keys() == keys and len(registry.outbox(prefix="")) == events


def test_an_owner_holds_a_bounded_number_of_usable_keys(registry: Registry, monkeypatch):
    monkeypatch.setattr(apikeys, "MAX_ACTIVE_KEYS", 2)
    first, _ = registry.create(), registry.create()
    base = f"/v1/organisations/{ORG}/apikeys"
    full = registry.client.post(base, json={"name": "x", "scopes": ["query"]}, headers=registry.auth("operator"))
    assert full.status_code == 409 and full.json()["error"] == "apikey.limit_reached"
    revoke = registry.client.post(
        f"{base}/{first['id']}/revoke", json={"reason": "make room"}, headers=registry.auth("operator")
    )
    assert revoke.status_code == 200
    registry.create()
    # Another owner is not affected.
    registry.create(owner=OTHER_ORG)


def test_the_longest_lifetime_is_accepted(registry: Registry):
    key = registry.create(expires_at=(T0 + apikeys.MAX_LIFETIME).isoformat())
    assert datetime.fromisoformat(key["expires_at"]) == T0 + timedelta(days=400)


async def test_the_expiry_sweeper_runs_in_the_background(database: Database, monkeypatch):
    clock = Clock(T0)
    monkeypatch.setattr(apikeys, "utcnow", clock)
    with database.unit_of_work() as session:
        key, _ = apikeys.create_key(
            db_session=session,
            owner=ORG,
            name="short",
            scopes=["query"],
            expires_at=T0 + timedelta(minutes=5),
            actor="test",
            source="urn:maillage:test:registry",
        )
    clock.advance(minutes=5)
    sweep = partial(apikeys.sweep_expired_keys, database, source="urn:maillage:test:registry")
    task = asyncio.create_task(run_every(0.05, sweep, what="API key expiry sweep"))
    try:
        for _ in range(100):
            with database.session() as session:
                row = session.get(ApiKey, key.id)
                if row is not None and row.expiry_announced_at is not None:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the sweeper did not announce the expiry")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with database.session() as session:
        types = [row.type for row in session.exec(select(OutboxEvent)).all()]
    assert types.count("fr.maillage.registry.apikey.expired.v1") == 1


def test_of_two_concurrent_rotations_exactly_one_wins(database: Database, monkeypatch):
    monkeypatch.setattr(apikeys, "utcnow", Clock(T0))
    source = "urn:maillage:test:registry"
    with database.unit_of_work() as session:
        key, _ = apikeys.create_key(
            db_session=session, owner=ORG, name="k", scopes=["query"], expires_at=None, actor="t", source=source
        )
    first_holds_its_lock = threading.Event()

    def first() -> str:
        with database.unit_of_work() as session:
            _, new, _ = apikeys.rotate_key(db_session=session, owner=ORG, key_id=key.id, actor="a", source=source)
            first_holds_its_lock.set()
            time.sleep(0.3)  # the second rotation reads the key as active meanwhile, then waits for this commit
            return new.id

    def second() -> str:
        assert first_holds_its_lock.wait(10)
        with database.unit_of_work() as session:
            _, new, _ = apikeys.rotate_key(db_session=session, owner=ORG, key_id=key.id, actor="b", source=source)
            return new.id

    with ThreadPoolExecutor(2) as pool:
        winner, loser = pool.submit(first), pool.submit(second)
        new_id = winner.result(timeout=20)
        with pytest.raises(Conflict) as refused:
            loser.result(timeout=20)
    assert refused.value.code == "apikey.not_active"
    with database.session() as session:
        assert session.get(ApiKey, key.id).replaced_by == new_id  # type: ignore[union-attr]
        rotations = session.exec(select(ApiKey).where(ApiKey.rotated_from == key.id)).all()  # type: ignore[arg-type]
        assert [row.id for row in rotations] == [new_id]
        types = [row.type for row in session.exec(select(OutboxEvent)).all()]
    assert types.count("fr.maillage.registry.apikey.rotated.v1") == 1
