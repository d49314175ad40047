"""DCAT-AP 3 export: the official SHACL shapes, round trips, what udata and CKAN harvesters need, negotiation."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import pytest
from pyshacl import validate
from rdflib import RDF, XSD, Graph, Literal, Namespace, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import DCTERMS as DCT
from rdflib.term import BNode

import catalog
from catalog.dcat import FORMATS, Page, build_catalog, build_dataset, negotiate, serialize
from catalog.seeds import SeedTerritory, demo_published
from contracts.datasets import AccessLevel, DataStatus, PublishedDataset

SHAPES = Path(catalog.__file__).resolve().parents[2].parent / "shared" / "standards" / "dcat-ap-3.0.1"
SH = Namespace("http://www.w3.org/ns/shacl#")
# Spelled out here rather than imported, so that a typo in the module's IRIs fails the tests. (dct: is rdflib's
# DefinedNamespace: with a plain Namespace, DCT.title and DCT.format would be str methods.)
DCAT = Namespace("http://www.w3.org/ns/dcat#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
ACCESS_RIGHT = Namespace("http://publications.europa.eu/resource/authority/access-right/")
INSPIRE_LIMITATION = Namespace("http://inspire.ec.europa.eu/metadata-codelist/LimitationsOnPublicAccess/")

# The demo federation: Dijon and Besançon run their own node, the two CCs share the regional operator's one.
TERRITORIES = (
    (SeedTerritory("242100410", "Dijon Métropole", ("21231", "21166"), "dijon"), "dijon"),
    (SeedTerritory("242500361", "CU Grand Besançon Métropole", ("25056",), "besancon"), "besancon"),
    (SeedTerritory("200069540", "CC Norge et Tille", ("21021",), "operateur"), "operateur"),
    (SeedTerritory("200068070", "CC Loue-Lison", ("25434",), "operateur"), "operateur"),
)
FEDERATION = "https://maillage.example"
CATALOG_URI = f"{FEDERATION}/catalog"


def page_url(number: int) -> str:
    return f"{CATALOG_URI}.jsonld?page={number}&page_size=6"


def make_catalog(datasets: list[PublishedDataset], page: Page | None = None) -> Graph:
    return build_catalog(
        datasets,
        catalog_uri=CATALOG_URI,
        title="Catalogue fédéré Maillage",
        description="Les jeux de données des territoires de la fédération Maillage.",
        publisher_uri=f"{FEDERATION}/federation",
        publisher_name="Fédération Maillage",
        page=page,
        page_url=page_url,
    )


@pytest.fixture(scope="module")
def datasets() -> list[PublishedDataset]:
    return [
        dataset
        for territory, node in TERRITORIES
        for dataset in demo_published(
            territory,
            catalog_url=f"https://catalogue.{node}.maillage.example",
            exchange_url=f"https://echange.{node}.maillage.example/",
        )
    ]


@pytest.fixture(scope="module")
def graph(datasets: list[PublishedDataset]) -> Graph:
    return make_catalog(datasets, Page(number=1, size=len(datasets), total=len(datasets)))


def load_shapes(name: str) -> Graph:
    shapes = Graph().parse(SHAPES / name)
    # dcat-ap-SHACL.ttl 3.0.1 names two DataService property shapes it never defines (SEMICeu/DCAT-AP#448), which
    # pyshacl refuses as soon as a dcat:DataService is present. An undefined shape constrains nothing: drop the links.
    for shape, prop in list(shapes.subject_objects(SH.property)):
        if (prop, None, None) not in shapes:
            shapes.remove((shape, SH.property, prop))
    return shapes


def test_the_export_holds_the_sixteen_demo_datasets(graph: Graph, datasets: list[PublishedDataset]) -> None:
    assert len(datasets) == 16
    assert set(graph.objects(URIRef(CATALOG_URI), DCAT.dataset)) == {URIRef(str(d.uri)) for d in datasets}


@pytest.mark.parametrize("shapes_file", ["shapes.ttl", "range.ttl", "dcat-ap-SHACL.ttl"])
def test_the_export_passes_the_official_dcat_ap_shapes(graph: Graph, shapes_file: str) -> None:
    shapes = load_shapes(shapes_file)
    started = time.perf_counter()
    # No inference: range.ttl must find every class asserted in the data itself. No SPARQL-based targets here.
    conforms, _, text = validate(graph, shacl_graph=shapes, inference="none", advanced=False)
    print(f"pyshacl {shapes_file}: {len(graph)} triples in {time.perf_counter() - started:.2f} s")
    assert conforms, text


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_serialization_parses_back_to_the_same_graph(graph: Graph, fmt: str) -> None:
    _, parser = FORMATS[fmt]
    data = serialize(graph, fmt)
    assert isomorphic(Graph().parse(data=data, format=parser), graph)


def test_the_jsonld_carries_a_compact_context(graph: Graph) -> None:
    data = serialize(graph, "jsonld").decode()
    assert '"@context"' in data and '"dcat:Dataset"' in data and '"dct:title"' in data


def test_each_dataset_is_identified_by_its_uri(graph: Graph, datasets: list[PublishedDataset]) -> None:
    for dataset in datasets:
        uri = URIRef(str(dataset.uri))
        assert (uri, RDF.type, DCAT.Dataset) in graph
        assert list(graph.objects(uri, DCT.identifier)) == [Literal(str(dataset.uri))]
        assert Literal(dataset.metadata.title, lang="fr") in graph.objects(uri, DCT.title)
        publisher = graph.value(uri, DCT.publisher)
        assert publisher == URIRef(f"{str(dataset.catalog_url).rstrip('/')}/territories/{dataset.territory}")
        assert graph.value(publisher, DCT.identifier) == Literal(dataset.territory)


def test_open_datasets_have_a_csv_and_a_parquet_download_under_their_licence(
    graph: Graph, datasets: list[PublishedDataset]
) -> None:
    open_data = [d for d in datasets if d.metadata.access is AccessLevel.OPEN]
    assert len(open_data) == 8
    for dataset in open_data:
        uri = URIRef(str(dataset.uri))
        assert list(graph.objects(uri, DCT.accessRights)) == [ACCESS_RIGHT.PUBLIC]
        base = f"https://echange.{dataset.node}.maillage.example/v1/territories/{dataset.territory}/datasets"
        downloads = {
            graph.value(distribution, DCAT.downloadURL): distribution
            for distribution in graph.objects(uri, DCAT.distribution)
        }
        assert set(downloads) == {
            URIRef(f"{base}/{dataset.slug}/data.csv"),
            URIRef(f"{base}/{dataset.slug}/data.parquet"),
        }
        for url, distribution in downloads.items():
            assert graph.value(distribution, DCAT.accessURL) == url
            assert graph.value(distribution, DCT.license) == URIRef(str(dataset.metadata.licence))
            assert graph.value(distribution, DCT.format) is not None
            assert graph.value(distribution, DCAT.mediaType) is not None


def test_a_standard_schema_is_declared_on_the_dataset_and_its_files(
    graph: Graph, datasets: list[PublishedDataset]
) -> None:
    bikes = next(d for d in datasets if d.slug == "comptages-velo")
    schema = URIRef(str(bikes.metadata.conforms_to))
    uri = URIRef(str(bikes.uri))
    assert graph.value(uri, DCT.conformsTo) == schema
    assert all(graph.value(d, DCT.conformsTo) == schema for d in graph.objects(uri, DCAT.distribution))
    assert (schema, RDF.type, DCT.Standard) in graph


def test_data_that_is_not_open_is_non_public_and_reached_through_the_query_service(
    graph: Graph, datasets: list[PublishedDataset]
) -> None:
    restricted = [d for d in datasets if d.metadata.access is not AccessLevel.OPEN]
    assert {d.metadata.status for d in restricted} == {DataStatus.PERSONAL, DataStatus.GENERAL_INTEREST}
    for dataset in restricted:
        uri = URIRef(str(dataset.uri))
        assert list(graph.objects(uri, DCT.accessRights)) == [ACCESS_RIGHT.NON_PUBLIC]
        (distribution,) = graph.objects(uri, DCAT.distribution)
        reason = "13_1f" if dataset.metadata.status is DataStatus.PERSONAL else "13_1d"
        assert list(graph.objects(distribution, DCT.accessRights)) == [
            INSPIRE_LIMITATION[f"INSPIRE_Directive_Article{reason}"]
        ]
        assert graph.value(distribution, DCAT.downloadURL) is None
        exchange = f"https://echange.{dataset.node}.maillage.example"
        endpoint = URIRef(f"{exchange}/v1/territories/{dataset.territory}/query")
        assert graph.value(distribution, DCAT.accessURL) == endpoint
        service = graph.value(distribution, DCAT.accessService)
        assert (service, RDF.type, DCAT.DataService) in graph
        assert graph.value(service, DCAT.endpointURL) == endpoint
        assert graph.value(service, DCAT.endpointDescription) == URIRef(f"{exchange}/openapi.json")
        assert (service, DCAT.servesDataset, uri) in graph
        assert graph.value(service, DCT.accessRights) == ACCESS_RIGHT.NON_PUBLIC
        assert (URIRef(CATALOG_URI), DCAT.service, service) in graph


def test_personal_data_declares_its_gdpr_legal_basis(graph: Graph, datasets: list[PublishedDataset]) -> None:
    water = next(d for d in datasets if d.metadata.status is DataStatus.PERSONAL)
    basis = graph.value(URIRef(str(water.uri)), URIRef("https://w3id.org/dpv#hasLegalBasis"))
    assert basis == URIRef("https://w3id.org/dpv/legal/eu/gdpr#A6-1-e")


def test_coverage_frequency_and_resolution(graph: Graph, datasets: list[PublishedDataset]) -> None:
    bikes = next(d for d in datasets if d.slug == "comptages-velo" and d.territory == "242100410")
    uri = URIRef(str(bikes.uri))
    spatial = set(graph.objects(uri, DCT.spatial))
    communes = {URIRef("http://id.insee.fr/geo/commune/21231"), URIRef("http://id.insee.fr/geo/commune/21166")}
    assert communes <= spatial
    assert all((commune, RDF.type, DCT.Location) in graph for commune in communes)
    boxes = {graph.value(location, DCAT.bbox) for location in spatial - communes}
    wkt = Literal(bikes.metadata.spatial.bbox, datatype=URIRef("http://www.opengis.net/ont/geosparql#wktLiteral"))
    assert wkt in boxes and len(boxes) == 2
    period = graph.value(uri, DCT.temporal)
    assert isinstance(period, BNode) and (period, RDF.type, DCT.PeriodOfTime) in graph
    assert graph.value(period, DCAT.startDate) == Literal(date(2022, 1, 1))
    assert graph.value(period, DCAT.endDate) == Literal(date(2022, 12, 31))
    assert graph.value(uri, DCT.accrualPeriodicity) == URIRef(bikes.metadata.frequency.uri)
    assert graph.value(uri, DCAT.temporalResolution) == Literal("P1D", datatype=XSD.duration)


def test_no_schema_example_value_leaks(graph: Graph, datasets: list[PublishedDataset]) -> None:
    examples = {
        str(field.example)
        for dataset in datasets
        for field in dataset.metadata.table_schema.fields
        if field.example is not None
    }
    assert examples  # the mobility-count schema has some
    literals = {str(o) for o in graph.objects() if isinstance(o, Literal)}
    assert not examples & literals
    # Substrings only for values long enough not to occur by chance (a count of 20 is in every year 2020s).
    texts = [serialize(graph, fmt).decode() for fmt in FORMATS]
    assert not [value for value in examples if len(value) >= 6 and any(value in text for text in texts)]


def test_one_dataset_dereferences_to_its_own_description(graph: Graph, datasets: list[PublishedDataset]) -> None:
    for dataset in datasets:
        alone = build_dataset(dataset)
        assert (URIRef(str(dataset.uri)), RDF.type, DCAT.Dataset) in alone
        assert (None, RDF.type, DCAT.Catalog) not in alone
        ground = [t for t in alone if not any(isinstance(term, BNode) for term in t)]
        assert all(triple in graph for triple in ground)


@pytest.mark.parametrize("number", [1, 2, 3])
def test_pages_link_to_each_other_with_hydra(datasets: list[PublishedDataset], number: int) -> None:
    page = Page(number=number, size=6, total=len(datasets))
    graph = make_catalog(datasets[(number - 1) * 6 : number * 6], page)
    catalog_node = URIRef(CATALOG_URI)
    view = URIRef(page_url(number))
    assert graph.value(catalog_node, HYDRA.totalItems) == Literal(16)
    assert graph.value(catalog_node, HYDRA.view) == view
    assert (view, RDF.type, HYDRA.PartialCollectionView) in graph
    assert graph.value(view, HYDRA.first) == URIRef(page_url(1))
    assert graph.value(view, HYDRA.last) == URIRef(page_url(3))
    expected_next = URIRef(page_url(number + 1)) if number < 3 else None
    expected_previous = URIRef(page_url(number - 1)) if number > 1 else None
    assert graph.value(view, HYDRA.next) == expected_next
    assert graph.value(view, HYDRA.previous) == expected_previous
    assert len(set(graph.objects(catalog_node, DCAT.dataset))) == (6 if number < 3 else 4)


def test_a_page_is_coherent() -> None:
    assert Page(number=1, size=50, total=0).last == 1
    assert Page(number=2, size=50, total=101).last == 3
    with pytest.raises(ValueError):
        Page(number=0, size=50, total=10)
    with pytest.raises(ValueError):
        build_catalog(
            [],
            catalog_uri=CATALOG_URI,
            title="t",
            description="d",
            publisher_uri=FEDERATION,
            publisher_name="p",
            page=Page(number=1, size=10, total=0),
        )


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "jsonld"),
        ("", "jsonld"),
        ("*/*", "jsonld"),
        ("text/turtle", "ttl"),
        ("application/rdf+xml", "rdf"),
        ("application/ld+json", "jsonld"),
        ("application/json", "jsonld"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "rdf"),
        ("application/ld+json;q=0.5, text/turtle;q=0.9", "ttl"),
        ("application/rdf+xml;q=0.8, text/turtle;q=0.8", "ttl"),
        ("text/*", "ttl"),
        ("application/*;q=0.3, text/turtle;q=0.2", "jsonld"),
        ("application/ld+json;q=0, */*;q=0.1", "ttl"),
        ('application/ld+json; profile="http://www.w3.org/ns/json-ld#compacted"', "jsonld"),
        ("TEXT/Turtle; Q=0.7", "ttl"),
        ("text/html", None),
        ("image/png, text/csv", None),
        ("text/turtle;q=0", None),
        ("application/ld+json;q=0, application/rdf+xml;q=0, text/turtle;q=0, */*", None),
        ("text/turtle;q=abc", None),
        ("text/turtle;q=2, application/rdf+xml;q=0.5", "rdf"),
        ("text/turtle;q=0.001", "ttl"),
    ],
)
def test_negotiate_chooses_by_accept_header(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected
