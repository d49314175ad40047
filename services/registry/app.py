"""The federation registry application."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from functools import partial

from fastapi import FastAPI

from kit.advertisements import advertisements_consumer
from kit.consumer import DurableConsumer
from kit.db import on_commit
from kit.periodic import run_every
from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings
from registry import agreements, apikeys, service
from registry.agreements import Action
from registry.agreements_api import router as agreements_router
from registry.api import router
from registry.apikeys_api import router as apikeys_router
from registry.config import RegistrySettings
from registry.grants import GrantMaterializer
from registry.migrate import upgrade
from registry.register import router as register_router
from registry.schemas import FederationFile

__all__ = ["create_app", "expire_due"]

log = logging.getLogger(__name__)


def _seed(ctx: ServiceContext, settings: RegistrySettings) -> int:
    if settings.federation_file is None or ctx.database is None:
        return 0
    federation = FederationFile.model_validate_json(settings.federation_file.read_text(encoding="utf-8"))
    with ctx.database.unit_of_work() as session:
        return service.seed_directory(db_session=session, federation=federation, source=ctx.source)


def expire_due(ctx: ServiceContext, materializer: GrantMaterializer) -> int:
    """Expire every active or suspended agreement past its valid_until; returns how many."""
    assert ctx.database is not None
    expired = 0
    with ctx.database.session() as session:
        due = [a.id for a in agreements.due_for_expiry(db_session=session, now=datetime.now(UTC))]
    for agreement_id in due:
        with ctx.database.unit_of_work() as session:
            agreement = agreements.get_agreement(db_session=session, agreement_id=agreement_id)
            if agreement.state not in agreements.ACTIONS[Action.EXPIRE].sources:
                continue
            agreements.transition(
                db_session=session,
                agreement=agreement,
                action=Action.EXPIRE,
                principal=None,
                reason="valid_until",
                terms=None,
                expected_version=None,
                source=ctx.source,
            )
            on_commit(session, partial(materializer.notify, agreement_id))
            expired += 1
    if expired:
        log.info("%d agreement(s) expired", expired)
    return expired


def _datasets_consumer(ctx: ServiceContext) -> DurableConsumer:
    """What the registry knows of published datasets (to check terms against), from the catalog's advertisements."""
    assert ctx.database is not None
    return advertisements_consumer(
        database=ctx.database,
        messaging=ctx.messaging,
        durable="registry-datasets",
        max_deliver=ctx.settings.consumer_max_deliver,
        ack_wait=ctx.settings.consumer_ack_wait,
    )


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the registry app (settings from the environment by default)."""
    registry_settings = settings if isinstance(settings, RegistrySettings) else RegistrySettings()
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(ctx: ServiceContext) -> None:
        changed = await asyncio.to_thread(_seed, ctx, registry_settings)
        if changed:
            log.info("directory seeded from %s: %d entries changed", registry_settings.federation_file, changed)
        assert ctx.database is not None
        ctx.key_verifier = apikeys.LocalKeyVerifier(ctx.database)
        materializer = GrantMaterializer(
            ctx.database, ctx.messaging, interval=registry_settings.grants_reconcile_interval
        )
        await materializer.start()
        app.state.grants = materializer
        database = ctx.database
        tasks.append(
            asyncio.create_task(
                run_every(
                    registry_settings.expiry_check_interval,
                    partial(expire_due, ctx, materializer),
                    what="agreement expiry",
                ),
                name="agreement-expiry",
            )
        )
        tasks.append(
            asyncio.create_task(
                # First sweep after one interval: start-up stays quick.
                run_every(
                    60.0,
                    partial(apikeys.sweep_expired_keys, database, source=ctx.source),
                    what="API key expiry sweep",
                    first_after=60.0,
                ),
                name="apikey-expiry",
            )
        )

    async def on_shutdown(ctx: ServiceContext) -> None:
        for task in tasks:
            task.cancel()
        await app.state.grants.stop()

    app = create_service_app(
        service="registry",
        settings=registry_settings,
        title="Maillage registry",
        description=(
            "Federation directory, sharing agreements (negotiation, DPO review, lifecycle), grants materialised in "
            "NATS KV, federated API keys and the public register."
        ),
        routers=[router, agreements_router, register_router, apikeys_router],
        migrate=upgrade,
        consumers=lambda ctx: [_datasets_consumer(ctx)],
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    return app
