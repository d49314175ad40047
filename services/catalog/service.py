"""Datasets of the territories hosted on this node: revisions, publication, withdrawal, advertisements.

Every change is one transaction: the dataset row, its immutable revision, its history line and, when the
federation must know, the advertisement in the outbox.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlmodel import Session, col, func, select

from catalog.config import CatalogSettings
from catalog.models import Dataset, DatasetAction, DatasetHistory, DatasetRevision, DatasetState, KnownTerritory
from contracts.datasets import DatasetMetadata, PublishedDataset, dataset_id
from contracts.events import DatasetUpsertedV1, DatasetWithdrawnV1
from kit.db import utcnow
from kit.errors import Conflict, NotFound, PreconditionFailed
from kit.outbox import enqueue

__all__ = [
    "Publication",
    "create_dataset",
    "get_dataset",
    "get_revision",
    "history",
    "list_datasets",
    "local_published",
    "metadata_hash",
    "publish_dataset",
    "published_document",
    "publisher_name",
    "revision_metadata",
    "revisions",
    "update_dataset",
    "withdraw_dataset",
]


@dataclass(frozen=True)
class Publication:
    """Where this node's datasets are advertised from."""

    node: str
    catalog_url: str
    exchange_url: str
    uri_base: str
    source: str

    def dataset_uri(self, territory: str, slug: str) -> str:
        return f"{self.uri_base}/datasets/{territory}/{slug}"

    @classmethod
    def of(cls, settings: CatalogSettings, *, source: str) -> Publication:
        return cls(
            node=settings.node_id,
            catalog_url=settings.base_url().rstrip("/"),
            exchange_url=settings.exchange_base_url(),
            uri_base=settings.dataset_uri_base(),
            source=source,
        )


