"""Seed the demo datasets of the hosted territories that have none yet (``MAILLAGE_CATALOG_SEED_DEMO=1``)."""

from __future__ import annotations

import asyncio
import logging

from sqlmodel import col, func, select

from catalog import service
from catalog.models import Dataset, KnownTerritory
from catalog.seeds import SeedTerritory, demo_datasets
from catalog.service import Publication
from kit.service import ServiceContext

__all__ = ["seed_demo"]

log = logging.getLogger(__name__)
SEED_ACTOR = "demo-seed"


def _seed_territory(ctx: ServiceContext, publication: Publication, siren: str) -> int:
    assert ctx.database is not None
    with ctx.database.unit_of_work() as session:
        existing = session.exec(select(func.count()).select_from(Dataset).where(col(Dataset.territory) == siren)).one()
        if existing:
            return 0
        known = session.get(KnownTerritory, siren)
        if known is None:
            return -1
        territory = SeedTerritory(siren, known.name, tuple(known.communes), publication.node)
        for slug, metadata in demo_datasets(territory):
            dataset = service.create_dataset(
                db_session=session, territory=siren, slug=slug, metadata=metadata, actor=SEED_ACTOR
            )
            session.flush()
            service.publish_dataset(
                db_session=session, dataset=dataset, actor=SEED_ACTOR, expected_revision=None, publication=publication
            )
        return len(demo_datasets(territory))


async def seed_demo(ctx: ServiceContext, publication: Publication, *, timeout: float = 60.0) -> None:
    """Publish the demo datasets of every hosted territory without datasets, once the directory names it."""
    pending = list(ctx.settings.territories)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for siren in list(pending):
            seeded = await asyncio.to_thread(_seed_territory, ctx, publication, siren)
            if seeded >= 0:
                pending.remove(siren)
                if seeded:
                    log.info("seeded %d demo datasets for territory %s", seeded, siren)
        if pending:
            await asyncio.sleep(0.5)  # the registry has not announced these territories yet
    if pending:
        log.warning("demo seed skipped for %s: the registry never announced them", ", ".join(pending))
