"""Datasets of a mutualised node: lifecycle, revisions, tenant isolation, strict validation, advertisements.

Real nats-server; the catalog on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from catalog.app import create_app
from catalog.config import CatalogSettings
from catalog.seeds import SeedTerritory, demo_datasets
from kit.auth import AuthMethod, Principal, Role
from kit.nats_server import NatsServer
from kit.outbox import OutboxEvent
from kit.testing.factories import bootstrap_key, service_settings

pytestmark = pytest.mark.integration

NORGE, LOUE = "200069540", "200068070"
SAMPLE = Path(__file__).resolve().parents[3] / "contracts/standards/schema-comptage-mobilites/measure"


@dataclass
class Node:
    client: TestClient
    keys: dict[str, str]
    node_id: str

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def principal(subject: str, roles: dict[str, set[Role]]) -> Principal:
    return Principal(
        subject=subject,
        territory_roles={siren: frozenset(r) for siren, r in roles.items()},
        auth_method=AuthMethod.BOOTSTRAP_KEY,
    )


@pytest.fixture
def node(nats_server: NatsServer, database_url: str, tmp_path: Path) -> Iterator[Node]:
    node_id = f"operateur-{uuid.uuid4().hex[:6]}"
    keyring = tmp_path / "keyring.json"
    keys = {
        "steward-norge": bootstrap_key(keyring, principal("steward-norge", {NORGE: {Role.STEWARD}}), kind="stw"),
        "steward-loue": bootstrap_key(keyring, principal("steward-loue", {LOUE: {Role.STEWARD}}), kind="stw"),
        "dpo-norge": bootstrap_key(keyring, principal("dpo-norge", {NORGE: {Role.DPO}}), kind="dpo"),
        "analyst-norge": bootstrap_key(keyring, principal("analyst-norge", {NORGE: {Role.ANALYST}}), kind="prt"),
    }
    settings = service_settings(
        CatalogSettings,
        data_dir=tmp_path,
        nats_url=nats_server.url,
        database_url=database_url,
        node_id=node_id,
        territories=[NORGE, LOUE],
        keyring_file=keyring,
    )
    with TestClient(create_app(settings)) as client:
        yield Node(client=client, keys=keys, node_id=node_id)


def metadata(slug: str, siren: str, node_id: str) -> dict:
    territory = SeedTerritory(siren, "CC de test", ("21021",), node_id)
    return dict(demo_datasets(territory))[slug].model_dump(mode="json", by_alias=True, exclude_none=True)


def create(node: Node, siren: str, slug: str, who: str, body: dict | None = None):
    payload = {"slug": slug, "metadata": body or metadata(slug, siren, node.node_id)}
    return node.client.post(f"/v1/territories/{siren}/datasets", json=payload, headers=node.auth(who))


def outbox_types(node: Node) -> list[str]:
    ctx = node.client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.database.session() as session:
        return [row.type for row in session.exec(select(OutboxEvent).order_by(OutboxEvent.seq))]


def test_lifecycle_revisions_and_history(node: Node):
    response = create(node, NORGE, "comptages-velo", "steward-norge")
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"r1"'
    assert response.headers["location"] == f"/v1/territories/{NORGE}/datasets/comptages-velo"
    created = response.json()
    assert created["state"] == "draft" and created["id"] == f"{NORGE}/comptages-velo"
    assert created["metadata"]["table_schema"]["fields"][0]["name"] == "channel_id"  # the standard schema, as is
    assert outbox_types(node) == []  # drafts are not advertised

    # Drafts are invisible to the public.
    assert node.client.get(f"/v1/territories/{NORGE}/datasets/comptages-velo").status_code == 404
    assert node.client.get(f"/v1/territories/{NORGE}/datasets").json() == []

    published = node.client.post(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/publish",
        headers={**node.auth("steward-norge"), "If-Match": '"r1"'},
    )
    assert published.status_code == 200 and published.json()["state"] == "published"
    assert outbox_types(node) == ["fr.maillage.catalog.dataset.upserted.v1"]
    again = node.client.post(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/publish", headers=node.auth("steward-norge")
    )
    assert again.status_code == 200 and len(outbox_types(node)) == 1  # idempotent

    public = node.client.get(f"/v1/territories/{NORGE}/datasets/comptages-velo")
    assert public.status_code == 200 and public.json()["latest_revision"] is None

    # An edit makes revision 2, a draft; the public still sees revision 1 until it is published.
    edited = metadata("comptages-velo", NORGE, node.node_id)
    edited["title"] = "Comptages vélo et piétons — CC Norge et Tille"
    stale = node.client.put(
        f"/v1/territories/{NORGE}/datasets/comptages-velo",
        json={"metadata": edited},
        headers={**node.auth("steward-norge"), "If-Match": '"r7"'},
    )
    assert stale.status_code == 412 and stale.json()["error"] == "dataset.revision_mismatch"
    response = node.client.put(
        f"/v1/territories/{NORGE}/datasets/comptages-velo",
        json={"metadata": edited},
        headers={**node.auth("steward-norge"), "If-Match": '"r1"'},
    )
    assert response.status_code == 200 and response.json()["revision"] == 2
    unchanged = node.client.put(
        f"/v1/territories/{NORGE}/datasets/comptages-velo",
        json={"metadata": edited},
        headers=node.auth("steward-norge"),
    )
    assert unchanged.json()["revision"] == 2  # same content: no new revision
    assert node.client.get(f"/v1/territories/{NORGE}/datasets/comptages-velo").json()["revision"] == 1
    node.client.post(f"/v1/territories/{NORGE}/datasets/comptages-velo/publish", headers=node.auth("steward-norge"))
    assert (
        node.client.get(f"/v1/territories/{NORGE}/datasets/comptages-velo")
        .json()["metadata"]["title"]
        .startswith("Comptages vélo et piétons")
    )

    withdrawn = node.client.post(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/withdraw",
        json={"reason": "compteurs remplacés"},
        headers=node.auth("steward-norge"),
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"
    twice = node.client.post(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/withdraw", headers=node.auth("steward-norge")
    )
    assert twice.status_code == 409 and twice.json()["error"] == "dataset.not_published"
    assert outbox_types(node)[-1] == "fr.maillage.catalog.dataset.withdrawn.v1"

    revisions = node.client.get(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/revisions", headers=node.auth("dpo-norge")
    ).json()
    assert [r["revision"] for r in revisions] == [1, 2]
    assert all(len(r["content_hash"]) == 64 and r["author"] == "steward-norge" for r in revisions)
    history = node.client.get(
        f"/v1/territories/{NORGE}/datasets/comptages-velo/history", headers=node.auth("steward-norge")
    ).json()
    assert [(h["action"], h["revision"]) for h in history] == [
        ("created", 1),
        ("published", 1),
        ("edited", 2),
        ("published", 2),
        ("withdrawn", 2),
    ]
    assert history[-1]["reason"] == "compteurs remplacés"


def test_tenant_isolation_on_a_mutualised_node(node: Node):
    assert create(node, LOUE, "consommation-eau-menages", "steward-loue").status_code == 201

    # A steward of Norge et Tille neither reads Loue-Lison's drafts nor changes its datasets.
    path = f"/v1/territories/{LOUE}/datasets/consommation-eau-menages"
    assert node.client.get(path, headers=node.auth("steward-norge")).status_code == 404
    listing = node.client.get(f"/v1/territories/{LOUE}/datasets", headers=node.auth("steward-norge")).json()
    assert listing == []
    assert node.client.get(f"{path}/history", headers=node.auth("steward-norge")).status_code == 404
    for method, suffix, body in (
        ("put", "", {"metadata": metadata("consommation-eau-menages", LOUE, node.node_id)}),
        ("post", "/publish", None),
        ("post", "/withdraw", None),
    ):
        response = node.client.request(method, f"{path}{suffix}", json=body, headers=node.auth("steward-norge"))
        assert response.status_code == 403, (suffix, response.text)
        assert response.json()["error"] == "auth.steward_required"
    refused = create(node, LOUE, "fuites-reseau-eau", "steward-norge")
    assert refused.status_code == 403
    # Neither does a DPO or an analyst of Norge et Tille change anything, even in their own territory.
    assert create(node, NORGE, "fuites-reseau-eau", "dpo-norge").status_code == 403
    assert create(node, NORGE, "fuites-reseau-eau", "analyst-norge").status_code == 403
    # Loue-Lison's own steward sees its draft.
    assert node.client.get(path, headers=node.auth("steward-loue")).json()["state"] == "draft"
    # A territory that is not hosted here does not exist here.
    response = node.client.get("/v1/territories/242100410/datasets", headers=node.auth("steward-norge"))
    assert response.status_code == 404 and response.json()["error"] == "territory.not_hosted"
    assert outbox_types(node) == []


@pytest.mark.parametrize(
    "slug",
    ["../etc", "%2e%2e", "velo*", "velo>", "velo%20x", "Velo", "vélo", "a" * 65, "-velo", "velo_2"],
)
def test_bad_slugs_are_refused_and_nothing_is_stored(node: Node, slug: str):
    body = {"slug": slug, "metadata": metadata("fuites-reseau-eau", NORGE, node.node_id)}
    response = node.client.post(f"/v1/territories/{NORGE}/datasets", json=body, headers=node.auth("steward-norge"))
    assert response.status_code == 422
    assert response.json()["error"] == "request.invalid"
    path = node.client.get(f"/v1/territories/{NORGE}/datasets/{slug}", headers=node.auth("steward-norge"))
    assert path.status_code in (404, 422)
    assert node.client.get(f"/v1/territories/{NORGE}/datasets", headers=node.auth("steward-norge")).json() == []


@pytest.mark.parametrize("siren", ["20006954*", "2000695400", "200069541", "../200069540"])
def test_bad_territories_are_refused(node: Node, siren: str):
    response = node.client.get(f"/v1/territories/{siren}/datasets")
    assert response.status_code in (404, 422)
    assert response.json()["error"] in ("territory.invalid", "http.not_found")


def _mutate(base: dict, path: str, value) -> dict:
    document = copy.deepcopy(base)
    target = document
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return document


_DELETE = object()


@pytest.mark.parametrize(
    ("slug", "path", "value", "reason"),
    [
        ("fuites-reseau-eau", "title", "x" * 201, "at most 200"),
        ("fuites-reseau-eau", "licence", "https://example.org/my-licence", "unknown licence"),
        ("fuites-reseau-eau", "licence", _DELETE, "needs a licence"),
        ("fuites-reseau-eau", "spatial.bbox", "POLYGON ((0 0, 1 1, 0 0))", "at least four points"),
        ("fuites-reseau-eau", "spatial.bbox", "POLYGON ((0 0, 200 0, 1 1, 0 0))", "WGS 84"),
        ("fuites-reseau-eau", "spatial.bbox", "LINESTRING (0 0, 1 1)", "single POLYGON"),
        ("fuites-reseau-eau", "spatial.communes", ["2A004", "99999x"], "pattern"),
        ("fuites-reseau-eau", "surprise", True, "Extra inputs"),
        ("fuites-reseau-eau", "theme", ["ROADS"], "Input should be"),
        ("fuites-reseau-eau", "temporal", {"start": "2024-01-02", "end": "2024-01-01"}, "ends before it starts"),
        ("fuites-reseau-eau", "table_schema.fields.0.personal", True, "status must be 'personal'"),
        ("consommation-eau-menages", "access", "open", "must be protected"),
        ("consommation-eau-menages", "legal_basis", _DELETE, "legal basis"),
        ("consommation-eau-menages", "table_schema.fields.0.subject_key", False, "subject_key"),
        ("consommation-eau-menages", "retention", _DELETE, "retention period"),
        ("consommation-eau-menages", "retention.time_column", "volume_m3", "must be a date"),
        ("consommation-eau-menages", "retention.period", "5 years", "ISO 8601"),
    ],
)
def test_incoherent_metadata_is_refused_with_a_reason(node: Node, slug, path, value, reason):
    body = _mutate(metadata(slug, NORGE, node.node_id), path, value)
    response = create(node, NORGE, slug, "steward-norge", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "request.invalid"
    assert reason in response.text
    assert node.client.get(f"/v1/territories/{NORGE}/datasets", headers=node.auth("steward-norge")).json() == []
    assert outbox_types(node) == []


def test_malformed_bodies(node: Node):
    headers = {**node.auth("steward-norge"), "content-type": "application/json"}
    latin1 = json.dumps({"slug": "x", "metadata": {"title": "é"}}, ensure_ascii=False).encode("latin-1")
    response = node.client.post(f"/v1/territories/{NORGE}/datasets", content=latin1, headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "request.malformed_body"
    response = node.client.post(f"/v1/territories/{NORGE}/datasets", content=b"{", headers=headers)
    assert response.status_code == 422 and response.json()["error"] == "request.malformed_json"
    response = node.client.post(f"/v1/territories/{NORGE}/datasets", json={"slug": "x"})
    assert response.status_code == 401


def test_publishing_requires_this_node_as_hosting(node: Node):
    body = metadata("fuites-reseau-eau", NORGE, "autre-noeud")
    assert create(node, NORGE, "fuites-reseau-eau", "steward-norge", body).status_code == 201
    response = node.client.post(
        f"/v1/territories/{NORGE}/datasets/fuites-reseau-eau/publish", headers=node.auth("steward-norge")
    )
    assert response.status_code == 409 and response.json()["error"] == "dataset.hosting_mismatch"


def test_sample_validation_reports_rows_and_fields(node: Node):
    assert create(node, NORGE, "comptages-velo", "steward-norge").status_code == 201
    path = f"/v1/territories/{NORGE}/datasets/comptages-velo/validate"
    good = (SAMPLE / "exemple-valide-eco-compteur.csv").read_bytes()
    report = node.client.post(path, content=good, headers={**node.auth("steward-norge"), "content-type": "text/csv"})
    assert report.status_code == 200, report.text
    assert report.json()["valid"] is True and report.json()["rows_checked"] == 3650
    bad = good.replace(b"2022-01-03T00:00:00+01:00,2022-01-04", b"pas-une-date,2022-01-04")
    bad = bad.decode().replace(",", ";").encode("latin-1")  # Latin-1 and semicolons, as spreadsheets export
    report = node.client.post(path, content=bad, headers={**node.auth("steward-norge"), "content-type": "text/csv"})
    errors = report.json()["errors"]
    assert report.json()["valid"] is False
    assert errors[0]["row"] == 4 and errors[0]["field"] == "start_datetime" and errors[0]["code"] == "type-error"
    assert "pas-une-date" not in report.text  # cell values are never echoed
    empty = node.client.post(path, content=b"", headers=node.auth("steward-norge"))
    assert empty.status_code == 422 and empty.json()["error"] == "sample.empty"
    # The public may not validate against a draft it cannot see.
    assert node.client.post(path, content=good).status_code == 404


def test_advertisement_reaches_the_federated_table(node: Node):
    assert create(node, NORGE, "fuites-reseau-eau", "steward-norge").status_code == 201
    node.client.post(f"/v1/territories/{NORGE}/datasets/fuites-reseau-eau/publish", headers=node.auth("steward-norge"))
    index = node.client.app.state.index  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while index.get(f"{NORGE}/fuites-reseau-eau") is None:
        assert time.monotonic() < deadline, "advertisement never indexed"
        time.sleep(0.05)
    node.client.post(f"/v1/territories/{NORGE}/datasets/fuites-reseau-eau/withdraw", headers=node.auth("steward-norge"))
    while index.get(f"{NORGE}/fuites-reseau-eau") is not None:
        assert time.monotonic() < deadline, "withdrawal never applied"
        time.sleep(0.05)
