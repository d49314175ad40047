"""Harvestable DCAT-AP export: this node's catalogue, the federation's, and dereferenceable dataset URIs.

``/catalog`` and ``/federation/catalog`` answer JSON-LD, Turtle or RDF/XML by content negotiation, or by extension
(``/catalog.jsonld``, ``.ttl``, ``.rdf``); HEAD answers the same headers. Pages follow hydra (``?page=``), as udata
and CKAN harvesters expect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlmodel import Session, col, func, select

from catalog import dcat, service
from catalog.api import PublicationDep, SlugDep, Territory
from catalog.config import CatalogSettings
from catalog.models import Dataset, DatasetState, FederatedDataset
from catalog.service import Publication
from contracts.datasets import PublishedDataset
from kit.errors import MaillageError, NotFound
from kit.service import ContextDep, SessionDep

__all__ = ["router"]

router = APIRouter(tags=["dcat"])

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
_EXTENSIONS = {"jsonld": "jsonld", "ttl": "ttl", "rdf": "rdf"}


class NotAcceptable(MaillageError):
    status_code = 406
    code = "http.not_acceptable"


def _format(request: Request, extension: str | None) -> str:
    if extension is not None:
        if extension not in _EXTENSIONS:
            raise NotFound(f"no export format .{extension}; use .jsonld, .ttl or .rdf", code="dcat.unknown_format")
        return _EXTENSIONS[extension]
    chosen = dcat.negotiate(request.headers.get("accept"))
    if chosen is None:
        offered = ", ".join(media for media, _ in dcat.FORMATS.values())
        raise NotAcceptable(f"this resource is offered as {offered}")
    return chosen


def _rdf_response(request: Request, graph_bytes: bytes, fmt: str) -> Response:
    media_type = dcat.FORMATS[fmt][0]
    headers = {"Vary": "Accept", "Cache-Control": "public, max-age=60"}
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(graph_bytes))
        return Response(status_code=200, media_type=media_type, headers=headers)
    return Response(graph_bytes, media_type=media_type, headers=headers)


def _get_and_head(path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Register a GET route (documented) and the same handler for HEAD (answering the GET's headers)."""

    def register(handler: Callable[..., Response]) -> Callable[..., Response]:
        router.add_api_route(path, handler, methods=["HEAD"], response_class=Response, include_in_schema=False)
        return router.get(path, response_class=Response)(handler)

    return register


PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="page number, from 1")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="datasets per page")]


def _settings(ctx: ContextDep) -> CatalogSettings:
    assert isinstance(ctx.settings, CatalogSettings)
    return ctx.settings


SettingsDep = Annotated[CatalogSettings, Depends(_settings)]


def _local_page(
    session: Session, settings: CatalogSettings, pub: Publication, number: int, size: int
) -> tuple[list[PublishedDataset], int]:
    where = (col(Dataset.territory).in_(settings.territories), col(Dataset.state) == DatasetState.PUBLISHED)
    total = session.exec(select(func.count()).select_from(Dataset).where(*where)).one()
    rows = session.exec(
        select(Dataset)
        .where(*where)
        .order_by(col(Dataset.territory), col(Dataset.slug))
        .offset((number - 1) * size)
        .limit(size)
    ).all()
    return [service.published_document(db_session=session, dataset=row, publication=pub) for row in rows], total


def _federated_page(session: Session, number: int, size: int) -> tuple[list[PublishedDataset], int]:
    where = col(FederatedDataset.withdrawn).is_(False)
    total = session.exec(select(func.count()).select_from(FederatedDataset).where(where)).one()
    rows = session.exec(
        select(FederatedDataset).where(where).order_by(col(FederatedDataset.id)).offset((number - 1) * size).limit(size)
    ).all()
    return [PublishedDataset.model_validate(row.document) for row in rows if row.document is not None], total


