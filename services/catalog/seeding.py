"""Seed the demo datasets the hosted territories lack (``MAILLAGE_CATALOG_SEED_DEMO=1``), and each territory's
part of the public register when the registry's URL is known."""

from __future__ import annotations

import asyncio
import logging

from sqlmodel import col, select

from catalog import service
from catalog.models import Dataset, KnownTerritory
from catalog.seeds import REGISTER_SLUG, SeedTerritory, demo_datasets, register_dataset
from catalog.service import Publication
from kit.service import ServiceContext

__all__ = ["seed_demo"]

log = logging.getLogger(__name__)
SEED_ACTOR = "demo-seed"


def _seed_territory(ctx: ServiceContext, publication: Publication, siren: str, registry_url: str | None) -> int:
    assert ctx.database is not None
    with ctx.database.unit_of_work() as session:
        known = session.get(KnownTerritory, siren)
        if known is None:
            return -1
        territory = SeedTerritory(siren, known.name, tuple(known.communes), publication.node)
        wanted = demo_datasets(territory)
        if registry_url is not None:
            wanted.append((REGISTER_SLUG, register_dataset(territory, registry_url)))
        existing = set(session.exec(select(Dataset.slug).where(col(Dataset.territory) == siren)).all())
        seeded = 0
        for slug, metadata in wanted:
            if slug in existing:
                continue
            dataset = service.create_dataset(
                db_session=session, territory=siren, slug=slug, metadata=metadata, actor=SEED_ACTOR
            )
            session.flush()
            service.publish_dataset(
                db_session=session, dataset=dataset, actor=SEED_ACTOR, expected_revision=None, publication=publication
            )
            seeded += 1
        return seeded


async def seed_demo(
    ctx: ServiceContext, publication: Publication, *, registry_url: str | None = None, timeout: float = 60.0
) -> None:
    """Publish the demo datasets (and the register, with a registry) that hosted territories lack, once the directory
    names them."""
    pending = list(ctx.settings.territories)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for siren in list(pending):
            seeded = await asyncio.to_thread(_seed_territory, ctx, publication, siren, registry_url)
            if seeded >= 0:
                pending.remove(siren)
                if seeded:
                    log.info("seeded %d demo datasets for territory %s", seeded, siren)
        if pending:
            await asyncio.sleep(0.5)  # the registry has not announced these territories yet
    if pending:
        log.warning("demo seed skipped for %s: the registry never announced them", ", ".join(pending))
