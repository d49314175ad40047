"""HTTP API of the catalog: datasets of the hosted territories, the federation directory and federated search.

Tenancy: a node hosts one or several territories. Stewards of a territory create, edit, publish and withdraw its
datasets; its stewards and DPO read its drafts and history. Published metadata is public. A dataset the caller may
not see answers 404, as if it did not exist, so drafts of a neighbour on a mutualised node stay invisible.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from sqlmodel import col, select

from catalog import service
from catalog.config import CatalogSettings
from catalog.models import Dataset, DatasetState, KnownNode, KnownTerritory
from catalog.samples import validate_sample
from catalog.schemas import (
    DatasetCreate,
    DatasetOut,
    DatasetUpdate,
    HistoryOut,
    HostedTerritory,
    KnownNodeOut,
    KnownTerritoryOut,
    RevisionOut,
    SampleReport,
    WithdrawBody,
)
from catalog.search import SearchIndex, SearchQuery, SearchResult
from catalog.service import Publication
from contracts.datasets import AccessLevel, DataStatus, PublishedDataset
from contracts.vocabularies import DataTheme
from kit.auth import Principal, Role
from kit.errors import BadRequest, Forbidden, NotFound, Unprocessable
from kit.service import ContextDep, CurrentPrincipal, OptionalPrincipal, SessionDep, SlugPath, TerritoryPath

__all__ = ["router"]

router = APIRouter(prefix="/v1")

MAX_SAMPLE_BYTES = 20 * 1024 * 1024


Territory = TerritoryPath
SlugDep = SlugPath


def publication(ctx: ContextDep) -> Publication:
    """Where this node's datasets are advertised from."""
    assert isinstance(ctx.settings, CatalogSettings)
    return Publication.of(ctx.settings, source=ctx.source)


PublicationDep = Annotated[Publication, Depends(publication)]


def _require_steward(principal: Principal, territory: str) -> None:
    if not principal.has_role(territory, Role.STEWARD):
        raise Forbidden(f"only stewards of territory {territory} change its datasets", code="auth.steward_required")


def _reads_unpublished(principal: Principal | None, territory: str) -> bool:
    return principal is not None and (
        principal.has_role(territory, Role.STEWARD) or principal.has_role(territory, Role.DPO)
    )


