"""The consent service against a real nats-server, on SQLite and PostgreSQL: notices, decisions, receipts verified
offline, withdrawal, renewal, expiry, bad input, and the events the exchanges consume (pseudonyms only)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from consent.app import create_app, expire_once
from consent.config import ConsentSettings
from consent.receipts import InvalidReceipt, verify
from contracts.envelope import Envelope
from contracts.events import ConsentChangedV1
from kit.auth import AuthMethod, Principal, Role
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.pseudonyms import pseudonym, territory_key
from kit.testing.factories import bootstrap_key, service_settings

pytestmark = pytest.mark.integration

DIJON, BESANCON = "242100410", "242500361"
PARTNER = "73282932000074"
RESEARCH = "https://w3id.org/dpv#ScientificResearch"
OPTIMISATION = "https://w3id.org/dpv#ServiceOptimisation"
METER = "CPT-21231-0042"  # a water meter number: the identifier citizens give


@dataclass
class Consent:
    client: TestClient
    keys: dict[str, str]
    settings: ConsentSettings

    def call(self, method: str, path: str, who: str = "steward", body: object | None = None):
        return self.client.request(
            method,
            f"/v1/territories/{DIJON}/consent{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.keys[who]}"},
        )

    @property
    def ctx(self):
        return self.client.app.state.ctx  # type: ignore[attr-defined]


@pytest.fixture
def consent(nats_server: NatsServer, database_url: str, tmp_path: Path) -> Iterator[Consent]:
    keyring = tmp_path / "keyring.json"

    def key(subject: str, kind: str, roles: dict[str, set[Role]] | None = None, organisation: str | None = None):
        principal = Principal(
            subject=subject,
            organisation=organisation,
            territory_roles={k: frozenset(v) for k, v in (roles or {}).items()},
            auth_method=AuthMethod.BOOTSTRAP_KEY,
        )
        return bootstrap_key(keyring, principal, kind=kind)

    keys = {
        "steward": key("steward-dijon", "stw", {DIJON: {Role.STEWARD}}),
        "dpo": key("dpo-dijon", "dpo", {DIJON: {Role.DPO}}),
        "besancon": key("steward-besancon", "stw", {BESANCON: {Role.STEWARD}}),
        "partner": key("partner-analyst", "prt", organisation=PARTNER),
    }
    settings = service_settings(
        ConsentSettings,
        data_dir=tmp_path / "consent",
        nats_url=nats_server.url,
        database_url=database_url,
        keyring_file=keyring,
        territories=[DIJON, BESANCON],
    )
    with TestClient(create_app(settings)) as client:
        yield Consent(client, keys, settings)


def notice(version: int = 1, *, renewal: bool = False, purposes: list[str] | None = None) -> dict:
    return {
        "notice_id": "releves-eau",
        "version": version,
        "language": "fr",
        "title": "Partage de vos relevés d'eau pour la recherche",
        "text": f"Texte de la notice, version {version}.",
        "purposes": purposes or [RESEARCH],
        "requires_renewal": renewal,
    }


def decision(identifier: str = METER, *, version: int = 1, **overrides: object) -> dict:
    return {
        "subject_identifier": identifier,
        "purpose": RESEARCH,
        "notice": {"id": "releves-eau", "version": version, "language": "fr"},
        "processing": {
            "data_categories": ["consommation d'eau mensuelle"],
            "controllers": [DIJON],
            "recipients": [PARTNER],
            "retention": "P2Y",
            "storage_location": "FR",
            "jurisdiction": "FR",
            "withdrawal_method": "https://www.metropole-dijon.fr/consentements ou au guichet",
        },
        **overrides,
    }


def jwks(consent: Consent) -> dict:
    return consent.call("GET", "/keys").json()


def test_give_returns_a_receipt_that_verifies_offline_and_no_identifier_is_kept(
    consent: Consent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert consent.call("POST", "/notices", body=notice()).status_code == 201
    assert consent.call("POST", "/notices", body=notice()).status_code == 200  # the same notice: a no-op
    changed = {**notice(), "text": "Un autre texte"}
    assert consent.call("POST", "/notices", body=changed).json()["error"] == "consent.notice_exists"

    given = consent.call("POST", "/records", body=decision())
    assert given.status_code == 201, given.text
    body = given.json()
    key = territory_key(consent.settings.pseudonym_secret.get_secret_value(), DIJON)
    assert body["changed"] is True and body["record"]["state"] == "active"
    assert body["record"]["subject"] == pseudonym(key, METER)
    payload = verify(body["receipt"], jwks(consent))  # offline: the public key is all it takes
    assert payload["event"] == "given" and payload["subject"] == pseudonym(key, METER)
    assert payload["notice"]["sha256"] and payload["processing"]["recipients"] == [PARTNER]
    assert payload["territory"] == DIJON and payload["purpose"] == RESEARCH
    checked = consent.call("POST", "/receipts/verify", body={"receipt": body["receipt"]})
    assert checked.status_code == 200 and checked.json()["payload"]["record_id"] == body["record"]["record_id"]

    # Giving again what is in force is a no-op answered with the same receipt.
    again = consent.call("POST", "/records", body=decision())
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["receipt"] == body["receipt"]

    # The identifier is in no table, no log line.
    with consent.ctx.database.engine.connect() as connection:
        for table in ("consent_record", "consent_event", "consent_notice", "outbox"):
            rows = connection.execute(text(f"SELECT * FROM {table}")).fetchall()
            assert rows and METER not in repr(rows)
    assert METER not in caplog.text


def test_receipts_that_do_not_verify_are_refused_with_a_reason(consent: Consent) -> None:
    consent.call("POST", "/notices", body=notice())
    receipt = consent.call("POST", "/records", body=decision()).json()["receipt"]
    header, payload, signature = receipt.split(".")
    import base64

    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document["state"] = "withdrawn"
    forged_payload = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
    for forged, reason in (
        (f"{header}.{forged_payload}.{signature}", "receipt.bad_signature"),
        ("not-a-receipt", "receipt.malformed"),
        ("e30.e30.AAAA", "receipt.algorithm"),
    ):
        refused = consent.call("POST", "/receipts/verify", body={"receipt": forged})
        assert refused.status_code == 422 and refused.json()["error"] == reason, refused.text
        with pytest.raises(InvalidReceipt):
            verify(forged, jwks(consent))
    # Another territory's key does not verify Dijon's receipt.
    other = consent.client.get(f"/v1/territories/{BESANCON}/consent/keys").json()
    with pytest.raises(InvalidReceipt) as error:
        verify(receipt, other)
    assert error.value.reason == "receipt.unknown_key"


def test_withdrawal_renewal_refusal_and_history(consent: Consent) -> None:
    consent.call("POST", "/notices", body=notice())
    record = consent.call("POST", "/records", body=decision()).json()["record"]
    rid = record["record_id"]
    withdrawn = consent.call("POST", f"/records/{rid}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.json()["record"]["state"] == "withdrawn"
    assert verify(withdrawn.json()["receipt"], jwks(consent))["event"] == "withdrawn"
    again = consent.call("POST", f"/records/{rid}/withdraw")
    assert again.status_code == 200 and again.json()["changed"] is False
    assert consent.call("POST", f"/records/{rid}/renew", body={}).json()["error"] == "consent.not_renewable"
    regiven = consent.call("POST", "/records", body=decision())
    assert regiven.status_code == 200 and regiven.json()["record"]["state"] == "active"

    # A refusal is recorded too; withdrawing what was refused (never given) is a 409, nothing written.
    refused = consent.call("POST", "/records", body=decision("CPT-21231-0007", decision="refused"))
    assert refused.status_code == 201 and refused.json()["record"]["state"] == "refused"
    refused_id = refused.json()["record"]["record_id"]
    not_given = consent.call("POST", f"/records/{refused_id}/withdraw")
    assert not_given.status_code == 409 and not_given.json()["error"] == "consent.not_active"
    never = consent.call("POST", "/withdraw", body={"subject_identifier": "CPT-21231-9999", "purpose": RESEARCH})
    assert never.status_code == 409 and never.json()["error"] == "consent.not_active"
    by_subject = consent.call("POST", "/withdraw", body={"subject_identifier": METER, "purpose": RESEARCH})
    assert by_subject.status_code == 200 and by_subject.json()["record"]["state"] == "withdrawn"

    state = consent.call("POST", "/subjects/lookup", body={"subject_identifier": METER}).json()
    assert state["purposes"][RESEARCH]["state"] == "withdrawn"
    assert [e["event"] for e in state["history"][rid]] == ["given", "withdrawn", "given", "withdrawn"]
    assert consent.call("GET", f"/subjects/{state['subject']}").json() == state
    unknown = consent.call("POST", "/subjects/lookup", body={"subject_identifier": "nobody"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "consent.unknown_subject"


def test_a_new_notice_requiring_renewal_expires_earlier_consents(consent: Consent) -> None:
    consent.call("POST", "/notices", body=notice())
    rid = consent.call("POST", "/records", body=decision()).json()["record"]["record_id"]
    published = consent.call("POST", "/notices", body=notice(2, renewal=True))
    assert published.status_code == 201 and published.json()["consents_expired"] == 1
    record = consent.call("GET", f"/records/{rid}").json()
    assert record["purposes"][RESEARCH]["state"] == "expired"
    assert record["history"][rid][-1]["reason"] == "notice-renewal"
    assert consent.call("POST", "/notices", body=notice(1)).status_code == 200  # the same v1 again: a no-op
    older = consent.call("POST", "/notices", body={**notice(1), "language": "en"})
    assert older.status_code == 409 and older.json()["error"] == "consent.notice_outdated"
    renewed = consent.call(
        "POST", f"/records/{rid}/renew", body={"notice": {"id": "releves-eau", "version": 2, "language": "fr"}}
    )
    assert renewed.status_code == 200 and renewed.json()["record"]["state"] == "active"
    assert renewed.json()["record"]["notice"]["version"] == 2


def test_consents_expire_by_themselves(consent: Consent) -> None:
    consent.call("POST", "/notices", body=notice())
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    rid = consent.call("POST", "/records", body=decision(valid_until=soon)).json()["record"]["record_id"]
    assert expire_once(consent.ctx) == 0
    asyncio.run(asyncio.sleep(1.2))
    assert expire_once(consent.ctx) == 1
    assert consent.call("GET", f"/records/{rid}").json()["purposes"][RESEARCH]["state"] == "expired"
    assert expire_once(consent.ctx) == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (decision(purpose="https://w3id.org/dpv#Espionage"), 422, "request.invalid"),
        (decision(legal_basis="A6-1-e"), 422, "request.invalid"),
        (decision(version=9), 422, "consent.unknown_notice"),
        (decision(purpose=OPTIMISATION), 422, "consent.purpose_not_in_notice"),
        (decision(valid_until="2020-01-01T00:00:00Z"), 422, "consent.already_expired"),
        ({**decision(), "processing": {**decision()["processing"], "recipients": ["123"]}}, 422, "request.invalid"),
        (
            {**decision(), "processing": {**decision()["processing"], "retention": "two years"}},
            422,
            "request.invalid",
        ),
    ],
)
def test_bad_decisions_are_refused_and_nothing_is_written(consent: Consent, body: dict, status: int, code: str) -> None:
    consent.call("POST", "/notices", body=notice())
    response = consent.call("POST", "/records", body=body)
    assert response.status_code == status and response.json()["error"] == code, response.text
    assert METER not in response.text
    with consent.ctx.database.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM consent_record")).scalar() == 0
        assert connection.execute(text("SELECT count(*) FROM consent_event")).scalar() == 0


def test_only_the_territory_keeps_its_records(consent: Consent) -> None:
    assert consent.call("POST", "/notices", "partner", body=notice()).status_code == 403
    assert consent.call("POST", "/notices", "besancon", body=notice()).status_code == 403
    assert consent.call("POST", "/notices", "dpo", body=notice()).status_code == 201
    assert consent.call("POST", "/records", "partner", body=decision()).status_code == 403
    assert consent.call("GET", "/notices", "besancon").status_code == 403


def test_every_change_is_published_for_the_exchanges_with_the_pseudonym_only(consent: Consent) -> None:
    consent.call("POST", "/notices", body=notice())

    async def collect() -> list[Envelope]:
        messaging = Messaging(consent.settings.nats_url, name="consent-test-listener", declare=False)
        await messaging.start()
        await messaging.wait_ready(10)
        seen: list[Envelope] = []
        try:
            assert messaging.nc is not None
            subscription = await messaging.nc.subscribe(f"consent.record.changed.{DIJON}.>")
            rid = (await asyncio.to_thread(consent.call, "POST", "/records", "steward", decision())).json()["record"][
                "record_id"
            ]
            await asyncio.to_thread(consent.call, "POST", f"/records/{rid}/withdraw")
            while len(seen) < 2:
                msg = await subscription.next_msg(timeout=10)
                assert METER.encode() not in msg.data
                seen.append(Envelope.from_bytes(msg.data))
        finally:
            await messaging.close()
        return seen

    events = [ConsentChangedV1.model_validate(e.data) for e in asyncio.run(collect())]
    assert [(e.event, e.active, e.seq) for e in events] == [("given", True, 1), ("withdrawn", False, 2)]
    key = territory_key(consent.settings.pseudonym_secret.get_secret_value(), DIJON)
    assert {e.subject_pseudonym for e in events} == {pseudonym(key, METER)}
