"""Two catalog nodes and the registry over a real nats-server: publish on one node, find it on the other; withdraw;
restart and lose a database, and the federated index converges; the DCAT-AP export of what a node knows passes the
official shapes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pyshacl import validate
from rdflib import Graph, URIRef
from rdflib.namespace import DCTERMS, RDF

from catalog.app import create_app as create_catalog
from catalog.config import CatalogSettings
from catalog.seeds import SeedTerritory, demo_datasets
from kit.auth import AuthMethod, Principal, Role
from kit.nats_server import NatsServer
from kit.testing.factories import bootstrap_key, referentiel_path, service_settings
from registry.app import create_app as create_registry
from registry.config import RegistrySettings

pytestmark = pytest.mark.integration

DIJON, NORGE, LOUE = "242100410", "200069540", "200068070"
SHAPES = referentiel_path().parents[2] / "standards" / "dcat-ap-3.0.1"
HYDRA = "http://www.w3.org/ns/hydra/core#"


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Federation:
    def __init__(self, nats: NatsServer, root: Path) -> None:
        self.nats = nats
        self.root = root
        self.suffix = uuid.uuid4().hex[:6]
        self.keyring = root / "keyring.json"
        self.keys = {
            siren: bootstrap_key(
                self.keyring,
                Principal(
                    subject=f"steward-{siren}",
                    territory_roles={siren: frozenset({Role.STEWARD})},
                    auth_method=AuthMethod.BOOTSTRAP_KEY,
                ),
                kind="stw",
            )
            for siren in (DIJON, NORGE, LOUE)
        }
        self.nodes = {"dijon": [DIJON], "operateur": [NORGE, LOUE]}

    def node_id(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def federation_file(self) -> Path:
        epcis = {e["siren"]: e for e in json.loads(referentiel_path().read_text(encoding="utf-8"))}
        path = self.root / "federation.json"
        path.write_text(
            json.dumps(
                {
                    "version": 1,
                    "territories": [
                        {
                            "siren": s,
                            "name": epcis[s]["nom"],
                            "type": epcis[s]["type"],
                            "population": epcis[s]["populationTotale"],
                            "communes": [{"insee": c["insee"]} for c in epcis[s]["communes"]],
                        }
                        for s in (DIJON, NORGE, LOUE)
                    ],
                    "nodes": [
                        {
                            "id": self.node_id(name),
                            "name": name,
                            "territories": sirens,
                            "urls": {
                                "catalog": "http://127.0.0.1:1/",
                                "exchange": "http://127.0.0.1:2/",
                                "consent": "http://127.0.0.1:3/",
                            },
                        }
                        for name, sirens in self.nodes.items()
                    ],
                }
            ),
            encoding="utf-8",
        )
        return path

    @contextmanager
    def registry(self) -> Iterator[TestClient]:
        settings = service_settings(
            RegistrySettings,
            data_dir=self.root / "registry",
            nats_url=self.nats.url,
            federation_file=self.federation_file(),
        )
        with TestClient(create_registry(settings)) as client:
            yield client

    @contextmanager
    def catalog(self, name: str, data_dir: str | None = None) -> Iterator[TestClient]:
        settings = service_settings(
            CatalogSettings,
            data_dir=self.root / (data_dir or name),
            nats_url=self.nats.url,
            node_id=self.node_id(name),
            territories=self.nodes[name],
            keyring_file=self.keyring,
            public_url=f"http://{name}.catalog.test",
        )
        with TestClient(create_catalog(settings)) as client:
            yield client

    def publish(self, client: TestClient, siren: str, slug: str, name: str) -> None:
        territory = SeedTerritory(siren, "territoire", ("21231",), self.node_id(name))
        body = dict(demo_datasets(territory))[slug].model_dump(mode="json", by_alias=True, exclude_none=True)
        auth = {"Authorization": f"Bearer {self.keys[siren]}"}
        created = client.post(f"/v1/territories/{siren}/datasets", json={"slug": slug, "metadata": body}, headers=auth)
        assert created.status_code == 201, created.text
        published = client.post(f"/v1/territories/{siren}/datasets/{slug}/publish", headers=auth)
        assert published.status_code == 200, published.text

    def withdraw(self, client: TestClient, siren: str, slug: str) -> None:
        auth = {"Authorization": f"Bearer {self.keys[siren]}"}
        assert client.post(f"/v1/territories/{siren}/datasets/{slug}/withdraw", headers=auth).status_code == 200


def ids(client: TestClient, **params: object) -> set[str]:
    response = client.get("/v1/search", params={"per_page": 100, **params})
    assert response.status_code == 200, response.text
    return {hit["id"] for hit in response.json()["results"]}


def violations(graph: Graph, shapes: str) -> str | None:
    conforms, _, text = validate(graph, shacl_graph=str(SHAPES / shapes), shacl_graph_format="turtle", inference="none")
    return None if conforms else text


def test_publish_on_one_node_found_on_the_other(own_nats_server: NatsServer, tmp_path: Path):
    fed = Federation(own_nats_server, tmp_path)
    with fed.registry(), fed.catalog("dijon") as dijon, fed.catalog("operateur") as operateur:
        fed.publish(dijon, DIJON, "comptages-velo", "dijon")
        fed.publish(dijon, DIJON, "consommation-eau-menages", "dijon")
        fed.publish(operateur, NORGE, "fuites-reseau-eau", "operateur")
        everything = {f"{DIJON}/comptages-velo", f"{DIJON}/consommation-eau-menages", f"{NORGE}/fuites-reseau-eau"}
        for client in (dijon, operateur):
            eventually(lambda c=client: ids(c) == everything, "every advertisement on both nodes")

        # French full text, accents and plurals folded, with facets.
        assert ids(operateur, q="velos") == {f"{DIJON}/comptages-velo"}
        assert ids(operateur, q="Vélo Comptage") == {f"{DIJON}/comptages-velo"}
        assert ids(operateur, q="eau", territory=NORGE) == {f"{NORGE}/fuites-reseau-eau"}
        assert ids(operateur, status="personal") == {f"{DIJON}/consommation-eau-menages"}
        result = operateur.get("/v1/search", params={"q": "eau"}).json()
        territories = {f["value"]: f for f in result["facets"]["territory"]}
        assert territories[DIJON]["count"] == 1 and territories[DIJON]["label"] == "Dijon Métropole"
        assert {f["value"] for f in result["facets"]["format"]} == {"API", "CSV", "Parquet"}
        page = operateur.get("/v1/search", params={"per_page": 2, "page": 2}).json()
        assert page["total"] == 3 and page["pages"] == 2 and len(page["results"]) == 1
        federated = operateur.get(f"/v1/federation/datasets/{DIJON}/comptages-velo").json()
        assert federated["publisher_name"] == "Dijon Métropole"  # from the registry's directory

        fed.withdraw(dijon, DIJON, "comptages-velo")
        eventually(lambda: f"{DIJON}/comptages-velo" not in ids(operateur), "the withdrawal on the other node")
        assert operateur.get(f"/v1/federation/datasets/{DIJON}/comptages-velo").status_code == 404


def test_federated_index_converges_after_restart_and_after_losing_its_database(
    own_nats_server: NatsServer, tmp_path: Path
):
    fed = Federation(own_nats_server, tmp_path)
    with fed.registry(), fed.catalog("dijon") as dijon:
        fed.publish(dijon, DIJON, "comptages-velo", "dijon")
        with fed.catalog("operateur") as operateur:
            eventually(lambda: ids(operateur) == {f"{DIJON}/comptages-velo"}, "the first advertisement")
        # The operator node is down while Dijon publishes and withdraws.
        fed.publish(dijon, DIJON, "fuites-reseau-eau", "dijon")
        fed.publish(dijon, DIJON, "frequentation-bus", "dijon")
        fed.withdraw(dijon, DIJON, "comptages-velo")
        expected = {f"{DIJON}/fuites-reseau-eau", f"{DIJON}/frequentation-bus"}
        with fed.catalog("operateur") as operateur:
            eventually(lambda: ids(operateur) == expected, "catching up after a restart")
        # A node that lost its database (same node id, empty disk) replays the stream and converges too.
        with fed.catalog("operateur", data_dir="operateur-new-disk") as rebuilt:
            eventually(lambda: ids(rebuilt) == expected, "the replay into a new database")


def test_dcat_export_of_a_node_and_of_the_federation(own_nats_server: NatsServer, tmp_path: Path):
    fed = Federation(own_nats_server, tmp_path)
    with fed.registry(), fed.catalog("dijon") as dijon, fed.catalog("operateur") as operateur:
        for slug in ("comptages-velo", "frequentation-bus", "consommation-eau-menages", "fuites-reseau-eau"):
            fed.publish(dijon, DIJON, slug, "dijon")
        fed.publish(operateur, LOUE, "fuites-reseau-eau", "operateur")
        eventually(lambda: len(ids(operateur)) == 5, "five datasets on the operator node")

        # Content negotiation, extensions, HEAD.
        for accept, media in (
            ("text/turtle", "text/turtle"),
            ("application/rdf+xml", "application/rdf+xml"),
            (None, "application/ld+json"),
            ("*/*", "application/ld+json"),
        ):
            headers = {"Accept": accept} if accept else {}
            got = operateur.get("/federation/catalog", headers=headers)
            assert got.status_code == 200 and got.headers["content-type"].startswith(media)
            head = operateur.head("/federation/catalog", headers=headers)
            assert head.status_code == 200 and head.headers["content-type"].startswith(media) and not head.content
        assert operateur.get("/federation/catalog", headers={"Accept": "image/png"}).status_code == 406
        assert operateur.get("/catalog.xlsx").json()["error"] == "dcat.unknown_format"
        assert dijon.head("/catalog.ttl").headers["content-type"].startswith("text/turtle")

        graph = Graph().parse(data=operateur.get("/federation/catalog.ttl").text, format="turtle")
        datasets = set(graph.subjects(RDF.type, URIRef("http://www.w3.org/ns/dcat#Dataset")))
        assert len(datasets) == 5
        for dataset in datasets:
            assert str(graph.value(dataset, DCTERMS.identifier)) == str(dataset)
        for shapes in ("shapes.ttl", "range.ttl"):
            assert violations(graph, shapes) is None, violations(graph, shapes)

        # The node's own catalogue holds only what it hosts; pages follow hydra.
        node = Graph().parse(data=operateur.get("/catalog.ttl").text, format="turtle")
        assert len(set(node.subjects(RDF.type, URIRef("http://www.w3.org/ns/dcat#Dataset")))) == 1
        first = Graph().parse(data=dijon.get("/catalog.ttl", params={"page_size": 3}).text, format="turtle")
        view = next(first.subjects(RDF.type, URIRef(HYDRA + "PartialCollectionView")))
        assert first.value(view, URIRef(HYDRA + "next")) is not None
        assert first.value(view, URIRef(HYDRA + "previous")) is None
        second = Graph().parse(data=dijon.get("/catalog.ttl", params={"page_size": 3, "page": 2}).text, format="turtle")
        assert len(set(second.subjects(RDF.type, URIRef("http://www.w3.org/ns/dcat#Dataset")))) == 1

        # A dataset URI dereferences to its description; drafts and unknown datasets do not.
        uri = f"/datasets/{DIJON}/consommation-eau-menages"
        described = Graph().parse(data=dijon.get(uri, headers={"Accept": "text/turtle"}).text, format="turtle")
        subject = URIRef(f"http://dijon.catalog.test{uri}")
        assert (subject, RDF.type, URIRef("http://www.w3.org/ns/dcat#Dataset")) in described
        assert dijon.get(f"/datasets/{DIJON}/inconnu").status_code == 404
