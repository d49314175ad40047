"""DCAT-AP 3 export of published datasets (JSON-LD, Turtle, RDF/XML), paginated with hydra.

The graph passes the official DCAT-AP 3.0.1 SHACL shapes (``shapes.ttl``, ``range.ttl``, ``dcat-ap-SHACL.ttl``)
without inference: every referenced URI carries its explicit class, as ``range.ttl`` checks ``sh:class`` on the data
alone. It is also shaped for the udata and CKAN (ckanext-dcat) harvesters: dataset identity is the dataset URI (also
its ``dct:identifier``), pagination is a ``hydra:PartialCollectionView`` with ``hydra:next``, licences and access
rights are bare URIs (no ``rdfs:label``, which udata would read instead of the URI).

Only metadata is exported: never a field value, nor the Table Schema's ``example`` values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rdflib import OWL, RDF, RDFS, SKOS, XSD, BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCTERMS, FOAF

from contracts.datasets import AccessLevel, DataStatus, PublishedDataset, distribution_formats, parse_wkt_polygon
from contracts.vocabularies import legal_basis_iri

__all__ = [
    "CONTEXT",
    "FORMATS",
    "Page",
    "build_catalog",
    "build_dataset",
    "negotiate",
    "serialize",
]

DCT = DCTERMS
# rdflib's closed DCAT namespace is DCAT 2, without DCAT 3 terms such as dcat:version.
DCAT = Namespace("http://www.w3.org/ns/dcat#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
GSP = Namespace("http://www.opengis.net/ont/geosparql#")
DCATAP = Namespace("http://data.europa.eu/r5r/")
ELI = Namespace("http://data.europa.eu/eli/ontology#")
DPV = Namespace("https://w3id.org/dpv#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")

_EU = "http://publications.europa.eu/resource/authority/"
ACCESS_RIGHT = Namespace(_EU + "access-right/")
FILE_TYPE = Namespace(_EU + "file-type/")
LANGUAGE = Namespace(_EU + "language/")
DATA_THEME_SCHEME = URIRef(_EU + "data-theme")
IANA_MEDIA_TYPE = Namespace("https://www.iana.org/assignments/media-types/")
INSPIRE_LIMITATION = Namespace("http://inspire.ec.europa.eu/metadata-codelist/LimitationsOnPublicAccess/")
INSEE_COMMUNE = Namespace("http://id.insee.fr/geo/commune/")
LOCAL_AUTHORITY = URIRef("http://purl.org/adms/publishertype/LocalAuthority")
GDPR = URIRef("http://data.europa.eu/eli/reg/2016/679/oj")
# udata reads WKT only under the legacy datatype http://www.opengis.net/rdf#wktLiteral, not GeoSPARQL's, but reads
# GeoJSON under this IANA datatype, as ckanext-dcat does: the GeoJSON twin of the bounding box is for the harvesters.
GEOJSON = URIRef("https://www.iana.org/assignments/media-types/application/vnd.geo+json")

FORMATS: dict[str, tuple[str, str]] = {
    "jsonld": ("application/ld+json", "json-ld"),
    "ttl": ("text/turtle", "turtle"),
    "rdf": ("application/rdf+xml", "xml"),
}
"""Export formats: key -> (media type, rdflib serializer). The first one is the default."""

# Media types some clients send for the same formats (udata's negotiation accepts these too). Matched exactly,
# never through a wildcard, so that they cannot bring back a format the client refused with q=0.
_ALIASES = {
    "application/json": "jsonld",
    "application/x-turtle": "ttl",
    "application/xml": "rdf",
    "text/xml": "rdf",
}

_QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")  # RFC 9110 §12.4.2

CONTEXT: dict[str, str] = {
    "dcat": str(DCAT),
    "dcatap": str(DCATAP),
    "dct": str(DCT),
    "dpv": str(DPV),
    "eli": str(ELI),
    "foaf": str(FOAF),
    "gsp": str(GSP),
    "hydra": str(HYDRA),
    "owl": str(OWL),
    "rdfs": str(RDFS),
    "skos": str(SKOS),
    "vcard": str(VCARD),
    "xsd": str(XSD),
}
"""Compact JSON-LD @context: prefixes only, so that every serialization parses back to the same graph."""

# Why data that is not open is withheld, as INSPIRE Directive art. 13(1) reasons (udata's "access type reason").
# Personal data: 13(1)(f), confidentiality of personal data. General-interest and private-territorial-interest data
# come from private operators (public-service delegates, concessionaires, companies) and are shared under agreement
# because of their commercial and industrial secrecy (CRPA L311-6, "secret des affaires"): 13(1)(d). Public data
# kept non-open can only rest on the confidentiality of the public authority's proceedings (CRPA L311-5): 13(1)(a).
_LIMITATION_BY_STATUS = {
    DataStatus.PERSONAL: INSPIRE_LIMITATION.INSPIRE_Directive_Article13_1f,
    DataStatus.GENERAL_INTEREST: INSPIRE_LIMITATION.INSPIRE_Directive_Article13_1d,
    DataStatus.PRIVATE_TERRITORIAL_INTEREST: INSPIRE_LIMITATION.INSPIRE_Directive_Article13_1d,
    DataStatus.PUBLIC: INSPIRE_LIMITATION.INSPIRE_Directive_Article13_1a,
}

_FILES = {
    "CSV": ("csv", FILE_TYPE.CSV, IANA_MEDIA_TYPE["text/csv"]),
    "Parquet": ("parquet", FILE_TYPE.PARQUET, IANA_MEDIA_TYPE["application/vnd.apache.parquet"]),
}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paginated catalogue: ``number`` from 1, ``size`` datasets per page, ``total`` datasets."""

    number: int
    size: int
    total: int

    def __post_init__(self) -> None:
        if self.number < 1 or self.size < 1 or self.total < 0:
            raise ValueError("a page has a number >= 1, a size >= 1 and a total >= 0")

    @property
    def last(self) -> int:
        """Number of the last page (1 for an empty catalogue)."""
        return max(1, -(-self.total // self.size))


def negotiate(accept_header: str | None) -> str | None:
    """The FORMATS key that best matches an Accept header (q-values honoured), or None when none is acceptable."""
    if accept_header is None or not accept_header.strip():
        return next(iter(FORMATS))
    ranges: list[tuple[str, float]] = []
    for item in accept_header.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                # A malformed weight makes the range worthless rather than preferred.
                quality = float(value) if _QVALUE.fullmatch(value.strip()) else 0.0
        if media_range:
            ranges.append((media_range.lower(), quality))
    offers = [(media_type, key, True) for key, (media_type, _) in FORMATS.items()]
    offers += [(media_type, key, False) for media_type, key in _ALIASES.items()]
    best: tuple[float, str] | None = None
    for media_type, key, wildcards in offers:
        quality = _quality(media_type, ranges, wildcards=wildcards)
        # Strictly greater: on a tie the earlier offer (FORMATS order, then aliases) wins.
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, key)
    return best[1] if best else None


def _quality(media_type: str, ranges: list[tuple[str, float]], *, wildcards: bool) -> float:
    # RFC 9110 §12.5.1: the most specific range matching the offer sets its quality.
    kind = media_type.split("/")[0]
    for candidate in (media_type, f"{kind}/*", "*/*") if wildcards else (media_type,):
        matches = [quality for media_range, quality in ranges if media_range == candidate]
        if matches:
            return max(matches)
    return 0.0


def build_catalog(
    datasets: Sequence[PublishedDataset],
    *,
    catalog_uri: str,
    title: str,
    description: str,
    publisher_uri: str,
    publisher_name: str,
    page: Page | None = None,
    page_url: Callable[[int], str] | None = None,
) -> Graph:
    """A dcat:Catalog of ``datasets`` (the datasets of ``page`` when paginated, with its hydra view)."""
    graph = _graph()
    catalog = URIRef(catalog_uri)
    graph.add((catalog, RDF.type, DCAT.Catalog))
    graph.add((catalog, DCT.title, Literal(title, lang="fr")))
    graph.add((catalog, DCT.description, Literal(description, lang="fr")))
    graph.add((catalog, DCT.publisher, _agent(graph, URIRef(publisher_uri), publisher_name)))
    graph.add((catalog, DCT.language, _french(graph)))
    graph.add((catalog, DCAT.themeTaxonomy, DATA_THEME_SCHEME))
    graph.add((DATA_THEME_SCHEME, RDF.type, SKOS.ConceptScheme))
    graph.add((DATA_THEME_SCHEME, DCT.title, Literal("Data theme", lang="en")))
    for dataset in datasets:
        graph.add((catalog, DCAT.dataset, _add_dataset(graph, dataset)))
    for service in set(graph.objects(None, DCAT.accessService)):
        graph.add((catalog, DCAT.service, service))
    if page is not None:
        if page_url is None:
            raise ValueError("a paginated catalogue needs page_url")
        _add_view(graph, catalog, page, page_url)
    return graph


def build_dataset(dataset: PublishedDataset) -> Graph:
    """The DCAT-AP description of one dataset, served when its URI is dereferenced."""
    graph = _graph()
    _add_dataset(graph, dataset)
    return graph


def serialize(graph: Graph, fmt: str) -> bytes:
    """``graph`` in the FORMATS ``fmt`` (KeyError if unknown), UTF-8."""
    _, serializer = FORMATS[fmt]
    if serializer == "json-ld":
        return graph.serialize(format=serializer, context=CONTEXT, encoding="utf-8")
    return graph.serialize(format=serializer, encoding="utf-8")


def _graph() -> Graph:
    graph = Graph(bind_namespaces="core")
    for prefix, namespace in CONTEXT.items():
        graph.bind(prefix, Namespace(namespace))
    return graph


def _base(url: object) -> str:
    # HttpUrl renders a bare host with a trailing slash.
    return str(url).rstrip("/")


def _typed(graph: Graph, uri: URIRef, cls: URIRef) -> URIRef:
    # range.ttl checks sh:class without background ontologies: each referenced URI carries its own type.
    graph.add((uri, RDF.type, cls))
    return uri


def _french(graph: Graph) -> URIRef:
    return _typed(graph, LANGUAGE.FRA, DCT.LinguisticSystem)


def _agent(graph: Graph, uri: URIRef, name: str) -> URIRef:
    graph.add((uri, RDF.type, FOAF.Agent))
    graph.add((uri, FOAF.name, Literal(name, lang="fr")))
    return uri


def _territory(graph: Graph, dataset: PublishedDataset) -> URIRef:
    agent = _agent(
        graph, URIRef(f"{_base(dataset.catalog_url)}/territories/{dataset.territory}"), dataset.publisher_name
    )
    graph.add((agent, DCT.identifier, Literal(dataset.territory)))
    # Publishers are EPCI (intercommunal bodies): ADMS publisher type "local authority".
    graph.add((agent, DCT.type, LOCAL_AUTHORITY))
    graph.add((LOCAL_AUTHORITY, RDF.type, SKOS.Concept))
    graph.add((LOCAL_AUTHORITY, SKOS.prefLabel, Literal("Local Authority", lang="en")))
    return agent


def _add_dataset(graph: Graph, dataset: PublishedDataset) -> URIRef:
    metadata = dataset.metadata
    uri = str(dataset.uri)
    node = URIRef(uri)
    publisher = _territory(graph, dataset)
    graph.add((node, RDF.type, DCAT.Dataset))
    # Harvesters key datasets on dct:identifier (udata) or on the URI (CKAN): both are the same string.
    graph.add((node, DCT.identifier, Literal(uri)))
    graph.add((node, DCT.title, Literal(metadata.title, lang="fr")))
    graph.add((node, DCT.description, Literal(metadata.description, lang="fr")))
    graph.add((node, DCT.publisher, publisher))
    graph.add((node, DCT.language, _french(graph)))
    graph.add((node, DCT.issued, Literal(dataset.published)))
    graph.add((node, DCT.modified, Literal(dataset.modified)))
    # dcat:version is DCAT-AP 3's property; owl:versionInfo is what DCAT-AP 2 harvesters still read.
    graph.add((node, DCAT.version, Literal(metadata.version)))
    graph.add((node, OWL.versionInfo, Literal(metadata.version)))
    for theme in metadata.theme:
        concept = _typed(graph, URIRef(theme.uri), SKOS.Concept)
        graph.add((concept, SKOS.prefLabel, Literal(theme.label, lang="fr")))  # shapes.ttl wants a prefLabel
        graph.add((concept, SKOS.inScheme, DATA_THEME_SCHEME))
        graph.add((node, DCAT.theme, concept))
    for keyword in metadata.keywords:
        graph.add((node, DCAT.keyword, Literal(keyword, lang="fr")))
    graph.add((node, DCAT.contactPoint, _contact(graph, dataset)))
    _add_spatial(graph, node, dataset)
    if metadata.temporal is not None:
        period = BNode()
        graph.add((period, RDF.type, DCT.PeriodOfTime))
        if metadata.temporal.start is not None:
            graph.add((period, DCAT.startDate, Literal(metadata.temporal.start)))
        if metadata.temporal.end is not None:
            graph.add((period, DCAT.endDate, Literal(metadata.temporal.end)))
        graph.add((node, DCT.temporal, period))
    graph.add((node, DCT.accrualPeriodicity, _typed(graph, URIRef(metadata.frequency.uri), DCT.Frequency)))
    if metadata.granularity is not None and metadata.granularity.temporal is not None:
        graph.add((node, DCAT.temporalResolution, Literal(metadata.granularity.temporal, datatype=XSD.duration)))
    if metadata.conforms_to is not None:
        graph.add((node, DCT.conformsTo, _typed(graph, URIRef(str(metadata.conforms_to)), DCT.Standard)))
    provenance = BNode()
    graph.add((provenance, RDF.type, DCT.ProvenanceStatement))
    graph.add((provenance, RDFS.label, Literal(_provenance(dataset), lang="fr")))
    graph.add((node, DCT.provenance, provenance))
    if metadata.legal_basis is not None:
        graph.add((node, DCATAP.applicableLegislation, _typed(graph, GDPR, ELI.LegalResource)))
        graph.add((node, DPV.hasLegalBasis, URIRef(legal_basis_iri(metadata.legal_basis))))
    if metadata.access is AccessLevel.OPEN:
        graph.add((node, DCT.accessRights, _typed(graph, ACCESS_RIGHT.PUBLIC, DCT.RightsStatement)))
        for file_format in distribution_formats(metadata):
            graph.add((node, DCAT.distribution, _file_distribution(graph, dataset, file_format)))
    else:
        graph.add((node, DCT.accessRights, _typed(graph, ACCESS_RIGHT.NON_PUBLIC, DCT.RightsStatement)))
        graph.add((node, DCAT.distribution, _service_distribution(graph, dataset, publisher)))
    return node


def _contact(graph: Graph, dataset: PublishedDataset) -> BNode:
    contact = BNode()
    graph.add((contact, RDF.type, VCARD.Kind))
    graph.add((contact, VCARD.fn, Literal(dataset.metadata.contact_point.name)))
    graph.add((contact, VCARD.hasEmail, URIRef(f"mailto:{dataset.metadata.contact_point.email}")))
    return contact


def _add_spatial(graph: Graph, node: URIRef, dataset: PublishedDataset) -> None:
    spatial = dataset.metadata.spatial
    if spatial.bbox is not None:
        ring = [[lon, lat] for lon, lat in parse_wkt_polygon(spatial.bbox)]
        geojson = json.dumps({"type": "Polygon", "coordinates": [ring]}, separators=(",", ":"))
        # Two locations: dcat:bbox holds one literal per location (shapes.ttl), and WKT (the DCAT-AP 3 form) and
        # GeoJSON (the form udata reads) are both wanted.
        for value, datatype in ((spatial.bbox, GSP.wktLiteral), (geojson, GEOJSON)):
            location = BNode()
            graph.add((location, RDF.type, DCT.Location))
            graph.add((location, DCAT.bbox, Literal(value, datatype=datatype)))
            graph.add((node, DCT.spatial, location))
    for code in spatial.communes:
        graph.add((node, DCT.spatial, _typed(graph, INSEE_COMMUNE[code], DCT.Location)))


def _provenance(dataset: PublishedDataset) -> str:
    hosting = dataset.metadata.hosting
    return (
        f"Publié par {dataset.publisher_name} (SIREN {dataset.territory}), révision {dataset.revision} du catalogue ; "
        f"données hébergées sur le nœud {hosting.node} ({hosting.country})."
    )


def _file_distribution(graph: Graph, dataset: PublishedDataset, file_format: str) -> URIRef:
    metadata = dataset.metadata
    extension, file_type, media_type = _FILES[file_format]
    if metadata.external_csv_url is not None:
        url = URIRef(str(metadata.external_csv_url))
    else:
        exchange = _base(dataset.exchange_url)
        url = URIRef(f"{exchange}/v1/territories/{dataset.territory}/datasets/{dataset.slug}/data.{extension}")
    node = URIRef(f"{dataset.uri}/distributions/{extension}")
    graph.add((node, RDF.type, DCAT.Distribution))
    graph.add((node, DCT.title, Literal(f"{metadata.title} ({file_format})", lang="fr")))
    description = f"Toutes les lignes du jeu de données, au format {file_format}, servies par le nœud qui les héberge."
    graph.add((node, DCT.description, Literal(description, lang="fr")))
    # The exchange serves the file itself: the access URL is the download URL (udata and CKAN want either).
    graph.add((node, DCAT.accessURL, url))
    graph.add((node, DCAT.downloadURL, url))
    graph.add((node, DCT.format, _typed(graph, file_type, DCT.MediaTypeOrExtent)))
    graph.add((node, DCAT.mediaType, _typed(graph, media_type, DCT.MediaType)))
    if metadata.licence is not None:
        graph.add((node, DCT.license, _typed(graph, URIRef(metadata.licence), DCT.LicenseDocument)))
    if metadata.conforms_to is not None:
        graph.add((node, DCT.conformsTo, _typed(graph, URIRef(str(metadata.conforms_to)), DCT.Standard)))
    graph.add((node, DCT.modified, Literal(dataset.modified)))
    return node


def _service_distribution(graph: Graph, dataset: PublishedDataset, publisher: URIRef) -> URIRef:
    metadata = dataset.metadata
    exchange = _base(dataset.exchange_url)
    endpoint = URIRef(f"{exchange}/v1/territories/{dataset.territory}/query")
    # One query service per territory, serving all its datasets that are not open.
    service = URIRef(f"{_base(dataset.catalog_url)}/territories/{dataset.territory}/services/query")
    graph.add((service, RDF.type, DCAT.DataService))
    graph.add((service, DCT.title, Literal(f"Requêtes sous convention — {dataset.publisher_name}", lang="fr")))
    graph.add((service, DCAT.endpointURL, endpoint))
    graph.add((service, DCAT.endpointDescription, URIRef(f"{exchange}/openapi.json")))
    graph.add((service, DCAT.servesDataset, URIRef(str(dataset.uri))))
    graph.add((service, DCT.publisher, publisher))
    graph.add((service, DCT.accessRights, _typed(graph, ACCESS_RIGHT.NON_PUBLIC, DCT.RightsStatement)))
    aggregates = metadata.access is AccessLevel.PROTECTED
    node = URIRef(f"{dataset.uri}/distributions/query")
    graph.add((node, RDF.type, DCAT.Distribution))
    title = "Agrégats sous convention (API)" if aggregates else "Requêtes sous convention (API)"
    graph.add((node, DCT.title, Literal(title, lang="fr")))
    description = (
        "Calculs agrégés seulement, sur le nœud qui héberge la donnée, après accord d'échange."
        if aggregates
        else "Requêtes sur le nœud qui héberge la donnée, après accord d'échange."
    )
    graph.add((node, DCT.description, Literal(description, lang="fr")))
    graph.add((node, DCAT.accessURL, endpoint))
    graph.add((node, DCAT.accessService, service))
    # The Dataset already holds its one dct:accessRights (NON_PUBLIC, maxCount 1 in shapes.ttl): the INSPIRE reason
    # goes on the distribution, which DCAT-AP leaves unconstrained and udata reads as the resource's access rights.
    limitation = _LIMITATION_BY_STATUS[metadata.status]
    graph.add((node, DCT.accessRights, _typed(graph, limitation, DCT.RightsStatement)))
    return node


def _add_view(graph: Graph, catalog: URIRef, page: Page, page_url: Callable[[int], str]) -> None:
    # udata's own export and harvester: the catalogue is a hydra:Collection whose hydra:view is the current page.
    view = URIRef(page_url(page.number))
    graph.add((catalog, RDF.type, HYDRA.Collection))
    graph.add((catalog, HYDRA.totalItems, Literal(page.total)))
    graph.add((catalog, HYDRA.view, view))
    graph.add((view, RDF.type, HYDRA.PartialCollectionView))
    graph.add((view, HYDRA.first, URIRef(page_url(1))))
    graph.add((view, HYDRA.last, URIRef(page_url(page.last))))
    if page.number < page.last:
        graph.add((view, HYDRA.next, URIRef(page_url(page.number + 1))))
    if page.number > 1:
        graph.add((view, HYDRA.previous, URIRef(page_url(page.number - 1))))