def _catalog(
    request: Request,
    datasets: list[PublishedDataset],
    total: int,
    *,
    path: str,
    extension: str | None,
    number: int,
    size: int,
    settings: SettingsDep,
    title: str,
    description: str,
) -> Response:
    fmt = _format(request, extension)
    base = settings.base_url().rstrip("/")
    suffix = f".{extension}" if extension else ""

    def page_url(n: int) -> str:
        return f"{base}{path}{suffix}?page={n}&page_size={size}"

    graph = dcat.build_catalog(
        datasets,
        catalog_uri=f"{settings.dataset_uri_base()}{path}",
        title=title,
        description=description,
        publisher_uri=f"{settings.dataset_uri_base()}/nodes/{settings.node_id}",
        publisher_name=f"Nœud Maillage {settings.node_id}",
        page=dcat.Page(number=number, size=size, total=total),
        page_url=page_url,
    )
    return _rdf_response(request, dcat.serialize(graph, fmt), fmt)


def _node_catalog(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    pub: PublicationDep,
    extension: str | None,
    page: int,
    page_size: int,
) -> Response:
    datasets, total = _local_page(session, settings, pub, page, page_size)
    return _catalog(
        request,
        datasets,
        total,
        path="/catalog",
        extension=extension,
        number=page,
        size=page_size,
        settings=settings,
        title=f"{settings.catalog_title} — nœud {settings.node_id}",
        description="Jeux de données publiés par les territoires hébergés sur ce nœud de la fédération Maillage.",
    )


def _federation_catalog(
    request: Request, session: SessionDep, settings: SettingsDep, extension: str | None, page: int, page_size: int
) -> Response:
    datasets, total = _federated_page(session, page, page_size)
    return _catalog(
        request,
        datasets,
        total,
        path="/federation/catalog",
        extension=extension,
        number=page,
        size=page_size,
        settings=settings,
        title=f"{settings.catalog_title} — fédération",
        description="Jeux de données publiés par tous les territoires de la fédération Maillage, vus de ce nœud.",
    )


@_get_and_head("/catalog")
def node_catalog(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    pub: PublicationDep,
    page: PageNumber = 1,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    """DCAT-AP catalogue of this node's published datasets (JSON-LD, Turtle or RDF/XML by Accept)."""
    return _node_catalog(request, session, settings, pub, None, page, page_size)


@_get_and_head("/catalog.{extension}")
def node_catalog_file(
    request: Request,
    extension: str,
    session: SessionDep,
    settings: SettingsDep,
    pub: PublicationDep,
    page: PageNumber = 1,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    """DCAT-AP catalogue of this node as .jsonld, .ttl or .rdf."""
    return _node_catalog(request, session, settings, pub, extension, page, page_size)


@_get_and_head("/federation/catalog")
def federation_catalog(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    page: PageNumber = 1,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    """DCAT-AP catalogue of every dataset of the federation known to this node."""
    return _federation_catalog(request, session, settings, None, page, page_size)


@_get_and_head("/federation/catalog.{extension}")
def federation_catalog_file(
    request: Request,
    extension: str,
    session: SessionDep,
    settings: SettingsDep,
    page: PageNumber = 1,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    """DCAT-AP catalogue of the federation as .jsonld, .ttl or .rdf."""
    return _federation_catalog(request, session, settings, extension, page, page_size)


@_get_and_head("/datasets/{siren}/{slug}")
def dataset_uri(
    request: Request, session: SessionDep, territory: Territory, slug: SlugDep, pub: PublicationDep
) -> Response:
    """The stable URI of a published dataset of this node, dereferenced as DCAT-AP."""
    fmt = _format(request, None)
    dataset = service.get_dataset(db_session=session, territory=territory, slug=slug)
    if dataset.state is not DatasetState.PUBLISHED:
        raise NotFound(f"dataset {territory}/{slug} is not published", code="dataset.not_found")
    document = service.published_document(db_session=session, dataset=dataset, publication=pub)
    return _rdf_response(request, dcat.serialize(dcat.build_dataset(document), fmt), fmt)