def _expected_revision(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"').removeprefix("r")
    if not value.isdigit():
        raise BadRequest('If-Match must be an ETag such as "r3"', code="request.bad_if_match")
    return int(value)


IfMatch = Annotated[str | None, Header(description='ETag of the revision the change is based on, e.g. "r3"')]


def _visible(session: SessionDep, territory: str, slug: str, principal: Principal | None) -> tuple[Dataset, bool]:
    """The dataset and whether the caller sees its unpublished state; 404 when the caller may not see it."""
    dataset = service.get_dataset(db_session=session, territory=territory, slug=slug)
    unpublished = _reads_unpublished(principal, territory)
    if not unpublished and dataset.state is not DatasetState.PUBLISHED:
        raise NotFound(f"dataset {territory}/{slug} does not exist on this node", code="dataset.not_found")
    return dataset, unpublished


def _out(session: SessionDep, dataset: Dataset, publication: Publication, *, steward_view: bool) -> DatasetOut:
    shown = dataset.revision if steward_view else dataset.published_revision
    assert shown is not None
    row = service.get_revision(db_session=session, territory=dataset.territory, slug=dataset.slug, revision=shown)
    return DatasetOut(
        id=dataset.id,
        territory=dataset.territory,
        slug=dataset.slug,
        state=dataset.state,
        revision=shown,
        latest_revision=dataset.revision if steward_view else None,
        published_revision=dataset.published_revision,
        uri=publication.dataset_uri(dataset.territory, dataset.slug),
        created=dataset.created_at,
        modified=row.created_at,
        published_at=dataset.published_at,
        metadata=service.revision_metadata(row),
    )


def _etag(response: Response, dataset: Dataset) -> None:
    response.headers["ETag"] = f'"r{dataset.revision}"'


def _changed(session: SessionDep, dataset: Dataset, pub: Publication, response: Response) -> DatasetOut:
    """The steward's view of a dataset just changed in this request, with its new ETag."""
    session.flush()
    _etag(response, dataset)
    return _out(session, dataset, pub, steward_view=True)


@router.get("/territories/{siren}/datasets", response_model=list[DatasetOut], tags=["datasets"])
def list_datasets(
    session: SessionDep, territory: Territory, principal: OptionalPrincipal, pub: PublicationDep
) -> list[DatasetOut]:
    """Datasets of a hosted territory: published ones for everyone, drafts too for its stewards and DPO."""
    unpublished = _reads_unpublished(principal, territory)
    rows = service.list_datasets(db_session=session, territory=territory, include_unpublished=unpublished)
    return [_out(session, row, pub, steward_view=unpublished) for row in rows]


@router.post(
    "/territories/{siren}/datasets",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    tags=["datasets"],
)
def create_dataset(
    body: DatasetCreate,
    session: SessionDep,
    territory: Territory,
    principal: CurrentPrincipal,
    pub: PublicationDep,
    response: Response,
) -> DatasetOut:
    """Describe a new dataset (a draft until published). Stewards of the territory only."""
    _require_steward(principal, territory)
    dataset = service.create_dataset(
        db_session=session, territory=territory, slug=body.slug, metadata=body.metadata, actor=principal.subject
    )
    response.headers["Location"] = f"/v1/territories/{territory}/datasets/{body.slug}"
    return _changed(session, dataset, pub, response)


@router.get("/territories/{siren}/datasets/{slug}", response_model=DatasetOut, tags=["datasets"])
def get_dataset(
    session: SessionDep,
    territory: Territory,
    slug: SlugDep,
    principal: OptionalPrincipal,
    pub: PublicationDep,
    response: Response,
) -> DatasetOut:
    """One dataset: the latest revision for its stewards and DPO, the published one for everyone else."""
    dataset, unpublished = _visible(session, territory, slug, principal)
    _etag(response, dataset)
    return _out(session, dataset, pub, steward_view=unpublished)


@router.put("/territories/{siren}/datasets/{slug}", response_model=DatasetOut, tags=["datasets"])
def update_dataset(
    body: DatasetUpdate,
    session: SessionDep,
    territory: Territory,
    slug: SlugDep,
    principal: CurrentPrincipal,
    pub: PublicationDep,
    response: Response,
    if_match: IfMatch = None,
) -> DatasetOut:
    """Replace the metadata (a new revision; published datasets stay advertised as they were until published)."""
    _require_steward(principal, territory)
    dataset = service.get_dataset(db_session=session, territory=territory, slug=slug)
    dataset, _ = service.update_dataset(
        db_session=session,
        dataset=dataset,
        metadata=body.metadata,
        actor=principal.subject,
        expected_revision=_expected_revision(if_match),
    )
    return _changed(session, dataset, pub, response)


@router.post("/territories/{siren}/datasets/{slug}/publish", response_model=DatasetOut, tags=["datasets"])
def publish_dataset(
    session: SessionDep,
    territory: Territory,
    slug: SlugDep,
    principal: CurrentPrincipal,
    pub: PublicationDep,
    response: Response,
    if_match: IfMatch = None,
) -> DatasetOut:
    """Advertise the latest revision to the federation (idempotent)."""
    _require_steward(principal, territory)
    dataset = service.get_dataset(db_session=session, territory=territory, slug=slug)
    dataset, _ = service.publish_dataset(
        db_session=session,
        dataset=dataset,
        actor=principal.subject,
        expected_revision=_expected_revision(if_match),
        publication=pub,
    )
    return _changed(session, dataset, pub, response)


@router.post("/territories/{siren}/datasets/{slug}/withdraw", response_model=DatasetOut, tags=["datasets"])
def withdraw_dataset(
    session: SessionDep,
    territory: Territory,
    slug: SlugDep,
    principal: CurrentPrincipal,
    pub: PublicationDep,
    response: Response,
    body: WithdrawBody | None = None,
    if_match: IfMatch = None,
) -> DatasetOut:
    """Withdraw a published dataset from the federation; every federated index drops it."""
    _require_steward(principal, territory)
    dataset = service.get_dataset(db_session=session, territory=territory, slug=slug)
    dataset = service.withdraw_dataset(
        db_session=session,
        dataset=dataset,
        actor=principal.subject,
        reason=body.reason if body else None,
        expected_revision=_expected_revision(if_match),
        publication=pub,
    )
    return _changed(session, dataset, pub, response)


@router.get("/territories/{siren}/datasets/{slug}/revisions", response_model=list[RevisionOut], tags=["datasets"])
def list_revisions(
    session: SessionDep, territory: Territory, slug: SlugDep, principal: CurrentPrincipal
) -> list[RevisionOut]:
    """Every revision of a dataset's metadata (stewards and DPO of the territory)."""
    _visible_unpublished(session, territory, slug, principal)
    return [
        RevisionOut(
            revision=row.revision,
            content_hash=row.content_hash,
            author=row.author,
            created_at=row.created_at,
            metadata=service.revision_metadata(row),
        )
        for row in service.revisions(db_session=session, territory=territory, slug=slug)
    ]


@router.get("/territories/{siren}/datasets/{slug}/history", response_model=list[HistoryOut], tags=["datasets"])
def dataset_history(
    session: SessionDep, territory: Territory, slug: SlugDep, principal: CurrentPrincipal
) -> list[HistoryOut]:
    """Who created, edited, published and withdrew the dataset, when and why (stewards and DPO)."""
    _visible_unpublished(session, territory, slug, principal)
    return [
        HistoryOut.model_validate(row, from_attributes=True)
        for row in service.history(db_session=session, territory=territory, slug=slug)
    ]


def _visible_unpublished(session: SessionDep, territory: str, slug: str, principal: Principal) -> Dataset:
    dataset, unpublished = _visible(session, territory, slug, principal)
    if not unpublished:
        raise Forbidden(
            f"revisions and history are for the stewards and DPO of territory {territory}",
            code="auth.steward_or_dpo_required",
        )
    return dataset


@router.post(
    "/territories/{siren}/datasets/{slug}/validate",
    response_model=SampleReport,
    tags=["datasets"],
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def validate_sample_file(
    request: Request,
    session: SessionDep,
    territory: Territory,
    slug: SlugDep,
    principal: OptionalPrincipal,
) -> SampleReport:
    """Check a sample CSV file against the dataset's Table Schema; errors come with row and field."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_SAMPLE_BYTES:
        raise Unprocessable(
            f"samples are limited to {MAX_SAMPLE_BYTES} bytes", code="sample.too_large", status_code=413
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_SAMPLE_BYTES:
            raise Unprocessable(
                f"samples are limited to {MAX_SAMPLE_BYTES} bytes", code="sample.too_large", status_code=413
            )
        chunks.append(chunk)
    dataset, unpublished = _visible(session, territory, slug, principal)
    revision = dataset.revision if unpublished else dataset.published_revision
    assert revision is not None
    row = service.get_revision(db_session=session, territory=territory, slug=slug, revision=revision)
    return validate_sample(service.revision_metadata(row).table_schema, b"".join(chunks))


@router.get("/territories", response_model=list[HostedTerritory], tags=["federation"])
def hosted_territories(session: SessionDep, ctx: ContextDep) -> list[HostedTerritory]:
    """Territories hosted on this node."""
    out = []
    for siren in ctx.settings.territories:
        known = session.get(KnownTerritory, siren)
        out.append(HostedTerritory(siren=siren, name=known.name if known else None))
    return out


@router.get("/federation/territories", response_model=list[KnownTerritoryOut], tags=["federation"])
def federation_territories(session: SessionDep) -> list[KnownTerritoryOut]:
    """Every territory of the federation, as this node learnt them from the registry's events."""
    rows = session.exec(select(KnownTerritory).order_by(col(KnownTerritory.siren))).all()
    return [KnownTerritoryOut.model_validate(row, from_attributes=True) for row in rows]


@router.get("/federation/nodes", response_model=list[KnownNodeOut], tags=["federation"])
def federation_nodes(session: SessionDep) -> list[KnownNodeOut]:
    """Every node of the federation, as this node learnt them from the registry's events."""
    rows = session.exec(select(KnownNode).order_by(col(KnownNode.id))).all()
    return [KnownNodeOut.model_validate(row, from_attributes=True) for row in rows]


def get_index(request: Request) -> SearchIndex:
    index: SearchIndex = request.app.state.index
    return index


IndexDep = Annotated[SearchIndex, Depends(get_index)]


@router.get("/search", response_model=SearchResult, tags=["federation"])
def search(
    index: IndexDep,
    q: Annotated[
        str | None, Query(max_length=500, description="words, all must match (accents and plurals folded)")
    ] = None,
    territory: Annotated[list[str] | None, Query(description="SIREN of the publishing territory")] = None,
    theme: Annotated[list[DataTheme] | None, Query()] = None,
    status: Annotated[list[DataStatus] | None, Query()] = None,
    access: Annotated[list[AccessLevel] | None, Query()] = None,
    licence: Annotated[list[str] | None, Query(description="licence URI")] = None,
    format: Annotated[list[str] | None, Query(description="CSV, Parquet or API")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchResult:
    """Search the federated catalogue (every published dataset of the federation), with facets and pages."""
    query = SearchQuery(
        q=q,
        territory=territory or [],
        theme=theme or [],
        status=status or [],
        access=access or [],
        licence=licence or [],
        format=format or [],
        page=page,
        per_page=per_page,
    )
    return index.search(query)


@router.get("/federation/datasets/{siren}/{slug}", response_model=PublishedDataset, tags=["federation"])
def federated_dataset(index: IndexDep, siren: str, slug: SlugDep) -> PublishedDataset:
    """A published dataset of any territory of the federation, as advertised to this node."""
    dataset = index.get(f"{siren}/{slug}")
    if dataset is None:
        raise NotFound(f"no dataset {siren}/{slug} is advertised in the federation", code="dataset.not_found")
    return dataset