def metadata_hash(metadata: DatasetMetadata) -> str:
    """SHA-256 of the canonical JSON of ``metadata`` (sorted keys, no whitespace)."""
    canonical = json.dumps(metadata.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def publisher_name(*, db_session: Session, territory: str) -> str:
    """The territory's name from the federation directory (its SIREN until the directory has announced it)."""
    known = db_session.get(KnownTerritory, territory)
    return known.name if known is not None else f"Territoire {territory}"


def get_dataset(*, db_session: Session, territory: str, slug: str) -> Dataset:
    """One dataset of a hosted territory; NotFound otherwise."""
    dataset = db_session.get(Dataset, (territory, slug))
    if dataset is None:
        raise NotFound(f"dataset {territory}/{slug} does not exist on this node", code="dataset.not_found")
    return dataset


def get_revision(*, db_session: Session, territory: str, slug: str, revision: int) -> DatasetRevision:
    """One revision of a dataset; NotFound otherwise."""
    row = db_session.get(DatasetRevision, (territory, slug, revision))
    if row is None:
        raise NotFound(f"dataset {territory}/{slug} has no revision {revision}", code="dataset.revision_not_found")
    return row


def revision_metadata(row: DatasetRevision) -> DatasetMetadata:
    return DatasetMetadata.model_validate(row.document)


def list_datasets(*, db_session: Session, territory: str, include_unpublished: bool) -> list[Dataset]:
    """Datasets of a territory: the published ones, or all of them for its stewards."""
    statement = select(Dataset).where(col(Dataset.territory) == territory).order_by(col(Dataset.slug))
    if not include_unpublished:
        statement = statement.where(col(Dataset.state) == DatasetState.PUBLISHED)
    return list(db_session.exec(statement).all())


def revisions(*, db_session: Session, territory: str, slug: str) -> list[DatasetRevision]:
    """Every revision of a dataset, oldest first."""
    statement = (
        select(DatasetRevision)
        .where(col(DatasetRevision.territory) == territory, col(DatasetRevision.slug) == slug)
        .order_by(col(DatasetRevision.revision))
    )
    return list(db_session.exec(statement).all())


def history(*, db_session: Session, territory: str, slug: str) -> list[DatasetHistory]:
    """Who did what to a dataset, oldest first."""
    statement = (
        select(DatasetHistory)
        .where(col(DatasetHistory.territory) == territory, col(DatasetHistory.slug) == slug)
        .order_by(col(DatasetHistory.seq))
    )
    return list(db_session.exec(statement).all())


def _record(
    db_session: Session, dataset: Dataset, action: DatasetAction, actor: str, reason: str | None = None
) -> None:
    last = db_session.exec(
        select(func.max(DatasetHistory.seq)).where(
            col(DatasetHistory.territory) == dataset.territory, col(DatasetHistory.slug) == dataset.slug
        )
    ).one()
    db_session.add(
        DatasetHistory(
            territory=dataset.territory,
            slug=dataset.slug,
            seq=(last or 0) + 1,
            action=action,
            revision=dataset.revision,
            actor=actor,
            reason=reason,
        )
    )


def _check_revision(dataset: Dataset, expected: int | None) -> None:
    if expected is not None and expected != dataset.revision:
        raise PreconditionFailed(
            f"dataset {dataset.id} is at revision {dataset.revision}, not {expected}: reload it and try again",
            code="dataset.revision_mismatch",
            extra={"revision": dataset.revision},
        )


def create_dataset(*, db_session: Session, territory: str, slug: str, metadata: DatasetMetadata, actor: str) -> Dataset:
    """A new draft dataset at revision 1; Conflict when the slug is taken in this territory."""
    dataset_id(territory, slug)
    if db_session.get(Dataset, (territory, slug)) is not None:
        raise Conflict(f"dataset {territory}/{slug} already exists", code="dataset.exists")
    now = utcnow()
    dataset = Dataset(territory=territory, slug=slug, created_at=now, modified_at=now)
    db_session.add(dataset)
    db_session.add(
        DatasetRevision(
            territory=territory,
            slug=slug,
            revision=1,
            document=metadata.model_dump(mode="json", by_alias=True),
            content_hash=metadata_hash(metadata),
            author=actor,
            created_at=now,
        )
    )
    _record(db_session, dataset, DatasetAction.CREATED, actor)
    return dataset


def update_dataset(
    *, db_session: Session, dataset: Dataset, metadata: DatasetMetadata, actor: str, expected_revision: int | None
) -> tuple[Dataset, bool]:
    """A new revision when the metadata changed (published datasets stay advertised at their published revision
    until published again). Returns whether a revision was added."""
    _check_revision(dataset, expected_revision)
    latest = get_revision(
        db_session=db_session, territory=dataset.territory, slug=dataset.slug, revision=dataset.revision
    )
    digest = metadata_hash(metadata)
    if digest == latest.content_hash:
        return dataset, False
    now = utcnow()
    dataset.revision += 1
    dataset.modified_at = now
    db_session.add(
        DatasetRevision(
            territory=dataset.territory,
            slug=dataset.slug,
            revision=dataset.revision,
            document=metadata.model_dump(mode="json", by_alias=True),
            content_hash=digest,
            author=actor,
            created_at=now,
        )
    )
    db_session.add(dataset)
    _record(db_session, dataset, DatasetAction.EDITED, actor)
    return dataset, True


def published_document(
    *, db_session: Session, dataset: Dataset, publication: Publication, revision: int | None = None
) -> PublishedDataset:
    """The advertised form of ``dataset`` at ``revision`` (default: its published revision)."""
    number = revision or dataset.published_revision
    if number is None:
        raise NotFound(f"dataset {dataset.id} is not published", code="dataset.not_published")
    row = get_revision(db_session=db_session, territory=dataset.territory, slug=dataset.slug, revision=number)
    return PublishedDataset(
        id=dataset.id,
        territory=dataset.territory,
        slug=dataset.slug,
        uri=publication.dataset_uri(dataset.territory, dataset.slug),
        publisher_name=publisher_name(db_session=db_session, territory=dataset.territory),
        node=publication.node,
        catalog_url=publication.catalog_url,
        exchange_url=publication.exchange_url,
        revision=number,
        created=dataset.created_at,
        modified=row.created_at,
        published=dataset.published_at or row.created_at,
        metadata=revision_metadata(row),
    )


def publish_dataset(
    *, db_session: Session, dataset: Dataset, actor: str, expected_revision: int | None, publication: Publication
) -> tuple[Dataset, bool]:
    """Advertise the latest revision to the federation. Idempotent: publishing what is published changes nothing."""
    _check_revision(dataset, expected_revision)
    if dataset.state is DatasetState.PUBLISHED and dataset.published_revision == dataset.revision:
        return dataset, False
    metadata = revision_metadata(
        get_revision(db_session=db_session, territory=dataset.territory, slug=dataset.slug, revision=dataset.revision)
    )
    if metadata.hosting.node != publication.node:
        raise Conflict(
            f"the metadata says the data is hosted on node {metadata.hosting.node}, but this node is "
            f"{publication.node}: correct hosting.node before publishing",
            code="dataset.hosting_mismatch",
        )
    dataset.state = DatasetState.PUBLISHED
    dataset.published_revision = dataset.revision
    dataset.published_at = dataset.published_at or utcnow()  # dct:issued: the first publication
    db_session.add(dataset)
    _record(db_session, dataset, DatasetAction.PUBLISHED, actor)
    document = published_document(db_session=db_session, dataset=dataset, publication=publication)
    enqueue(db_session, DatasetUpsertedV1(dataset=document), source=publication.source)
    return dataset, True


def withdraw_dataset(
    *,
    db_session: Session,
    dataset: Dataset,
    actor: str,
    reason: str | None,
    expected_revision: int | None,
    publication: Publication,
) -> Dataset:
    """Stop advertising a published dataset; every federated index drops it."""
    _check_revision(dataset, expected_revision)
    if dataset.state is not DatasetState.PUBLISHED or dataset.published_revision is None:
        raise Conflict(
            f"dataset {dataset.id} is {dataset.state.value}: only a published dataset can be withdrawn",
            code="dataset.not_published",
            extra={"state": dataset.state.value},
        )
    now = utcnow()
    revision = dataset.published_revision
    dataset.state = DatasetState.WITHDRAWN
    dataset.published_revision = None
    db_session.add(dataset)
    _record(db_session, dataset, DatasetAction.WITHDRAWN, actor, reason)
    enqueue(
        db_session,
        DatasetWithdrawnV1(
            territory=dataset.territory,
            slug=dataset.slug,
            node=publication.node,
            revision=revision,
            withdrawn_at=now,
            reason=reason,
        ),
        source=publication.source,
    )
    return dataset


def local_published(*, db_session: Session, territories: list[str], publication: Publication) -> list[PublishedDataset]:
    """Every published dataset of the territories hosted here, by id."""
    statement = (
        select(Dataset)
        .where(col(Dataset.territory).in_(territories), col(Dataset.state) == DatasetState.PUBLISHED)
        .order_by(col(Dataset.territory), col(Dataset.slug))
    )
    return [
        published_document(db_session=db_session, dataset=dataset, publication=publication)
        for dataset in db_session.exec(statement).all()
    ]
